"""Several training processes from the Training tab: Processes = 2 on this CPU machine starts
the run folder's launch.sh (accelerate launch, two data-parallel ranks on gloo), the
per-process table shows both ranks' own figures at each logged step, Stop ends both ranks
with one checkpoint and leaves none running, Resume continues in two processes, and a
sharded run kind that cannot shard here is refused before anything is written.

MULTI-PROCESS (marker `multiprocess`): two training processes of the tiny model, one CPU
thread each; every wait is on a window signal with a long deadline.
"""

from __future__ import annotations

import json
from html import escape

import psutil
import pytest
from safetensors.torch import load_file
from test_gui_training import REPEATED, click, fill_training, initialized_window, launch

from quailora_core.events import RankProgress, TrainStep
from quailora_core.train.processes import weights_digest

pytestmark = pytest.mark.multiprocess

DEADLINE = 600_000  # ms: two processes load torch and the model on a loaded two-core machine


def _ranks(launcher_pid: int) -> list[psutil.Process]:
    """The training processes under the launcher (they carry RANK in their environment)."""
    found = []
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if "quailora_core.train" in " ".join(child.cmdline()) and "RANK" in child.environ():
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_two_processes_from_the_training_tab(qtbot, window, tiny_model_dir, text_file, tmp_path):
    initialized_window(qtbot, window, tiny_model_dir, text_file, tmp_path)
    data = tmp_path / "repeated.txt"
    data.write_text(REPEATED, encoding="utf-8")
    panel = window.trainingPanel

    # FSDP in two processes cannot shard without a GPU: said at once, nothing exported
    fill_training(window, data, tmp_path / "fsdp", max_steps=200)
    panel.runKindCombo.setCurrentIndex(panel.runKindCombo.findData("fsdp"))
    panel.trainProcessesSpin.setValue(2)
    with qtbot.waitSignal(window.launchRefused, timeout=5_000) as refused:
        click(qtbot, window.launchTrainingButton)
    assert "this machine has none" in refused.args[0] and escape(refused.args[0]) in panel.trainStatusLabel.text()
    assert not (tmp_path / "fsdp").exists() and window.launchTrainingButton.isEnabled()

    # data parallel in two processes on the CPU, through the folder's launch.sh
    panel.runKindCombo.setCurrentIndex(panel.runKindCombo.findData("single"))
    fill_training(window, data, tmp_path / "training", max_steps=200)
    progress: list[RankProgress] = []
    window.rankProgress.connect(progress.append)
    run_dir = launch(qtbot, window)
    process = window.train_process.process
    assert process.program() == "bash" and process.arguments() == [str(run_dir / "launch.sh"), "--json"]
    assert process.processEnvironment().value("NUM_PROCESSES") == "2"
    assert "Training in 2 processes, data parallel on the CPU" in window.logView.toPlainText()
    with qtbot.waitSignal(window.rankProgress, timeout=DEADLINE, check_params_cb=lambda e: e.step >= 2):
        pass
    table = panel.rankTable
    rows = table.rows()
    assert not table.isHidden() and [row[0] for row in rows] == ["0", "1"]  # both processes, in rank order
    assert all(row[2] == "cpu" and row[3] == str(progress[-1].step) for row in rows), rows
    assert [r.rank for r in progress[-1].ranks] == [0, 1]
    ranks = _ranks(window.train_process.pid)
    assert len(ranks) == 2, ranks

    # Stop: both ranks stop at the same step, one checkpoint, no process left behind
    with qtbot.waitSignal(window.trainingStopped, timeout=DEADLINE) as stopped:
        click(qtbot, window.stopTrainingButton)
    last = stopped.args[0].step
    assert last >= 2 and (run_dir / "output" / f"checkpoint-{last}" / "trainer_state.json").is_file()
    assert [p.name for p in (run_dir / "output").iterdir() if p.name.startswith("checkpoint-")] == [f"checkpoint-{last}"]
    psutil.wait_procs(ranks, timeout=30)
    assert not [p for p in ranks if p.is_running()], "a rank outlived the stop"

    # Resume: two processes again, the step count goes on; every rank ends with the saved adapter
    panel.maxStepsSpin.setValue(last + 2)
    steps: list[TrainStep] = []
    window.trainingStep.connect(steps.append)
    with qtbot.waitSignal(window.trainingFinished, timeout=DEADLINE) as finished:
        click(qtbot, window.resumeTrainingButton)
        assert window.train_process.process.arguments()[1:] == ["--json", "--resume", "--max-steps", str(last + 2)]
    assert finished.args[0].kind == "finished" and [e.step for e in steps] == [last + 1, last + 2]
    out = run_dir / "output"
    metrics = json.loads((out / "metrics.json").read_text())
    saved = weights_digest(load_file(str(out / "adapter" / "adapter_model.safetensors")))
    assert metrics["processes"] == 2 and metrics["adapter_digests"] == [saved, saved]
    assert [row[3] for row in panel.rankTable.rows()] == [str(last + 2)] * 2
