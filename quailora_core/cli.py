"""`quailora` command line: `init`, `train`, `eval`, `export-run`.

Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure.
On a terminal `init` shows a progress bar with ETA and ends with a per-layer table, and
`train` a progress bar over steps; `--json` prints every engine event as one JSON line on
stdout instead (then Finished, or Failed on an error).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any

from quailora_core.config import RunConfig, field_help, section_help
from quailora_core.errors import Cancelled, InputError, QuailoraError

# flag -> (section, field, type, help); a None section is a top-level RunConfig field. The
# help and the usual value come from the config's own field help (config.field_help), the
# same words the app's tooltips show.
_Flags = dict[str, tuple[str | None, str, Any, str]]


def _flags(sections: tuple[str | None, ...], only: tuple[str, ...] = ()) -> _Flags:
    table: _Flags = {}
    defaults = RunConfig()
    for section in sections:
        holder = getattr(defaults, section) if section else defaults
        for h in section_help(section):
            name = h.path.rpartition(".")[2]
            if h.flag and (not only or h.path in only):
                value = getattr(holder, name)
                table[h.flag] = (section, name, str if value is None else type(value), h.flag_help())
    return table


_INIT_FLAGS = _flags(("model", "calibration", "quantization", "lora", "init", None))
_TRAIN_FLAGS = {**_flags(("model",), only=("model.path",)), **_flags(("train",))}


def _add_init(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="compute a QuAILoRA-initialized LoRA adapter",
        description="Initialize LoRA adapters so that the quantized model plus LoRA reproduces the "
        "full-precision model on calibration text (QuAILoRA).",
    )
    p.add_argument("--config", help="run file (TOML) to start from; flags given here override it")
    for flag, (_, _, typ, text) in _INIT_FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=text)
    p.add_argument("--targets", default=None, help=field_help("lora.targets").flag_help() + ", comma-separated")
    p.add_argument("--double-quant", dest="double_quant", action="store_true", default=None, help=field_help("quantization.double_quant").flag_help())
    p.add_argument("--no-double-quant", dest="double_quant", action="store_false", help="double quantization off")
    p.add_argument("--rslora", action="store_true", default=None, help=field_help("lora.rslora").flag_help())
    p.add_argument(
        "--offload-activations", action="store_true", default=None,
        help=field_help("init.offload_activations").flag_help(),
    )
    p.add_argument("--overwrite", action="store_true", default=None, help=field_help("overwrite").flag_help())
    p.add_argument("--save-config", help="also write the resolved run file (TOML) here")
    p.add_argument("--json", action="store_true", help="stream events as JSON lines on stdout")
    p.set_defaults(func=cmd_init)


def build_config(args: argparse.Namespace) -> RunConfig:
    """RunConfig from --config (if any) with every explicitly given flag applied on top."""
    config = RunConfig.load(args.config) if args.config else RunConfig()
    for flag, (section, name, _, _) in _INIT_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is None:
            continue
        setattr(config if section is None else getattr(config, section), name, value)
    if args.targets is not None:
        config.lora.targets = [t.strip() for t in args.targets.replace(" ", ",").split(",") if t.strip()]
    if args.double_quant is not None:
        config.quantization.double_quant = args.double_quant
    if args.rslora is not None:
        config.lora.rslora = args.rslora
    if args.offload_activations is not None:
        config.init.offload_activations = args.offload_activations
    if args.overwrite is not None:
        config.overwrite = args.overwrite
    return config


class _TerminalProgress:
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
                print("checking inputs and loading ...", file=sys.stderr)
            elif event.name == "verify":
                print("self-check: loading the adapter as training will and recomputing ...", file=sys.stderr)
        elif isinstance(event, LayerResult) and self.bar is not None:
            self.bar.set_postfix_str(f"{event.name.split('.', 2)[-1]} {event.cal_err_before:.2e}->{event.cal_err_after:.2e}")
            self.bar.update(1)
        elif isinstance(event, Log):
            write = self.bar.write if self.bar is not None else (lambda s: print(s, file=sys.stderr))
            write(f"[{event.level}] {event.message}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_init(args: argparse.Namespace) -> int:
    from quailora_core.events import CancelToken, Failed, event_to_json
    from quailora_core.init.metrics import format_table
    from quailora_core.init.pipeline import run_init

    config = build_config(args)
    if args.json:

        def on_event(event: Any) -> None:
            print(event_to_json(event), flush=True)

        progress = None
    else:
        progress = _TerminalProgress()
        on_event = progress
    cancel = CancelToken()
    try:
        if args.save_config:
            config.validate()
            config.save(args.save_config)
        result = run_init(config, on_event, cancel)
    except KeyboardInterrupt:
        cancel.cancel()
        print("cancelled; nothing was written.", file=sys.stderr)
        return 1
    except (InputError, Cancelled, QuailoraError) as exc:
        if args.json:
            print(event_to_json(Failed(exc.message, exc.hint)), flush=True)
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    except Exception as exc:  # a failure during the run: one line, details on request
        if args.json:
            print(event_to_json(Failed(str(exc), "", traceback.format_exc())), flush=True)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("QUAILORA_DEBUG"):
            traceback.print_exc()
        return 1
    finally:
        if progress is not None:
            progress.close()
    if not args.json:
        print(format_table(result.layers))
        print(f"\nadapter written to {result.output_dir}")
    return 0


# ---------------------------------------------------------------------------- train / eval / export-run
# flag -> (section, field, type, help); these override the run file's [model] / [train] values.
def _add_train_flags(p: argparse.ArgumentParser) -> None:
    for flag, (_, _, typ, text) in _TRAIN_FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=text)


def build_train_config(args: argparse.Namespace) -> RunConfig:
    """The run file (paths relative to its folder) or, without one, the adapter's own run
    record; then every flag given (paths relative to the working directory)."""
    from pathlib import Path

    from quailora_core.train.settings import config_from_adapter

    if args.config:
        config = RunConfig.load(args.config)
    elif args.adapter:
        config = config_from_adapter(args.adapter)
    else:
        raise InputError("No run file and no adapter given.", "Use `quailora train run.toml` or --adapter DIR --data FILE.")
    for flag, (section, name, _, _) in _TRAIN_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            setattr(getattr(config, section), name, value)
    if getattr(args, "train_output", None):
        config.train.output = args.train_output
    if getattr(args, "resume", False):
        config.train.resume = True
    return config.resolved(Path.cwd())


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune an initialized adapter (QLoRA, transformers Trainer)",
        description="Fine-tune a QuAILoRA-initialized adapter on the quantized base it was computed for. "
        "Relative paths in the run file are relative to its folder.",
    )
    p.add_argument("config", nargs="?", help="run file (TOML), e.g. the one `quailora export-run` writes")
    _add_train_flags(p)
    p.add_argument("--output", dest="train_output", default=None,
                   help="training output folder: checkpoints, adapter/, metrics.json (default [train] output)")
    p.add_argument("--resume", action="store_true", help=field_help("train.resume").flag_help())
    p.add_argument("--json", action="store_true", help="stream events as JSON lines on stdout")
    p.set_defaults(func=cmd_train)


class _TrainProgress:
    """tqdm progress bar over training steps; validation results and logs printed above it."""

    def __init__(self) -> None:
        self.bar = None

    def _write(self, text: str) -> None:
        (self.bar.write if self.bar is not None else (lambda s: print(s, file=sys.stderr)))(text)

    def __call__(self, event: Any) -> None:
        from tqdm.auto import tqdm

        from quailora_core.events import EvalResult, Log, Stage, TrainStep

        if isinstance(event, Stage) and event.name == "load":
            print("checking inputs and loading ...", file=sys.stderr)
        elif isinstance(event, Stage) and event.name == "export" and self.bar is not None:
            self.close()
            print("writing the trained adapter ...", file=sys.stderr)
        elif isinstance(event, TrainStep):
            if self.bar is None:
                self.bar = tqdm(total=event.total_steps, initial=event.step - 1, unit="step", desc="training",
                                file=sys.stderr)  # fmt: skip
            self.bar.set_postfix_str(f"loss {event.loss:.4f} lr {event.lr:.2e} {event.tokens_per_second:,.0f} tok/s")
            self.bar.update(event.step - self.bar.n)
        elif isinstance(event, EvalResult):
            self._write(f"step {event.step}: validation loss {event.loss:.4f}, perplexity {event.perplexity:.3f}")
        elif isinstance(event, Log):
            self._write(f"[{event.level}] {event.message}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run_reporting(args: argparse.Namespace, work, progress=None) -> tuple[int, Any]:
    """Run `work(on_event, cancel)` with the CLI's error handling and event output.

    --json: events as JSON lines on stdout (anything else printed meanwhile goes to stderr),
    then Failed on an error. SIGINT / SIGTERM cancel the token (the run stops cleanly at
    its next check); a second one interrupts at once. Returns (exit code, result).
    """
    import contextlib
    import signal
    import threading

    from quailora_core.events import CancelToken, Failed, event_to_json

    out = sys.stdout
    if args.json:
        # a reader of JSON lines (the app's log, a remote runner) cannot draw progress bars:
        # transformers' "Loading weights" bars would reach it as lines of carriage returns
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        def on_event(event: Any) -> None:
            print(event_to_json(event), file=out, flush=True)
    else:
        on_event = progress if progress is not None else (lambda event: None)
    cancel = CancelToken()
    previous: dict[int, Any] = {}

    def on_signal(signum, frame):
        if cancel.cancelled:
            raise KeyboardInterrupt
        print("stopping at the next step (again to interrupt at once) ...", file=sys.stderr)
        cancel.cancel()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            return 0, work(on_event, cancel)
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return 1, None
    except QuailoraError as exc:
        if args.json:
            print(event_to_json(Failed(exc.message, exc.hint)), file=out, flush=True)
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return (2 if isinstance(exc, InputError) else 1), None
    except Exception as exc:  # a failure during the run: one line, details on request
        if args.json:
            print(event_to_json(Failed(str(exc), "", traceback.format_exc())), file=out, flush=True)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("QUAILORA_DEBUG"):
            traceback.print_exc()
        return 1, None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if hasattr(progress, "close"):
            progress.close()


def cmd_train(args: argparse.Namespace) -> int:
    def work(on_event, cancel):
        from quailora_core.train.trainer import run_train

        return run_train(build_train_config(args), on_event, cancel)

    code, result = _run_reporting(args, work, None if args.json else _TrainProgress())
    if code == 0 and not args.json:
        m = result.metrics

        def num(x: Any) -> str:
            return f"{x:.4f}" if isinstance(x, float) else "n/a"

        print(f"trained {result.global_step} steps: training loss {num(m.get('train_loss'))}, validation loss "
              f"{num(m.get('first_eval_loss'))} -> {num(m.get('eval_loss'))} (perplexity "
              f"{num(m.get('first_perplexity'))} -> {num(m.get('perplexity'))})")  # fmt: skip
        print(f"trained adapter written to {result.adapter_dir}; metrics in {result.output_dir}/metrics.json")
    return code


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="perplexity of full-precision, quantized and quantized + adapter models",
        description="Measure how much of the perplexity lost to quantization an adapter recovers: "
        "perplexity of a text under the full-precision base, the quantized base (as the adapter "
        "records it) and the quantized base plus the adapter.",
    )
    p.add_argument("--adapter", required=True, help="adapter folder written by `quailora init` (or train)")
    p.add_argument("--data", required=True, help="text to measure: a file, folder, hub dataset id or 'demo' "
                   "(the built-in fine-tuning text); use text the adapter was not calibrated on")  # fmt: skip
    p.add_argument("--model", default=None, help="base model (default: the one recorded in the adapter)")
    p.add_argument("--samples", type=int, default=32, help="sequences (default 32)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--text-column", default="text", help="column holding the text in table data (default text)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per forward pass (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed for picking the sequences (default 0)")
    p.add_argument("--json", action="store_true", help="events and the result as JSON lines on stdout")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from quailora_core.events import Finished

    def work(on_event, cancel):
        from quailora_core.evaluate import evaluate_adapter

        report = evaluate_adapter(
            args.adapter, args.data, args.model, args.samples, args.seq_len, args.text_column,
            args.batch_size, args.device, args.seed, on_event, cancel,
        )  # fmt: skip
        on_event(Finished(report.adapter, report.to_dict()))
        return report

    def progress(event: Any) -> None:
        from quailora_core.events import Log

        if isinstance(event, Log):
            print(f"[{event.level}] {event.message}", file=sys.stderr)

    code, report = _run_reporting(args, work, None if args.json else progress)
    if code == 0 and not args.json:
        print(report.table())
    return code


def _add_export_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-run",
        help="write a self-contained fine-tuning run folder (run.toml, adapter, data, launch.sh)",
        description="Write a run folder that trains the initialized adapter with `accelerate launch`, here "
        "or on another machine: run.toml, a copy of the adapter and of local data files, launch.sh, README.md.",
    )
    p.add_argument("--config", help="run file (TOML); flags given here override it")
    _add_train_flags(p)
    p.add_argument("--output", dest="run_dir", required=True, help="the run folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty run folder")
    p.add_argument("--json", action="store_true", help="print the result as a JSON line")
    p.set_defaults(func=cmd_export_run)


def cmd_export_run(args: argparse.Namespace) -> int:
    from quailora_core.events import Finished

    def work(on_event, cancel):
        from quailora_core.train.export import export_run

        run_dir = export_run(build_train_config(args), args.run_dir, args.overwrite)
        on_event(Finished(str(run_dir), {"run_file": str(run_dir / "run.toml"), "launcher": str(run_dir / "launch.sh")}))
        return run_dir

    code, run_dir = _run_reporting(args, work)
    if code == 0 and not args.json:
        print(f"run folder written to {run_dir}\nstart it with: {run_dir}/launch.sh   (or NUM_PROCESSES=N for N GPUs)")
    return code


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quailora", description="QuAILoRA Studio command line")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_init(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_export_run(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
