"""The run history: every init and training run under an output root, read back from disk.

Runs made by the real engine on the demo model (an initialization, an exported run folder
trained to its end, one stopped halfway) are listed newest first with their figures; an
init run's layers come back exactly as the engine emitted them; half-written or broken
folders are skipped with a reason, never a crash.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import make_config

from quailora_core.config import RunConfig
from quailora_core.events import CancelToken, LayerResult, TrainStep
from quailora_core.files import output_root
from quailora_core.history import INIT, TRAINING, load_init_run, run_label, scan_runs, training_curve

REPEATED = "The quick brown fox jumps over the lazy dog, and the dog sleeps in the sun. " * 40


def _age(folder: Path, created: str, key: str, name: str) -> None:
    """Give a run a known creation time (the listing's order is by it, not by the clock)."""
    path = folder / name
    data = json.loads(path.read_text())
    data[key] = created
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def root(demo_model, tmp_path_factory) -> tuple[Path, list]:
    """An output root with a fresh init run, a run folder trained to its end (3 steps) and a
    run folder stopped at step 2 of 4."""
    from quailora_core.init.pipeline import run_init
    from quailora_core.train.export import export_run
    from quailora_core.train.trainer import TrainingCancelled, run_train

    root = tmp_path_factory.mktemp("history") / "outputs"
    events: list = []
    run_init(make_config(demo_model, root / "adapter", lora__rank=4), events.append)
    text = root.parent / "repeated.txt"
    text.write_text(REPEATED, encoding="utf-8")

    def run_folder(name: str, max_steps: int) -> RunConfig:
        cfg = make_config(demo_model, root / "adapter", lora__rank=4)
        t = cfg.train
        t.data, t.seq_len, t.batch_size, t.max_steps = str(text), 32, 2, max_steps
        t.eval_interval, t.save_interval, t.validation_fraction = 100, 100, 0.25
        export_run(cfg, root / name)
        return RunConfig.load(root / name / "run.toml")

    run_train(run_folder("trained", 3))
    cancel = CancelToken()

    def stop_at_2(event):
        if isinstance(event, TrainStep) and event.step == 2:
            cancel.cancel()

    with pytest.raises(TrainingCancelled):
        run_train(run_folder("stopped", 4), stop_at_2, cancel)
    _age(root / "adapter", "2026-01-01T10:00:00+00:00", "created", "quailora.json")
    _age(root / "trained" / "output", "2026-01-02T10:00:00+00:00", "started", "training_run.json")
    _age(root / "stopped" / "output", "2026-01-03T10:00:00+00:00", "started", "training_run.json")
    return root, [e for e in events if isinstance(e, LayerResult)]


def test_lists_init_and_training_runs_newest_first_with_their_figures(root):
    folder, _ = root
    history = scan_runs(folder)
    assert history.skipped == []
    stopped, trained, init = history.entries  # the run folders' adapter/ copies are no runs of their own
    assert (init.kind, init.path, init.label) == (INIT, str((folder / "adapter").resolve()), "QuAILoRA / r4 / 4-bit NF4")
    assert init.created == "2026-01-01T10:00:00+00:00" and init.summary["layers"] > 0
    assert init.evaluable_adapter == init.path and not init.resumable

    assert trained.kind == TRAINING and trained.path == str((folder / "trained" / "output").resolve())
    assert trained.run_dir == str((folder / "trained").resolve()) and trained.label == init.label
    assert (trained.steps_done, trained.total_steps, trained.finished) == (3, 3, True)
    assert trained.final_loss is not None and trained.final_loss > 0
    assert Path(trained.adapter) == folder / "trained" / "adapter"  # the init adapter it trained
    assert trained.evaluable_adapter == str(Path(trained.path) / "adapter")
    assert trained.checkpoint_step == 3 and not trained.resumable  # at its step budget: nothing to resume

    assert (stopped.steps_done, stopped.total_steps, stopped.finished) == (2, 4, False)
    assert stopped.checkpoint.endswith("checkpoint-2") and stopped.resumable
    assert stopped.evaluable_adapter == ""  # no trained adapter yet

    done, halfway = training_curve(trained.path), training_curve(stopped.path)
    assert [e.step for e in done if isinstance(e, TrainStep)] == [1, 2, 3]  # every step logged (log_interval 1)
    assert all(e.total_steps == 3 and e.loss > 0 for e in done if isinstance(e, TrainStep))
    assert [e.step for e in halfway if isinstance(e, TrainStep)] == [1, 2]  # from its checkpoint


def test_layers_round_trip_through_the_record(root, demo_model):
    folder, emitted = root
    stored = load_init_run(folder / "adapter")
    assert stored.layers == emitted  # the very LayerResult events, shapes as tuples
    assert stored.config.lora.rank == 4 and stored.config.model.path == str(demo_model)
    assert stored.summary["layers"] == len(emitted) and stored.serving


def test_broken_and_half_written_folders_are_skipped_with_a_reason(root, tmp_path):
    folder, _ = root
    copy = tmp_path / "outputs"
    shutil.copytree(folder / "adapter", copy / "good")
    shutil.copytree(folder / "adapter", copy / "broken")
    (copy / "broken" / "quailora.json").write_text("{ half")
    shutil.copytree(folder / "adapter", copy / "newer")
    _age(copy / "newer", 99, "format", "quailora.json")
    (copy / "no-peft").mkdir()
    (copy / "no-peft" / "quailora.json").write_text("{}")
    (copy / "train-bad").mkdir()
    (copy / "train-bad" / "training_run.json").write_text("[1, 2]")
    (copy / ".good.partial-x").mkdir()  # atomic_dir's folder of a run being written
    shutil.copytree(folder / "adapter", copy / ".good.partial-x" / "inner")
    (copy / "a" / "b" / "c").mkdir(parents=True)
    shutil.copytree(folder / "adapter", copy / "a" / "b" / "c" / "too-deep")
    (copy / "file.txt").write_text("not a folder")

    history = scan_runs(copy)
    assert [Path(e.path).name for e in history.entries] == ["good"]
    reasons = {Path(s.path).name: s.reason for s in history.skipped}
    assert set(reasons) == {"broken", "newer", "no-peft", "train-bad"}
    assert "cannot be read" in reasons["broken"] and "newer" in reasons["newer"]
    assert "adapter_config.json" in reasons["no-peft"] and "JSON object" in reasons["train-bad"]
    assert scan_runs(tmp_path / "nothing-here").entries == []


def test_runs_outside_the_root_are_listed_once_when_named(root, tmp_path):
    folder, _ = root
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder / "adapter", elsewhere)
    also = [elsewhere, elsewhere, folder / "adapter", folder / "trained", folder / "stopped" / "adapter"]
    history = scan_runs(folder, also=also)
    paths = [Path(e.path) for e in history.entries]
    assert sorted(paths) == sorted([elsewhere.resolve(), (folder / "adapter").resolve(),
                                    (folder / "trained" / "output").resolve(), (folder / "stopped" / "output").resolve()])


def test_the_output_root_is_the_apps(monkeypatch, tmp_path):
    monkeypatch.setenv("QUAILORA_GUI_OUTPUT_ROOT", str(tmp_path / "runs"))
    assert output_root() == tmp_path / "runs"
    monkeypatch.delenv("QUAILORA_GUI_OUTPUT_ROOT")
    assert output_root() == Path(os.path.expanduser("~")) / "QuAILoRA"
    assert run_label("loftq", 16, 8) == "LoftQ / r16 / 8-bit" and run_label("quailora", 8, 4, "fp4").endswith("4-bit FP4")
