"""The run form: named controls with tooltips, instant model/data summaries, and Run
disabled with the reason next to the field while the input cannot work."""

from __future__ import annotations

import re

import pytest
from gui_helpers import configure, settle
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel, QWidget

NAMED = [
    "modelPathEdit", "calibrationPathEdit", "rankSpin", "bitsCombo", "methodCombo", "runButton", "cancelButton",
    "exportAdapterButton", "launchTrainingButton", "exportRunButton", "layerErrorChart", "lossChart", "progressBar",
    "logView", "alphaSpin", "quantTypeCombo", "doubleQuantCheck", "inputsCombo", "dampingSpin", "deviceCombo",
    "samplesSpin", "seqLenSpin", "textColumnCombo", "targetsList", "heatMap", "resultsTable", "compareCombo",
    "outputPathEdit", "heldoutSpin", "seedSpin", "alsItersSpin", "batchSizeSpin", "rsloraCheck", "dtypeCombo",
    "computeDtypeCombo", "overwriteCheck", "trustRemoteCodeCheck", "allLinearCheck", "logScaleCheck",
    "modelBrowseButton", "calibrationBrowseButton", "outputBrowseButton", "exportChartsButton", "exportCsvButton",
]  # fmt: skip


def test_every_control_has_a_stable_name_and_a_one_sentence_tooltip(window):
    for name in NAMED:
        widget = window.findChild(QWidget, name)
        assert widget is not None, name
        tip = widget.toolTip()
        assert tip and tip.endswith(".") and tip.count(". ") == 0, (name, tip)
        if name in ("rankSpin", "bitsCombo", "methodCombo", "dampingSpin", "samplesSpin", "seqLenSpin"):
            assert "usual" in tip, (name, tip)
    assert not window.launchTrainingButton.isEnabled() and not window.exportRunButton.isEnabled()


def test_model_summary_fills_the_target_checkboxes(qtbot, window, tiny_model_dir, text_file, tmp_path):
    configure(window, tiny_model_dir, text_file, tmp_path / "out")
    report = settle(qtbot, window)
    assert report.ok, report.errors
    form = window.form
    summary = form.modelSummaryLabel.text()
    assert "LlamaForCausalLM" in summary and "115.0 k" in summary and "64 / 128" in summary
    names = [form.targetsList.item(i).text() for i in range(form.targetsList.count())]
    assert names == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert form.allLinearCheck.isChecked() and form.to_config().lora.targets == ["all-linear"]
    form.targetsList.item(1).setCheckState(Qt.CheckState.Unchecked)
    assert not form.allLinearCheck.isChecked()
    assert form.to_config().lora.targets == [
        "q_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    form.allLinearCheck.setChecked(False)  # unchecking "all" keeps the individual choice
    form.allLinearCheck.setChecked(True)
    assert form.to_config().lora.targets == ["all-linear"]
    assert "peak memory" in form.estimateLabel.text()
    assert not window.runButton.isEnabled()  # the edits are not checked yet
    assert settle(qtbot, window).ok and window.runButton.isEnabled()


@pytest.mark.parametrize("problem", ["missing model", "missing calibration file", "non-empty output folder"])
def test_bad_input_disables_run_with_the_reason_next_to_the_field(
    qtbot, window, tiny_model_dir, text_file, tmp_path, problem
):
    configure(window, tiny_model_dir, text_file, tmp_path / "out")
    assert settle(qtbot, window).ok
    assert window.runButton.isEnabled()
    form = window.form
    if problem == "missing model":
        form.modelPathEdit.setText(str(tmp_path / "no-such-model"))
        label, words = form.findChild(QWidget, "modelError"), "does not exist"
    elif problem == "missing calibration file":
        form.calibrationPathEdit.setText(str(tmp_path / "no-such-text.txt"))
        label, words = form.findChild(QWidget, "calibrationError"), "no-such-text.txt"
    else:
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "adapter_model.safetensors").write_bytes(b"x")
        form.outputPathEdit.setText(str(tmp_path / "full"))
        label, words = form.findChild(QWidget, "outputError"), "not empty"
    assert not window.runButton.isEnabled()  # disabled at once, before the check answers
    report = settle(qtbot, window)
    assert not report.ok
    assert not window.runButton.isEnabled()
    assert not label.isHidden() and words in label.text()
    assert "--" not in label.text()  # the app's words, not the command line's ("use --model demo")
    if problem == "missing model":
        assert "the demo model" in label.text()
    # the line beside Run names the problem, and a click on it shows the field in the form
    named = {"missing model": "the model", "missing calibration file": "the calibration data",
             "non-empty output folder": "the output folder"}[problem]  # fmt: skip
    assert f"Fix {named}" in window.runStatusLabel.text() and words in window.runStatusLabel.toolTip()
    window.resize(1280, 640)  # a form taller than its view
    window.show()
    qtbot.waitExposed(window)
    window.form.scroll.verticalScrollBar().setValue(0 if problem == "non-empty output folder" else 10_000)
    href = {"missing model": "model", "missing calibration file": "calibration", "non-empty output folder": "output"}
    window.runStatusLabel.linkActivated.emit(href[problem])
    viewport = window.form.scroll.viewport()
    top_left = label.mapTo(viewport, label.rect().topLeft())
    assert 0 <= top_left.y() and top_left.y() + label.height() <= viewport.height()
    if problem == "non-empty output folder":
        form.overwriteCheck.setChecked(True)  # the fix the message suggests
        assert settle(qtbot, window).ok and window.runButton.isEnabled() and label.isHidden()


