"""Terminal progress: tqdm bars over layers (init) and steps (train), log lines above them."""

from __future__ import annotations

import sys
from typing import Any

CLEAR_LINE = "\r\033[K"


def status(text: str) -> None:
    """A transient line on a terminal (the next line overwrites it); nothing when stderr is a
    file or a pipe, so a refusal there is exactly one line."""
    if sys.stderr.isatty():
        print(text, end="\r", file=sys.stderr, flush=True)


def clear_status() -> str:
    """What starts a line printed after a `status` line (clears it on a terminal)."""
    return CLEAR_LINE if sys.stderr.isatty() else ""


class TerminalProgress:
    """tqdm progress bar with ETA over layers, log lines printed above it."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event: Any) -> None:
        from tqdm.auto import tqdm

        from quailora_core.events import LayerResult, Log, Stage

        if isinstance(event, Stage):
            if event.name == "calibrate":
                self.bar = tqdm(total=event.total, unit="layer", desc="initializing", file=sys.stderr)
            elif event.name == "export" and self.bar is not None:
                self.bar.close()
                self.bar = None
                print("writing adapter ...", file=sys.stderr)
            elif event.name == "load":
                status("checking inputs and loading ...")
            elif event.name == "verify":
                print("self-check: loading the adapter as training will and recomputing ...", file=sys.stderr)
        elif isinstance(event, LayerResult) and self.bar is not None:
            self.bar.set_postfix_str(f"{event.name.split('.', 2)[-1]} {event.cal_err_before:.2e}->{event.cal_err_after:.2e}")
            self.bar.update(1)
        elif isinstance(event, Log):
            write = self.bar.write if self.bar is not None else (lambda s: print(clear_status() + s, file=sys.stderr))
            write(f"[{event.level}] {event.message}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TrainProgress:
    """tqdm progress bar over training steps; validation results and logs printed above it."""

    def __init__(self) -> None:
        self.bar = None
        self._postfix = ""

    def _write(self, text: str) -> None:
        (self.bar.write if self.bar is not None else (lambda s: print(clear_status() + s, file=sys.stderr)))(text)

    def __call__(self, event: Any) -> None:
        from tqdm.auto import tqdm

        from quailora_core.events import EvalResult, Log, RankProgress, Stage, TrainStep

        if isinstance(event, Stage) and event.name == "load":
            status("checking inputs and loading ...")
        elif isinstance(event, Stage) and event.name == "export" and self.bar is not None:
            self.close()
            print("writing the trained adapter ...", file=sys.stderr)
        elif isinstance(event, TrainStep):
            if self.bar is None:
                self.bar = tqdm(total=event.total_steps, initial=event.step - 1, unit="step", desc="training",
                                file=sys.stderr)  # fmt: skip
            self._postfix = f"loss {event.loss:.4f} lr {event.lr:.2e} {event.tokens_per_second:,.0f} tok/s"
            self.bar.set_postfix_str(self._postfix)
            self.bar.update(event.step - self.bar.n)
        elif isinstance(event, RankProgress) and self.bar is not None and event.ranks:
            slowest = max(event.ranks, key=lambda r: r.seconds_per_step)
            self.bar.set_postfix_str(f"{self._postfix} · {len(event.ranks)} processes, slowest rank "
                                     f"{slowest.rank} {slowest.seconds_per_step:.2f} s/step")  # fmt: skip
        elif isinstance(event, EvalResult):
            self._write(f"step {event.step}: validation loss {event.loss:.4f}, perplexity {event.perplexity:.3f}")
        elif isinstance(event, Log):
            self._write(f"[{event.level}] {event.message}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
