"""Drive QuAILoRA Studio's Training tab with the demo model and save its README screenshot.

    xvfb-run -s "-screen 0 1600x1000x24" python docs/screenshots/make_training_screenshot.py

(or with QT_QPA_PLATFORM=offscreen). It initializes the demo model's adapter (QuAILoRA,
rank 16), launches a short fine-tuning on the built-in demo text from the Training tab (the
child process trains on one CPU thread), grabs the window mid-run
(training-panel-running.png), then stops the training. Settings and outputs go to a
temporary folder, never to the user's.

With `--processes 2` the same run trains in two data-parallel processes through the run
folder's launch.sh (on the CPU here), and the grab shows the per-process table
(training-panel-processes.png).
"""

from __future__ import annotations

import sys

from _demo_window import grab, open_demo_window, set_method, small_init_form, wait_for

MAX_STEPS = 120
GRAB_AT = 75  # the step after which the window is grabbed


def main(argv: list[str]) -> int:
    processes = int(argv[argv.index("--processes") + 1]) if "--processes" in argv else 1
    name = "training-panel-processes.png" if processes > 1 else "training-panel-running.png"
    grab_at = GRAB_AT if processes == 1 else GRAB_AT // 2  # two processes on two cores: slower steps
    app, window = open_demo_window()
    small_init_form(window)
    set_method(window, "quailora")
    window.runButton.click()
    if wait_for(window, window.runEnded)[0] != "finished":
        raise SystemExit(window.logView.toPlainText())

    p = window.trainingPanel
    window.tabs.setCurrentWidget(p)
    p.trainDataEdit.setText("demo")
    p.maxStepsSpin.setValue(MAX_STEPS)
    p.learningRateSpin.setValue(5e-4)
    p.trainBatchSizeSpin.setValue(4)
    p.trainSeqLenSpin.setValue(128)
    p.evalIntervalSpin.setValue(15)
    p.saveIntervalSpin.setValue(60)
    p.trainProcessesSpin.setValue(processes)
    window.training_env["OMP_NUM_THREADS"] = "1"
    window.launchTrainingButton.click()
    while True:
        event = wait_for(window, window.trainingStep)[0]
        if event.step >= grab_at:
            break
    if processes > 1:
        wait_for(window, window.rankProgress)  # the table of the step just logged
    window.training_control.update_progress()
    grab(app, window, name)
    window.stop_training()
    wait_for(window, window.trainingStopped, 120_000)
    window.shutdown()
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
