"""The form's checks, seen from the window: warm the engine up, then check the settings
after each edit (debounced) in the checks lane, and show the latest report only.

Each check carries a generation from the state machine; a newer check supersedes the ones
still queued (they are skipped), and a report of an older generation is dropped.
"""

from __future__ import annotations

import gc
from typing import Any

from PySide6.QtCore import QObject, QTimer

from ..controllers.checks import CheckReport, ConfigChecker
from ..controllers.tasks import check_task, warm_up_task

DEBOUNCE_MS = 250


class FormChecks(QObject):
    def __init__(self, window: Any, checker: ConfigChecker | None = None) -> None:
        super().__init__(window)
        self.w = window
        self.checker = checker or ConfigChecker()
        self.engine_ready = False
        self.gpus = 0  # CUDA devices torch sees (known once the engine is warm): what Launch can start
        self.debounce = QTimer(self)
        self.debounce.setSingleShot(True)
        self.debounce.setInterval(DEBOUNCE_MS)
        self.debounce.timeout.connect(self.request)

    def warm_up(self) -> None:
        """Import the engine off the GUI thread; then offer the devices it found."""
        self.w.tasks.start(warm_up_task(on_done=self._on_warmed, on_error=self._on_warm_up_failed))

    def _on_warmed(self, devices: list[tuple[str, str]]) -> None:
        self.w.form.set_devices(devices)
        self.gpus = sum(1 for spec, _label in devices if spec.startswith("cuda:"))
        self.engine_ready = True
        # torch, transformers and peft leave ~0.5 M long-lived objects: a full garbage
        # collection scanning them holds the GIL for 0.1-0.5 s, from whichever thread
        # triggers it, and would freeze the window mid-run. Exempt them from the scans.
        gc.freeze()
        self.w.statusBar().showMessage("Engine ready.", 5000)
        self.w.engineReady.emit()

    def _on_warm_up_failed(self, exc: BaseException, _details: str) -> None:
        from ..controllers.checks import error_text

        self.w.statusBar().showMessage(f"The engine could not be loaded: {error_text(exc)}")
        self.w.log(f"The engine could not be loaded: {error_text(exc)}", "error")

    def form_changed(self) -> None:
        self.w.state.settings_changed()
        self.debounce.start()

    def request(self) -> None:
        """Check the form's settings now (off the GUI thread); `checksFinished` reports it."""
        if self.w.tasks.closed:
            return
        self.debounce.stop()
        generation = self.w.state.new_check()
        self.w.tasks.start(check_task(self.checker, self.w.form.to_config(), generation, on_done=self._on_checked))

    def _on_checked(self, report: CheckReport) -> None:
        if not self.w.state.take_report(report):
            return  # the form changed since
        self.w.form.apply_report(report)
        self.w.checksFinished.emit(report)

    def stop(self) -> None:
        self.debounce.stop()
