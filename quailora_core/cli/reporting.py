"""The one error and signal path of every command: events to the terminal or as JSON lines,
an InputError as one line and exit 2, a failure as one line and exit 1, SIGINT/SIGTERM
cancelling the run at its next check (a second one interrupts at once).

Under `accelerate launch --num_processes N` every rank runs the command; only the main process
(rank 0) writes JSON lines on stdout (events and Failed), so that the stream has one copy of
each (but a rank's own failure, the cause of what the others then report). A signal to the launcher (Ctrl-C in its terminal, the app's SIGTERM to its process group)
reaches each rank once: torchrun's agent starts every rank in a session of its own and forwards
the signal to them; the ranks then stop together (`train.processes`)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any

from quailora_core.cli.progress import clear_status
from quailora_core.errors import Cancelled, InputError, QuailoraError


def _no_progress_bars() -> None:
    """Turn off the progress bars of transformers and huggingface_hub without importing them
    (that takes seconds, and a bad argument is refused before they are needed): the variable
    is read when they are imported; if they already are, ask them."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    else:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def run_reporting(args: argparse.Namespace, work, progress=None) -> tuple[int, Any]:
    """Run `work(on_event, cancel)` with the CLI's error handling and event output.

    --json: events as JSON lines on stdout (anything else printed meanwhile goes to stderr),
    then Failed on an error. SIGINT / SIGTERM cancel the token (the run stops cleanly at
    its next check); a second one interrupts at once. Returns (exit code, result).
    """
    import contextlib
    import signal
    import threading

    from quailora_core.events import CancelToken, Failed, event_to_json
    from quailora_core.train.processes import is_main_process

    out = sys.stdout
    speaks = is_main_process()
    if args.json and not speaks:
        _no_progress_bars()
        on_event = lambda event: None  # noqa: E731 - the main process speaks for the run
    elif args.json:
        # a reader of JSON lines (the app's log, a remote runner) cannot draw progress bars:
        # transformers' "Loading weights" bars would reach it as lines of carriage returns
        _no_progress_bars()

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
        if args.json and (speaks or not isinstance(exc, Cancelled)):  # all ranks stop together: rank 0 says it
            print(event_to_json(Failed(exc.message, exc.hint)), file=out, flush=True)
        print(f"{clear_status()}error: {exc.one_line()}", file=sys.stderr)
        return (2 if isinstance(exc, InputError) else 1), None
    except Exception as exc:  # a failure during the run: one line, details on request
        if args.json:  # from any rank: a crash of rank 1 is the cause of what rank 0 then reports
            print(event_to_json(Failed(str(exc), "", traceback.format_exc())), file=out, flush=True)
        print(f"{clear_status()}error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("QUAILORA_DEBUG"):
            traceback.print_exc()
        return 1, None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if hasattr(progress, "close"):
            progress.close()
