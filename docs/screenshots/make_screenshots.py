"""Drive QuAILoRA Studio with the demo model and save the README screenshots.

    xvfb-run -s "-screen 0 1600x1000x24" python docs/screenshots/make_screenshots.py

(or with QT_QPA_PLATFORM=offscreen; `make_training_screenshot.py` beside it makes
training-panel-running.png). It runs LoftQ, then QuAILoRA on the demo model (shipped in
resources/, no download), grabs the window half-way through the second run
(main-window-running.png), then once it has finished with the LoftQ run overlaid
(main-window-finished.png), the heat map and compare tabs, and the History tab with the
QuAILoRA run evaluated (main-window-history.png). Settings and
outputs go to a temporary folder, never to the user's.
"""

from __future__ import annotations

import sys

from _demo_window import grab, open_demo_window, set_method, small_init_form, wait_for


def main() -> int:
    app, window = open_demo_window()
    small_init_form(window)

    # run 1: LoftQ, the uncalibrated baseline
    set_method(window, "loftq")
    window.runButton.click()
    wait_for(window, window.runEnded)

    # run 2: QuAILoRA, grabbed half-way
    set_method(window, "quailora")
    state = {"grabbed": False}

    def on_layer(event) -> None:
        if not state["grabbed"] and window.tracker.total and window.tracker.done >= window.tracker.total // 2:
            state["grabbed"] = True
            window.results_area.refresh(everything=True)
            window.init_run.update_progress()
            grab(app, window, "main-window-running.png")

    window.layerReceived.connect(on_layer)
    window.runButton.click()
    outcome = wait_for(window, window.runEnded)[0]
    if outcome != "finished":
        raise SystemExit(f"the run ended with {outcome}: {window.logView.toPlainText()}")

    window.compareCombo.setCurrentIndex(1)  # overlay the LoftQ run
    if window.report is None:
        wait_for(window, window.checksFinished)  # the form moved on to a fresh output folder
    grab(app, window, "main-window-finished.png")
    window.tabs.setCurrentWidget(window.heatMap)
    grab(app, window, "main-window-heatmap.png")
    window.tabs.setCurrentWidget(window.comparePanel)
    grab(app, window, "main-window-compare.png")

    # the History tab: both runs read back from disk, the QuAILoRA run evaluated
    window.tabs.setCurrentWidget(window.history.panel)
    window.history.refresh()
    wait_for(window, window.history.refreshed)
    if not window.history.select(window.session.latest.output_dir):
        raise SystemExit("the finished run is not in the History")
    window.history.panel.historyEvaluateButton.click()
    if wait_for(window, window.history.evalEnded)[0] != "finished":
        raise SystemExit(f"the evaluation failed: {window.logView.toPlainText()}")
    grab(app, window, "main-window-history.png")
    window.shutdown()
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