def test_rank_larger_than_a_layer_is_refused_before_run(qtbot, window, tiny_model_dir, text_file, tmp_path):
    configure(window, tiny_model_dir, text_file, tmp_path / "out", rank=33)
    report = settle(qtbot, window)
    assert "smallest target dimension (32, in model.layers.0.self_attn.k_proj)" in report.errors["lora"]  # 2 kv x 16
    assert not window.runButton.isEnabled()
    assert "rank 32 or less" in window.form.findChild(QWidget, "loraError").text()


def test_csv_calibration_offers_its_columns_and_previews_the_chosen_one(
    qtbot, window, tiny_model_dir, tmp_path
):
    data = tmp_path / "notes.csv"
    data.write_text('id,body\n1,"The first note is about lists."\n2,"The second note is about dicts."\n')
    configure(window, tiny_model_dir, data, tmp_path / "out")
    report = settle(qtbot, window)
    form = window.form
    assert "no column 'text'" in report.errors["text_column"]
    assert [form.textColumnCombo.itemText(i) for i in range(form.textColumnCombo.count())] == ["id", "body"]
    assert form.textColumnCombo.isEnabled()
    form.textColumnCombo.setCurrentIndex(1)
    report = settle(qtbot, window)
    assert report.ok, report.errors
    assert "first note is about lists" in form.calibrationPreview.toPlainText()
    assert "columns: id, body" in form.calibrationStatsLabel.text()


def test_token_count_follows_samples_and_sequence_length(window):
    form = window.form
    form.samplesSpin.setValue(128)
    form.seqLenSpin.setValue(512)
    form.heldoutSpin.setValue(16)
    text = form.tokenCountLabel.text()
    assert "128 × 512 = <b>65,536</b>" in text and "16 × 512 = 8,192 held out" in text


def test_8_bit_disables_the_4_bit_options_and_plain_methods_the_solver_options(window):
    form = window.form
    form.bitsCombo.setCurrentIndex(form.bitsCombo.findData(8))
    assert not form.quantTypeCombo.isEnabled() and not form.doubleQuantCheck.isEnabled()
    assert form.to_config().quantization.bits == 8
    form.methodCombo.setCurrentIndex(form.methodCombo.findData("loftq"))
    assert not form.dampingSpin.isEnabled() and not form.inputsCombo.isEnabled()
    form.methodCombo.setCurrentIndex(form.methodCombo.findData("quailora"))
    assert form.dampingSpin.isEnabled() and form.alsItersSpin.isEnabled()


def _darkest(widget) -> int:
    """The lightness (0-255) of the darkest pixel the widget paints: its text, for a check box or label."""
    image = widget.grab().toImage()
    return min(image.pixelColor(x, y).lightness() for y in range(image.height()) for x in range(image.width()))


