"""Background jobs as plain data: what runs off the GUI thread, and what its outcome means.

Every job of the app (the initialization run, the evaluation, the engine warm-up, the form
checks, the adapter and run-folder exports) is a `Task`: a name, the lane it runs in, a job function
and its callbacks. `views.runner.TaskRunner` runs tasks, one at a time per lane, each lane in
its own thread (the model is Orange3's ConcurrentMixin: start, cancel, partial results,
done, exception, one mechanism for every job), and calls the callbacks on the GUI thread.

The job gets a `TaskContext`: `emit(x)` reports a partial result (an engine event; it
reaches `on_event`), `token` is the core's thread-safe CancelToken the engine polls. Then
exactly one of `on_done(result)`, `on_error(exception, traceback_text)` or `on_cancelled()`
(the job raised the core's `Cancelled`). A task started with `supersede=True` drops the
earlier ones of its name in its lane: they are skipped if they have not started, and their
outcome is never delivered (the form checks: only the latest settings matter).

No Qt here: `execute` (the worker thread's half) and the task factories are tested alone.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ENGINE, CHECKS, FILES = "engine", "checks", "files"  # the lanes: one thread each
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"


def _ignore(*_: Any) -> None:
    pass


def _new_token() -> Any:
    from quailora_core.events import CancelToken

    return CancelToken()


@dataclass
class TaskContext:
    """What a running job sees: where partial results go, and whether to stop."""

    emit: Callable[[Any], None] = _ignore
    token: Any = field(default_factory=_new_token)

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled


@dataclass(frozen=True)
class Task:
    name: str
    job: Callable[[TaskContext], Any]
    lane: str = FILES
    on_event: Callable[[Any], None] = _ignore
    on_done: Callable[[Any], None] = _ignore
    on_error: Callable[[BaseException, str], None] = _ignore
    on_cancelled: Callable[[], None] = _ignore
    supersede: bool = False


def execute(task: Task, context: TaskContext) -> tuple[str, Any]:
    """Run the job (in the worker thread): (DONE, result), (CANCELLED, None) or
    (FAILED, (exception, traceback text)). Any exception is an outcome, never a crash."""
    from quailora_core.errors import Cancelled

    try:
        result = task.job(context)
    except Cancelled:
        return CANCELLED, None
    except Exception as exc:
        return FAILED, (exc, traceback.format_exc())
    return DONE, result


def deliver(task: Task, outcome: tuple[str, Any]) -> None:
    """Call the task's callback for its outcome (on the GUI thread)."""
    kind, value = outcome
    if kind == DONE:
        task.on_done(value)
    elif kind == CANCELLED:
        task.on_cancelled()
    else:
        task.on_error(*value)


# ---------------------------------------------------------------------------- the app's tasks
def init_task(config: Any, engine: Callable[..., Any] | None = None, **callbacks: Any) -> Task:
    """The initialization run: `engine(config, emit, token)` (the core's run_init unless one
    is given, imported in the worker thread); failures reach `on_failed` as a Failed event."""
    on_failed = callbacks.pop("on_failed", _ignore)

    def job(context: TaskContext) -> Any:
        run = engine
        if run is None:
            from quailora_core.init import run_init

            run = run_init
        return run(config, context.emit, context.token)

    return Task("init", job, ENGINE, on_error=lambda exc, details: on_failed(run_failure(exc, details)), **callbacks)


def run_failure(exc: BaseException, details: str = "") -> Any:
    """The Failed event (message, hint, details) the window shows for a run's exception."""
    from quailora_core.errors import QuailoraError
    from quailora_core.events import Failed

    from .checks import error_text

    if isinstance(exc, QuailoraError):
        return Failed(exc.message, exc.hint, details)
    if isinstance(exc, MemoryError):
        return Failed(
            "The run ran out of memory.",
            "Use fewer or shorter calibration samples, a smaller batch size, or another device.",
            details,
        )
    return Failed(
        f"The run failed: {error_text(exc)}", "See the details below and the log; the window keeps working.", details
    )


def warm_up_task(**callbacks: Any) -> Task:
    """Import the engine and its libraries once; the result is the devices to offer."""

    def job(_context: TaskContext) -> list[tuple[str, str]]:
        from quailora_core.device import available_devices

        from .checks import warm_up

        warm_up()
        return available_devices()

    return Task("warm-up", job, CHECKS, **callbacks)


def check_task(checker: Any, config: Any, generation: int, **callbacks: Any) -> Task:
    """One check of the form's settings; a newer check supersedes it."""
    from .checks import check_config

    return Task("check", lambda _context: check_config(checker, config, generation), CHECKS, supersede=True,
                **callbacks)  # fmt: skip


def merge_task(adapter: str, output: str, dtype: str = "bf16", **callbacks: Any) -> Task:
    """`quailora merge` of an adapter into `output` in the files lane: the engine's events
    (its Progress per block) reach `on_event`; the result is the core's MergeResult."""

    def job(context: TaskContext) -> Any:
        from quailora_core.serving import merge

        return merge.merge_adapter(adapter, output, dtype, None, context.emit, context.token)

    return Task("export merged model", job, FILES, **callbacks)


def gguf_task(adapter: str, output: str, gguf_type: str, gguf_output: str, **callbacks: Any) -> Task:
    """`quailora merge --gguf` in the files lane: the merged folder `output`, then the GGUF file
    `gguf_output`; the engine's events reach `on_event`, the result is the core's MergedGguf."""

    def job(context: TaskContext) -> Any:
        from quailora_core.serving.merge_gguf import merge_to_gguf

        return merge_to_gguf(adapter, output, gguf_type, gguf_output, None, None, context.emit, context.token)

    return Task("export gguf", job, FILES, **callbacks)


def eval_task(adapter: str, data: str, samples: int, seq_len: int, device: str = "auto", **callbacks: Any) -> Task:
    """`quailora eval` of an adapter in the engine lane (it loads three models, like a run
    and never beside one): the engine's events reach `on_event`, the result is the core's
    EvalReport; Cancel stops it between batches (`on_cancelled`)."""

    def job(context: TaskContext) -> Any:
        from quailora_core.evaluate import evaluate_adapter

        return evaluate_adapter(adapter, data, None, samples, seq_len, "text", 4, device, 0, context.emit,
                                context.token)  # fmt: skip

    return Task("evaluate", job, ENGINE, **callbacks)


def file_task(name: str, job: Callable[[], Any], **callbacks: Any) -> Task:
    """A Qt-free file job (copy an adapter, write a run folder) in the files lane."""
    return Task(name, lambda _context: job(), FILES, **callbacks)
