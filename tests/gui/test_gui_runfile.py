"""Run files (File > Save run / Open run, `quailora-gui run.toml`), the command line, and
settings remembered between sessions (in a private QSettings file)."""

from __future__ import annotations

from pathlib import Path

from gui_helpers import settle
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog

from quailora_core.config import RunConfig


def set_every_field(form, model, calibration, output):
    """Give every field of the form a value different from its default."""
    form.modelPathEdit.setText(str(model))
    form.dtypeCombo.setCurrentIndex(form.dtypeCombo.findData("bfloat16"))
    form.trustRemoteCodeCheck.setChecked(True)
    form.calibrationPathEdit.setText(str(calibration))
    form.textColumnCombo.setEditText("body")
    form.datasetConfigEdit.setText("wikitext-2-raw-v1")
    form.splitEdit.setText("validation")
    form.samplesSpin.setValue(7)
    form.seqLenSpin.setValue(96)
    form.heldoutSpin.setValue(3)
    form.seedSpin.setValue(5)
    form.quantTypeCombo.setCurrentIndex(form.quantTypeCombo.findData("fp4"))
    form.doubleQuantCheck.setChecked(False)
    form.computeDtypeCombo.setCurrentIndex(form.computeDtypeCombo.findData("float16"))
    form.bitsCombo.setCurrentIndex(form.bitsCombo.findData(8))
    form.rankSpin.setValue(12)
    form.alphaSpin.setValue(24.5)
    form.rsloraCheck.setChecked(True)
    for i in range(form.targetsList.count()):
        item = form.targetsList.item(i)
        item.setCheckState(
            Qt.CheckState.Checked if item.text() in ("q_proj", "v_proj") else Qt.CheckState.Unchecked
        )
    form.methodCombo.setCurrentIndex(form.methodCombo.findData("exact"))
    form.inputsCombo.setCurrentIndex(form.inputsCombo.findData("asymmetric"))
    form.dampingSpin.setValue(0.05)
    form.alsItersSpin.setValue(7)
    form.deviceCombo.setCurrentIndex(form.deviceCombo.findData("cpu"))
    form.batchSizeSpin.setValue(3)
    form.outputPathEdit.setText(str(output))
    form.overwriteCheck.setChecked(True)


def test_save_and_open_run_round_trips_every_field(
    qtbot, make_window, tiny_model_dir, text_file, tmp_path, monkeypatch
):
    # a run file with training settings the form does not show: they must survive
    start = RunConfig(output=str(tmp_path / "o"))
    start.model.path = str(tiny_model_dir)
    start.train.max_steps, start.train.data, start.train.learning_rate = 77, "train.jsonl", 1e-4
    first_file = tmp_path / "first.toml"
    start.save(first_file)
    window = make_window()
    assert window.open_run(str(first_file))
    settle(qtbot, window)  # the model's linear modules fill the target checkboxes
    set_every_field(window.form, tiny_model_dir, text_file, tmp_path / "adapter")

    saved = tmp_path / "run.toml"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(saved), "Run files (*.toml)"))
    window.saveRunAction.trigger()
    loaded = RunConfig.load(saved)
    expected = RunConfig(output=str(tmp_path / "adapter"), overwrite=True)
    expected.model.path, expected.model.dtype, expected.model.trust_remote_code = (
        str(tiny_model_dir),
        "bfloat16",
        True,
    )
    cal = expected.calibration
    cal.source, cal.text_column, cal.dataset_config, cal.split = (
        str(text_file),
        "body",
        "wikitext-2-raw-v1",
        "validation",
    )
    cal.samples, cal.seq_len, cal.heldout_samples, cal.seed = 7, 96, 3, 5
    q = expected.quantization
    q.bits, q.quant_type, q.double_quant, q.compute_dtype = 8, "fp4", False, "float16"
    lo = expected.lora
    lo.rank, lo.alpha, lo.rslora, lo.targets = 12, 24.5, True, ["q_proj", "v_proj"]
    ini = expected.init
    ini.method, ini.inputs, ini.damping, ini.als_iters, ini.device, ini.batch_size = (
        "exact",
        "asymmetric",
        0.05,
        7,
        "cpu",
        3,
    )
    expected.train = start.resolved(tmp_path).train  # the run file's relative data path, resolved
    assert loaded.to_dict() == expected.to_dict()

    # File > Open run in a fresh window shows the very same run
    other = make_window(restore_settings=False)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(saved), "Run files (*.toml)"))
    other.openRunAction.trigger()
    assert other.form.to_config().to_dict() == expected.to_dict()
    assert "run.toml" in other.windowTitle()


def test_command_line_opens_a_run_file_or_preselects_the_demo(qtbot, tmp_path):
    from quailora_gui.app import build_window, parse_args

    config = RunConfig(output=str(tmp_path / "x"))
    config.lora.rank = 48
    config.init.method = "loftq"
    config.save(tmp_path / "run.toml")
    assert parse_args(["run.toml"]).run_file == "run.toml" and parse_args(["--demo"]).demo

    windows = [build_window([str(tmp_path / "run.toml")]), build_window(["--demo"])]
    try:
        from_file, demo = windows
        assert from_file.form.rankSpin.value() == 48
        assert from_file.form.methodCombo.currentData() == "loftq"
        assert demo.form.modelPathEdit.text() == "demo" and demo.form.calibrationPathEdit.text() == "demo"
        assert not demo.form.demoModelBadge.isHidden()
        assert demo.form.samplesSpin.value() == 32  # demo settings run in seconds
        assert Path(demo.form.outputPathEdit.text()).parent == tmp_path / "outputs"
    finally:
        for w in windows:
            w.shutdown()
            w.close()