def test_8_bit_greys_out_the_4_bit_options_as_the_user_sees_them(qtbot, window):
    # issue 14: under 8-bit the double-quantization box was disabled but the style sheet's
    # text colour painted it (and the "compute" label) exactly as an enabled one
    window.show()
    qtbot.waitExposed(window)
    bits = window.findChild(QComboBox, "bitsCombo")
    names = {QCheckBox: "doubleQuantCheck", QLabel: "computeDtypeLabel", QComboBox: "quantTypeCombo"}
    four_bit_only = [window.findChild(kind, name) for kind, name in names.items()]
    four_bit_only.append(window.findChild(QComboBox, "computeDtypeCombo"))
    bits.setCurrentIndex(bits.findData(4))
    assert all(w.isEnabled() for w in four_bit_only)
    enabled = [_darkest(w) for w in four_bit_only]
    bits.setCurrentIndex(bits.findData(8))
    assert not any(w.isEnabled() for w in four_bit_only)
    disabled = [_darkest(w) for w in four_bit_only]
    for widget, on, off in zip(four_bit_only, enabled, disabled, strict=True):
        assert off > on + 60, (widget.objectName(), on, off)  # visibly greyed, as the other disabled fields
    bits.setCurrentIndex(bits.findData(4))
    assert all(w.isEnabled() for w in four_bit_only) and [_darkest(w) for w in four_bit_only] == enabled


def test_demo_model_and_sample_text_are_in_the_pickers(qtbot, window, tmp_path):
    form = window.form
    form.modelPathEdit.setText("")
    form.calibrationPathEdit.setText("")
    form._fill_model_menu()
    demo = [a for a in form.modelMenu.actions() if a.objectName() == "demoModelAction"][0]
    assert demo.text() == "Demo model (built in)"
    demo.trigger()
    form._fill_calibration_menu()
    [a for a in form.calibrationMenu.actions() if a.objectName() == "demoCalibrationAction"][0].trigger()
    assert form.modelPathEdit.text() == "demo" and form.calibrationPathEdit.text() == "demo"
    assert not form.demoModelBadge.isHidden() and "no download" in form.demoModelBadge.text()
    form.outputPathEdit.setText(str(tmp_path / "out"))
    report = settle(qtbot, window)
    assert report.ok, report.errors
    assert report.summary.is_demo and "Blocks" in form.modelSummaryLabel.text()
    assert "Most mornings" in form.calibrationPreview.toPlainText() or form.calibrationPreview.toPlainText()


def test_the_demo_models_estimate_reads_in_mib_not_zero_gib(qtbot, window, tmp_path):
    # issue 14: the estimate of the demo model said "model 0.00 GiB"
    window.use_demo()
    window.form.outputPathEdit.setText(str(tmp_path / "out"))
    assert settle(qtbot, window).ok
    label = window.findChild(QLabel, "estimateLabel").text()
    assert "peak memory" in label and "MiB" in label, label
    assert not re.search(r"\b0(\.\d+)? GiB| 0 MB", label), label  # no "0.00 GiB", "0.01 GiB"


def test_the_settings_widgets_show_the_cores_help_and_start_at_its_defaults(make_window):
    """One table maps widgets to settings; their tooltips are the core's help of the setting
    and a fresh form shows the core's defaults (Training tab included)."""
    from quailora_core.config import RunConfig, field_help
    from quailora_gui.controllers.form_fields import FIELDS, TRAIN_FIELDS, get_value

    window = make_window(restore_settings=False)
    defaults = RunConfig()
    for f in FIELDS + TRAIN_FIELDS:
        widget = window.findChild(QWidget, f.name)
        assert widget is not None, f.name
        assert widget.toolTip() == field_help(f.path).tooltip(), f.name
        if f.numeric:
            assert widget.value() == pytest.approx(get_value(defaults, f.path)), f.name
    assert window.form.alsItersSpin.toolTip().endswith("(usual: 500).")  # not a stale copy
    on_tab = window.trainingPanel.settings()
    assert on_tab.pop("data") == "demo"  # the Training tab starts from the built-in fine-tuning text
    assert on_tab == {k: getattr(defaults.train, k) for k in on_tab}
    shown = window.form.to_config()
    shown.output = defaults.output  # the window proposes a free folder of its own
    assert (shown.model.path, defaults.model.path) == ("demo", "")  # and the demo: the core has no default model
    shown.model.path = defaults.model.path
    assert shown.to_dict() == defaults.to_dict()


