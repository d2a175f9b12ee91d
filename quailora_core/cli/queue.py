"""`quailora queue ...`: add runs (or a sweep) to the job queue, list, reorder, cancel, pause,
and run it headless.

`queue add` takes exactly `quailora init`'s flags (`flags.add_init_flags`), so a queued run
is the run `init` would start; bad input is one line and exit 2, with nothing added. Every
command reads and changes the same queue file as the app (`--queue` names another one);
`queue run` goes through the CLI's one error and signal path (`reporting.run_reporting`):
Ctrl-C cancels the running job cleanly and stops.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from quailora_core.cli.flags import INIT_FLAGS, add_init_flags, build_config
from quailora_core.cli.reporting import run_reporting
from quailora_core.errors import InputError


def add_queue(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "queue",
        help="a queue of init and training runs, run one after another (shared with the app)",
        description="Add runs or sweeps to the job queue, reorder, cancel or pause them, and run the queue "
        "headless. The app's Queue tab shows and runs the same queue file (default <output root>/queue.json, "
        "the output root being $QUAILORA_GUI_OUTPUT_ROOT or ~/QuAILoRA).",
    )
    commands = p.add_subparsers(dest="queue_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--queue", dest="queue_path", default=None, metavar="PATH",
                        help="the queue file (default <output root>/queue.json)")  # fmt: skip

    a = commands.add_parser("add", parents=[common], help="add an init run (init's flags), a sweep, or a training run",
                            description="Queue the run `quailora init` would start with the same flags; with "
                            "--sweep-* one run per combination, each in its own output folder.")  # fmt: skip
    add_init_flags(a)
    a.add_argument("--train", metavar="RUN.toml", default=None,
                   help="queue a training run of this run file instead (as `quailora train RUN.toml`)")  # fmt: skip
    a.add_argument("--sweep-ranks", default=None, metavar="8,16", help="one run per rank")
    a.add_argument("--sweep-methods", default=None, metavar="quailora,loftq", help="one run per method")
    a.add_argument("--sweep-bits", default=None, metavar="4,8", help="one run per bit width")
    a.add_argument("--label", default="", help="the job's name in the list (default: from its output folder)")
    a.add_argument("--json", action="store_true", help="print the added jobs as JSON lines")
    a.set_defaults(func=cmd_add)

    ls = commands.add_parser("list", parents=[common], help="the jobs, in run order, with their states")
    ls.add_argument("--json", action="store_true", help="the whole queue as one JSON object")
    ls.set_defaults(func=cmd_list)

    r = commands.add_parser("run", parents=[common], help="run the queued jobs one after another (Ctrl-C stops)",
                            description="Take the queued jobs in order until none is left or the queue is paused. "
                            "Ctrl-C (or SIGTERM) cancels the running job cleanly and stops. Exit code 1 when a job failed.")  # fmt: skip
    r.add_argument("--once", action="store_true", help="run only the next job")
    r.add_argument("--json", action="store_true", help="stream events (JobUpdate and each job's own) as JSON lines")
    r.set_defaults(func=cmd_run)

    for name, text, func in (("cancel", "cancel a queued job, or stop the running one", cmd_cancel),
                             ("retry", "queue a failed or cancelled job again", cmd_retry),
                             ("remove", "take a queued or finished job out of the queue", cmd_remove)):  # fmt: skip
        c = commands.add_parser(name, parents=[common], help=text)
        c.add_argument("job_id", metavar="ID", help="the job's id (or the start of it), see `quailora queue list`")
        c.set_defaults(func=func)
    m = commands.add_parser("move", parents=[common], help="move a job to another place in the queue")
    m.add_argument("job_id", metavar="ID", help="the job's id (or the start of it)")
    m.add_argument("position", type=int, metavar="POSITION", help="its new place, 1 = first")
    m.set_defaults(func=cmd_move)
    for name, text, func in (("pause", "finish the running job, then take no other", cmd_pause),
                             ("resume", "take jobs again after a pause", cmd_resume),
                             ("clear", "remove the finished jobs (done, failed, cancelled)", cmd_clear)):  # fmt: skip
        c = commands.add_parser(name, parents=[common], help=text)
        c.set_defaults(func=func)


def _queue(args: argparse.Namespace) -> Any:
    from quailora_core.jobs.queue_file import JobQueue

    return JobQueue(args.queue_path)


def _refusing(work: Callable[[], int]) -> int:
    """Bad input as one line and exit 2 (the queue unchanged)."""
    try:
        return work()
    except InputError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2


def _numbers(text: str | None, flag: str) -> list[int]:
    items = _items(text)
    try:
        return [int(x) for x in items]
    except ValueError:
        raise InputError(f"{flag} takes whole numbers, got {text!r}.", f"Use e.g. {flag} 8,16.") from None


def _items(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").replace(" ", ",").split(",") if x.strip()]


def cmd_add(args: argparse.Namespace) -> int:
    def work() -> int:
        from quailora_core.config import RunConfig
        from quailora_core.jobs.build import init_job, train_job
        from quailora_core.jobs.sweep import sweep_jobs

        queue = _queue(args)
        sweep = (args.sweep_ranks, args.sweep_methods, args.sweep_bits)
        if args.train:
            given = [f for f in INIT_FLAGS if getattr(args, f.lstrip("-").replace("-", "_")) is not None]
            if given or args.config or any(sweep):
                raise InputError(f"--train queues the run file as it is; {(given or ['--config'])[0]} does not apply.",
                                 "Edit the run file, or queue an init run without --train.")  # fmt: skip
            jobs = [train_job(RunConfig.load(args.train), args.label)]
        elif any(sweep):
            ranks, bits = _numbers(args.sweep_ranks, "--sweep-ranks"), _numbers(args.sweep_bits, "--sweep-bits")
            jobs = sweep_jobs(build_config(args), ranks, _items(args.sweep_methods), bits,
                              queue.read().claimed_outputs())  # fmt: skip
        else:
            jobs = [init_job(build_config(args), args.label)]
        queue.add(jobs)
        for job in jobs:
            print(json.dumps(job.to_dict()) if args.json else f"queued {job.id}  {job.kind}  {job.label}  -> {job.output}")
        return 0

    return _refusing(work)


def cmd_list(args: argparse.Namespace) -> int:
    def work() -> int:
        queue = _queue(args)
        state = queue.read()
        if args.json:
            print(json.dumps(state.to_dict()))
            return 0
        flags = [" (paused)" if state.paused else "", f" (running in process {state.runner})" if state.runner else ""]
        print(f"queue {queue.path}{''.join(flags)}: {len(state.jobs)} job(s)")
        for n, job in enumerate(state.jobs, 1):
            print(f"{n:>3}  {job.id}  {job.state:<10} {job.kind:<5}  {job.label}  -> {job.output}"
                  + (f"\n     {job.message}" if job.message else ""))  # fmt: skip
        return 0

    return _refusing(work)


def cmd_run(args: argparse.Namespace) -> int:
    def work(on_event, cancel):
        from dataclasses import asdict

        from quailora_core.events import Finished
        from quailora_core.jobs.runner import run_queue

        run = run_queue(args.queue_path, on_event, cancel, once=args.once)
        on_event(Finished(str(_queue(args).path), asdict(run)))  # for a reader of --json: what this run did
        return run

    code, run = run_reporting(args, work, None if args.json else _RunProgress())
    if code == 0 and not args.json:
        print(f"{len(run.done)} done, {len(run.failed)} failed, {len(run.cancelled)} cancelled; stopped: {run.stopped}")
    return 1 if code == 0 and run.failed else code


class _RunProgress:
    """A job's line when it starts and ends; between them its run's own progress bar."""

    def __init__(self) -> None:
        self.inner: Any = None

    def __call__(self, event: Any) -> None:
        from quailora_core.cli.progress import TerminalProgress, TrainProgress, clear_status
        from quailora_core.events import JobUpdate, TrainStep

        if isinstance(event, JobUpdate):
            self.close()
            text = f"{event.job_id} {event.label}: {event.state}" + (f": {event.message}" if event.message else "")
            print(clear_status() + text, file=sys.stderr)
            self.inner = TerminalProgress() if event.state == "running" else None
        elif self.inner is not None:
            if isinstance(event, TrainStep) and isinstance(self.inner, TerminalProgress):
                self.inner = TrainProgress()
            self.inner(event)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None


def cmd_cancel(args: argparse.Namespace) -> int:
    def work() -> int:
        job = _queue(args).cancel(args.job_id)
        print(f"{job.id} {job.label}: {'stopping' if job.state == 'cancelling' else job.state}")
        return 0

    return _refusing(work)


def cmd_retry(args: argparse.Namespace) -> int:
    return _refusing(lambda: _say(f"{(job := _queue(args).retry(args.job_id)).id} {job.label}: queued again"))


def cmd_remove(args: argparse.Namespace) -> int:
    return _refusing(lambda: _say(f"{(job := _queue(args).remove(args.job_id)).id} {job.label}: removed"))


def cmd_move(args: argparse.Namespace) -> int:
    if args.position < 1:
        print("error: POSITION counts from 1 (the first job).", file=sys.stderr)
        return 2
    return _refusing(lambda: _say(f"{(job := _queue(args).move(args.job_id, args.position - 1)).id} {job.label}: "
                                  f"moved to {args.position}"))  # fmt: skip


def cmd_pause(args: argparse.Namespace) -> int:
    return _refusing(lambda: _queue(args).set_paused(True) or _say("queue paused: the running job finishes, no other starts until `quailora queue resume`"))


def cmd_resume(args: argparse.Namespace) -> int:
    return _refusing(lambda: _queue(args).set_paused(False) or _say("queue resumed (a runner takes the next job; "
                                                                     "start one with `quailora queue run`)"))


def cmd_clear(args: argparse.Namespace) -> int:
    return _refusing(lambda: _say(f"removed {_queue(args).clear()} finished job(s)"))


def _say(text: str) -> int:
    print(text)
    return 0
