"""Worker objects that live in QThreads: the engine run and the cheap form checks.

Events cross to the GUI thread only through these objects' signals; the GUI thread's
receivers are bound methods of QObjects living there, so Qt queues the calls.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from ..controllers.checks import CheckReport, ConfigChecker, error_text, warm_up


class InitWorker(QObject):
    """Calls `quailora_core.init.pipeline.run_init` and reports through signals.

    `event` carries each engine event object as the engine emits it (from the worker
    thread); then exactly one of `succeeded(InitResult)`, `failed(Failed)` or `cancelled()`.
    """

    event = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object)
    cancelled = Signal()

    def __init__(self, config: Any, engine: Callable[..., Any] | None = None) -> None:
        super().__init__()
        from quailora_core.events import CancelToken

        self.config = config
        self.token = CancelToken()
        self._engine = engine

    def cancel(self) -> None:
        """Thread-safe: the engine stops at its next check (between layers)."""
        self.token.cancel()

    def _emit_event(self, event: Any) -> None:
        self.event.emit(event)

    @Slot()
    def run(self) -> None:
        from quailora_core.errors import Cancelled, QuailoraError
        from quailora_core.events import Failed

        try:
            engine = self._engine
            if engine is None:
                from quailora_core.init.pipeline import run_init

                engine = run_init
            result = engine(self.config, self._emit_event, self.token)
        except Cancelled:
            self.cancelled.emit()
        except QuailoraError as exc:
            self.failed.emit(Failed(exc.message, exc.hint, traceback.format_exc()))
        except MemoryError:
            self.failed.emit(
                Failed(
                    "The run ran out of memory.",
                    "Use fewer or shorter calibration samples, a smaller batch size, or another device.",
                    traceback.format_exc(),
                )
            )
        except Exception as exc:  # any engine failure becomes a dialog, never a crash
            self.failed.emit(
                Failed(
                    f"The run failed: {error_text(exc)}",
                    "See the details below and the log; the window keeps working.",
                    traceback.format_exc(),
                )
            )
        else:
            self.succeeded.emit(result)


class CheckWorker(QObject):
    """Runs `ConfigChecker.check` off the GUI thread; stale requests are skipped."""

    checked = Signal(object)  # CheckReport
    warmed = Signal(str)  # "" when the engine imported, else the error text
    devices = Signal(object)  # list of (spec, label)

    def __init__(self, checker: ConfigChecker | None = None) -> None:
        super().__init__()
        self.checker = checker or ConfigChecker()
        self._latest = 0
        self._lock = threading.Lock()

    def note_request(self, generation: int) -> None:
        """Called from the GUI thread when a request is queued, so older ones can be skipped."""
        with self._lock:
            self._latest = max(self._latest, generation)

    @Slot(object, int)
    def check(self, config: Any, generation: int) -> None:
        with self._lock:
            if generation < self._latest:
                return
        try:
            report = self.checker.check(config)
        except Exception as exc:  # a bug in a check must not leave the form waiting forever
            from ..controllers.checks import GENERAL

            report = CheckReport(errors={GENERAL: f"Could not check the settings: {error_text(exc)}"})
        report.generation = generation
        self.checked.emit(report)

    @Slot()
    def warm_up(self) -> None:
        try:
            warm_up()
            from quailora_core.device import available_devices

            self.devices.emit(available_devices())
        except Exception as exc:
            self.warmed.emit(error_text(exc))
            return
        self.warmed.emit("")


class CallWorker(QObject):
    """Runs one Qt-free core call in a QThread, so that slow file work (export_run copying a
    data folder) never freezes the window. Then exactly one of `succeeded(result)` or
    `failed(exception)`."""

    succeeded = Signal(object)
    failed = Signal(object)

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__()
        self._fn, self._args = fn, args

    @Slot()
    def run(self) -> None:
        try:
            result = self._fn(*self._args)
        except Exception as exc:  # reported to the window as a dialog, never a crash
            self.failed.emit(exc)
        else:
            self.succeeded.emit(result)