@pytest.mark.parametrize(
    ("setting", "label"),
    [("lora.rank", "loraError"), ("model.path", "modelError"), ("calibration.samples", "sizesError"),
     ("init.device", "deviceError"), (None, "targetsError")],  # no setting named: the plan's own label
)  # fmt: skip
def test_an_error_shows_next_to_the_setting_it_names_whatever_its_words(
    qtbot, window, tiny_model_dir, text_file, tmp_path, setting, label
):
    from quailora_core.errors import InputError
    from quailora_gui.controllers.checks import ConfigChecker

    def plan(config):  # stands in for the engine's plan_for
        raise InputError("whatever text", "with no keyword", field=setting)

    window.checks.checker = ConfigChecker(plan_targets=plan)
    configure(window, tiny_model_dir, text_file, tmp_path / "out")
    report = settle(qtbot, window)
    shown = [w.objectName() for w in window.form.error_labels.values() if not w.isHidden()]
    assert shown == [label], report.errors
    assert window.form.findChild(QWidget, label).text() == "whatever text with no keyword"
    assert not window.runButton.isEnabled()


def test_a_run_file_with_a_dotted_target_keeps_it_as_the_engine_reads_it(qtbot, make_window, tiny_model_dir,
                                                                        text_file, tmp_path):  # fmt: skip
    """`self_attn.o_proj` names the o_proj layers by peft's rule: the form checks that box,
    the engine's plan accepts it, and it is sent as written."""
    from quailora_core.config import RunConfig

    config = RunConfig(output=str(tmp_path / "out"))
    config.model.path, config.model.dtype = str(tiny_model_dir), "float32"
    config.calibration.source = str(text_file)
    config.calibration.samples, config.calibration.seq_len, config.calibration.heldout_samples = 6, 48, 2
    config.lora.rank, config.lora.alpha, config.init.device = 4, 8.0, "cpu"
    config.lora.targets = ["self_attn.o_proj"]
    config.save(tmp_path / "run.toml")
    window = make_window(restore_settings=False)
    assert window.open_run(str(tmp_path / "run.toml"))
    report = settle(qtbot, window)
    assert report.ok, report.errors
    assert report.plan.names == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]
    form = window.form
    assert form.to_config().lora.targets == ["self_attn.o_proj"]
    checked = [form.targetsList.item(i).text() for i in range(form.targetsList.count())
               if form.targetsList.item(i).checkState() == Qt.CheckState.Checked]  # fmt: skip
    assert checked == ["o_proj"] and not form.allLinearCheck.isChecked()
    assert window.runButton.isEnabled()
    form.targetsList.item(0).setCheckState(Qt.CheckState.Checked)  # q_proj too: the dotted spec stays
    assert form.to_config().lora.targets == ["q_proj", "self_attn.o_proj"]
    assert settle(qtbot, window).ok


def test_the_estimate_warns_of_too_few_calibration_tokens_before_the_run(qtbot, window, tiny_model_dir, text_file,
                                                                        tmp_path):  # fmt: skip
    from quailora_core.init.overfitting import TOKENS_PER_INPUT

    configure(window, tiny_model_dir, text_file, tmp_path / "out", samples=2, seq_len=48)
    report = settle(qtbot, window)
    assert report.ok, report.errors  # a warning, not a refusal: Run stays possible
    widest = max(i for _, i in report.summary.linear_shapes.values())
    text = window.form.tokenCountLabel.text()  # right under Samples, where the fix is made
    assert "calibration tokens for layers with up to" in text and f"{TOKENS_PER_INPUT * widest:,}" in text
    window.form.samplesSpin.setValue(TOKENS_PER_INPUT * widest // 48 + 1)
    assert settle(qtbot, window).ok
    assert "calibration tokens for layers" not in window.form.tokenCountLabel.text()