def test_settings_remember_last_choices_window_geometry_and_recent_models(
    qtbot, make_window, tiny_model_dir, text_file, private_settings
):
    first = make_window()
    first.show()
    # View > Log scale shows the charts' scale from the start (the toolbar box is checked by default)
    assert first.logScaleCheck.isChecked() and first.logScaleAction.isChecked()
    first.logScaleAction.trigger()
    assert not first.logScaleCheck.isChecked() and not first.layerErrorChart.log_scale
    first.form.choose_model(str(tiny_model_dir))
    first.form.choose_calibration(str(text_file))
    first.form.rankSpin.setValue(24)
    first.logScaleCheck.setChecked(True)
    first.resize(1234, 777)
    first.shutdown()
    first.close()
    assert private_settings.is_file()  # the test's own file, never the user's settings

    second = make_window()
    assert second.form.modelPathEdit.text() == str(tiny_model_dir)
    assert second.form.calibrationPathEdit.text() == str(text_file)
    assert second.form.rankSpin.value() == 24
    assert second.logScaleCheck.isChecked() and second.logScaleAction.isChecked()
    assert (second.width(), second.height()) == (1234, 777)
    assert second.recent_models.items == [str(tiny_model_dir)]
    second.form._fill_model_menu()
    assert str(tiny_model_dir) in [a.text() for a in second.form.modelMenu.actions()]


def test_open_run_takes_relative_paths_from_the_run_file_not_the_working_folder(
    qtbot, make_window, tiny_model_dir, text_file, tmp_path, monkeypatch
):
    """An exported run folder opened from another working folder (File > Open run): its
    relative paths point into the folder, and Run writes the adapter there."""
    import shutil

    from quailora_core.init.pipeline import run_init
    from quailora_core.train.export import export_run

    first = RunConfig(output=str(tmp_path / "first-adapter"))
    first.model.path, first.model.dtype = str(tiny_model_dir), "float32"
    first.calibration.source = str(text_file)
    first.calibration.samples, first.calibration.seq_len, first.calibration.heldout_samples = 4, 32, 1
    first.lora.rank, first.init.device = 4, "cpu"
    first.train.data = str(text_file)
    run_init(first)
    run_dir = export_run(first, tmp_path / "exported")
    # a model and calibration text given relative to the run file, as a user may edit it
    shutil.copytree(tiny_model_dir, run_dir / "model")
    shutil.copy2(text_file, run_dir / "data" / "calibration.txt")
    written = RunConfig.load(run_dir / "run.toml", resolve=False)
    written.model.path, written.calibration.source = "model", "data/calibration.txt"
    written.save(run_dir / "run.toml")

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    window = make_window(restore_settings=False)
    monkeypatch.setattr(
        QFileDialog, "getOpenFileName", lambda *a, **k: (str(run_dir / "run.toml"), "Run files (*.toml)")
    )
    window.openRunAction.trigger()
    form = window.form
    assert form.modelPathEdit.text() == str(run_dir / "model")
    assert form.calibrationPathEdit.text() == str(run_dir / "data" / "calibration.txt")
    assert form.outputPathEdit.text() == str(run_dir / "adapter")
    assert form.to_config().train.data == str(run_dir / "data" / text_file.name)

    form.overwriteCheck.setChecked(True)  # the run folder's adapter is there already: replace it
    assert settle(qtbot, window).ok
    with qtbot.waitSignal(window.runEnded, timeout=180_000) as blocker:
        qtbot.mouseClick(window.runButton, Qt.MouseButton.LeftButton)
    assert blocker.args[0] == "finished", window.logView.toPlainText()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert list(cwd.iterdir()) == []  # nothing written in the working folder


def test_a_restart_after_a_kill_proposes_a_free_output_folder(make_window, tmp_path):
    # the last settings name a folder a run filled, and the window that filled it never closed
    # (killed): the next start must not propose that folder, which Run would refuse
    from quailora_gui.views.window_settings import WindowSettings

    filled = tmp_path / "outputs" / "adapter"
    filled.mkdir(parents=True)
    (filled / "adapter_model.safetensors").write_bytes(b"x")
    last = RunConfig(output=str(filled))
    WindowSettings().save_last_config(last)
    window = make_window()
    proposed = window.form.outputPathEdit.text()
    assert proposed == str(tmp_path / "outputs" / "adapter-2") and not Path(proposed).exists()


def test_save_run_after_a_finished_run_stores_that_run_not_the_next_folder(
    qtbot, make_window, tiny_model_dir, text_file, tmp_path
):
    from gui_helpers import finish_a_run

    window = make_window()
    finish_a_run(qtbot, window, tiny_model_dir, text_file, tmp_path / "adapter", "exportAdapterAction")
    assert window.form.outputPathEdit.text() == str(tmp_path / "adapter-2")  # the next run's folder
    saved = window.save_run(str(tmp_path / "finished.toml"))
    assert RunConfig.load(saved).output == str(tmp_path / "adapter")  # the adapter a training would use
    window.form.rankSpin.setValue(8)  # a new run's settings: now the form is what is saved
    again = RunConfig.load(window.save_run(str(tmp_path / "next.toml")))
    assert again.output == str(tmp_path / "adapter-2") and again.lora.rank == 8
