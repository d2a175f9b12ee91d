"""Runs driven through the window with the real engine on a tiny local Llama (2 blocks,
14 linear layers): live charts with the engine's numbers, export, cancel, failure,
compare, and a GUI thread that never blocks."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest
from gui_helpers import configure, settle
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtWidgets import QApplication, QDialog, QFileDialog, QMessageBox, QPlainTextEdit

RUN_TIMEOUT = 180_000
N_LAYERS = 2 * 7


def start_and_wait(qtbot, window, expect="finished"):
    """Click Run and wait until the run ends; return the InitResult / Failed it ended with."""
    got = {}
    window.runFinished.connect(lambda result: got.setdefault("value", result))
    window.runFailed.connect(lambda failed: got.setdefault("value", failed))
    with qtbot.waitSignal(window.runEnded, timeout=RUN_TIMEOUT) as blocker:
        qtbot.mouseClick(window.runButton, Qt.MouseButton.LeftButton)
    assert blocker.args[0] == expect, (blocker.args[0], got.get("value"), window.logView.toPlainText())
    return got.get("value")


def test_run_charts_the_engine_numbers_and_exports_an_adapter_peft_loads(
    qtbot, window, tiny_model_dir, text_file, tmp_path, monkeypatch
):
    configure(window, tiny_model_dir, text_file, tmp_path / "adapter", rank=4, bits=4)
    window.form.quantTypeCombo.setCurrentIndex(window.form.quantTypeCombo.findData("nf4"))
    assert settle(qtbot, window).ok
    result = start_and_wait(qtbot, window)

    # one entry per targeted layer, in model order, with exactly the engine's numbers
    layers = result.layers
    assert len(layers) == N_LAYERS
    chart = window.layerErrorChart
    assert chart.entries() == [r.name for r in layers]
    assert window.logScaleCheck.isChecked()  # the default: bars are log10 of the errors
    base = chart.bars[("cal", "after")].opts["y0"]
    drawn = [base + h for h in chart.bars[("cal", "after")].opts["height"]]
    assert drawn == pytest.approx([math.log10(r.cal_err_after) for r in layers], rel=1e-9)
    window.logScaleCheck.setChecked(False)
    for (plot, which), field in {
        ("cal", "before"): "cal_err_before",
        ("cal", "after"): "cal_err_after",
        ("heldout", "before"): "heldout_err_before",
        ("heldout", "after"): "heldout_err_after",
    }.items():
        drawn = list(chart.bars[(plot, which)].opts["height"])
        assert drawn == pytest.approx([getattr(r, field) for r in layers], rel=1e-12), (plot, which)
    assert all(r.cal_err_after < r.cal_err_before for r in layers)
    # hovering a bar shows the layer's name and exact numbers
    first, fourth = layers[0], layers[3]
    window.show()
    plot = chart.plots["cal"]
    (y_low, y_high) = plot.vb.viewRange()[1]
    scene_point = plot.vb.mapViewToScene(QPointF(chart.results.x_positions()[3], (y_low + y_high) / 2))
    qtbot.mouseMove(chart.view.viewport(), chart.view.mapFromScene(scene_point))
    assert chart.last_tooltip.startswith(fourth.name)
    assert f"before {fourth.cal_err_before:.4g}  after {fourth.cal_err_after:.4g}" in chart.last_tooltip
    # heat map: block x module, 1 - after/before
    heat = window.heatMap
    assert heat.matrix.shape == (2, 7)
    assert heat.value(first.block, first.module) == pytest.approx(
        1 - first.cal_err_after / first.cal_err_before
    )
    assert heat.tooltip_at(0.5, 0.5).startswith(first.name)  # block 0, first module
    # table: one row per layer; sortable by the calibrated error after
    table = window.resultsTable
    assert table.model().rowCount() == N_LAYERS
    table.sortByColumn(6, Qt.SortOrder.AscendingOrder)
    col = [table.model().index(i, 6).data(Qt.ItemDataRole.UserRole) for i in range(N_LAYERS)]
    assert col == sorted(r.cal_err_after for r in layers)
    assert window.progressBar.value() == window.progressBar.maximum() == N_LAYERS
    assert "Finished" in window.progressPanel.currentLayerLabel.text()
    # the next run gets a fresh output folder
    assert window.form.outputPathEdit.text() == f"{tmp_path / 'adapter'}-2"

    # export the adapter to a chosen folder; the dialog shows where and how to load it
    dest = tmp_path / "exported"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(dest))
    import threading

    import quailora_core.adapter.writer as adapter_module

    copied_in = []  # the real copy_adapter, called from whichever thread the window uses
    real_copy = adapter_module.copy_adapter
    monkeypatch.setattr(
        adapter_module, "copy_adapter", lambda *a, **k: copied_in.append(threading.current_thread()) or real_copy(*a, **k)
    )
    with qtbot.waitSignal(window.exported, timeout=10_000):
        qtbot.mouseClick(window.exportAdapterButton, Qt.MouseButton.LeftButton)
    assert len(copied_in) == 1 and copied_in[0] is not threading.main_thread()  # the window stays responsive
    assert (dest / "adapter_model.safetensors").is_file()
    dialog = window.findChild(QDialog, "exportDialog")
    assert dialog.isVisible() and str(dest) in dialog.whereLabel.text()
    code = dialog.findChild(QPlainTextEdit, "loadingCodeView").toPlainText()
    assert "PeftModel.from_pretrained" in code and str(dest) in code and "nf4" in code
    qtbot.mouseClick(dialog.copyCodeButton, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == code
    dialog.close()

    # load it as fine-tuning will: transformers + BitsAndBytesConfig from quailora.json + peft
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    meta = json.loads((dest / "quailora.json").read_text())
    q = meta["quantization"]
    assert (q["bits"], q["quant_type"]) == (4, "nf4")
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q["quant_type"],
        bnb_4bit_use_double_quant=q["double_quant"],
        bnb_4bit_compute_dtype=getattr(torch, q["compute_dtype"]),
        bnb_4bit_quant_storage=getattr(torch, q["quant_storage"]),
    )
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=bnb, dtype=getattr(torch, q["load_dtype"])
    )
    model = PeftModel.from_pretrained(base, str(dest))
    loaded = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(loaded) == N_LAYERS
    layer = model.base_model.model.get_submodule(first.name)
    assert layer.lora_A["default"].weight.shape[0] == 4  # the rank chosen in the form
    assert layer.lora_B["default"].weight.abs().sum() > 0  # initialized, not QLoRA's B = 0

    # charts as PNG and the per-layer CSV
    pngs = window.export_charts(str(tmp_path / "charts"))
    assert [Path(p).name for p in pngs] == ["adapter-layer-errors.png", "adapter-heat-map.png"]
    assert all(Path(p).stat().st_size > 5_000 for p in pngs)
    from PySide6.QtGui import QImage

    caption = QImage(pngs[0]).text("Description")  # each image is headed by the run it shows
    assert caption.startswith("#1 QuAILoRA / r4 / 4-bit NF4") and str(tmp_path / "adapter") in caption
    csv_path = window.export_csv(str(tmp_path / "layers.csv"))
    rows = Path(csv_path).read_text().splitlines()
    assert len(rows) == N_LAYERS + 1 and rows[1].split(",")[1] == first.name


def test_cancel_after_the_first_layer_stops_and_writes_nothing(
    qtbot, window, tiny_model_dir, text_file, tmp_path
):
    out = tmp_path / "adapter"
    configure(window, tiny_model_dir, text_file, out)
    assert settle(qtbot, window).ok

    # Hold the engine thread right after it reports its first layer until the user has
    # clicked Cancel in the GUI (the engine is faster than any click on this tiny model).
    release = threading.Event()

    def hold_after_first(event):
        if type(event).__name__ == "LayerResult" and event.index == 0:
            release.wait(30)

    def on_started(worker):
        worker.event.connect(hold_after_first, Qt.ConnectionType.DirectConnection)

    def on_layer(event):
        if event.index == 0:
            assert window.cancelButton.isEnabled()
            qtbot.mouseClick(window.cancelButton, Qt.MouseButton.LeftButton)
            release.set()

    window.runStarted.connect(on_started)
    window.layerReceived.connect(on_layer)
    start_and_wait(qtbot, window, "cancelled")
    assert release.is_set()
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".adapter", "adapter"))] == []
    assert len(window.layerErrorChart.entries()) == 1  # what was done stays visible
    assert "nothing was written" in window.logView.toPlainText()
    assert not window.exportAdapterButton.isEnabled()
    assert settle(qtbot, window).ok and window.runButton.isEnabled()  # ready for the next run


def _ready_run(qtbot, window, model_dir, text_file, tmp_path):
    configure(window, model_dir, text_file, tmp_path / "adapter", rank=8, samples=8, seq_len=96)
    if not window.engine_ready:
        with qtbot.waitSignal(window.engineReady, timeout=120_000):
            pass
    assert settle(qtbot, window).ok
    window.show()  # painting the live charts is part of the GUI thread's work


# Libraries and engine modules that do the heavy work: none of their code may run on the
# GUI thread during a run (the GUI only receives the engine's small event records). The
# engine's rooms are named whole, so modules split out of them later are covered too.
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "safetensors", "datasets", "accelerate",
         "tokenizers", "huggingface_hub") + tuple(
    f"quailora_core.{m}" for m in ("init", "model", "quant", "sources", "adapter", "train", "evaluate", "demo")
)  # fmt: skip
# ... but for the summary line under the charts: means of the engine's numbers
LIGHT = ("quailora_core.init.metrics",)


def _is_heavy(module: str | None) -> bool:
    return bool(module) and module not in LIGHT and any(module == h or module.startswith(h + ".") for h in HEAVY)


def test_gui_thread_runs_no_engine_or_library_code_during_a_run(qtbot, window, small_model_dir, text_file, tmp_path):
    """What keeps the window responsive, checked in a way load and CPU speed cannot change:
    every Python function and builtin the GUI thread calls during a run is recorded
    (`sys.setprofile` traces only the thread that sets it), and none belongs to torch,
    transformers, the engine or the other heavy libraries."""
    import sys

    _ready_run(qtbot, window, small_model_dir, text_file, tmp_path)
    codes, builtins = set(), set()

    def record(frame, event, arg):
        if event == "call":
            codes.add(frame.f_code)
        elif event == "c_call":
            builtins.add(getattr(arg, "__module__", None) or type(getattr(arg, "__self__", None)).__module__)

    gui_thread = threading.get_ident()
    sys.setprofile(record)
    try:
        start_and_wait(qtbot, window)
    finally:
        sys.setprofile(None)
    assert threading.get_ident() == gui_thread
    by_file = {getattr(m, "__file__", None): name for name, m in list(sys.modules.items())}
    modules = {by_file.get(code.co_filename) for code in codes}
    assert "quailora_gui.views.charts" in modules and "pyqtgraph.graphicsItems.BarGraphItem" in modules  # recorded
    assert sorted(m for m in modules | builtins if _is_heavy(m)) == []


def test_gui_thread_does_little_work_per_event_during_a_run(qtbot, window, small_model_dir, text_file, tmp_path):
    """The CPU time the GUI thread itself spends between two ticks of a 20 ms timer stays
    small throughout a run (about 40 ms at most on a 2-core reference machine). Thread CPU
    time does not grow when other processes load the machine, unlike the wall-clock gaps
    that benchmarks/gui_responsiveness.py measures; the bound catches the real failures
    (a model load, a solve or a full garbage collection on the GUI thread, 0.5 s and more)."""
    _ready_run(qtbot, window, small_model_dir, text_file, tmp_path)
    cpu: list[float] = []
    heartbeat = QTimer()
    heartbeat.setInterval(20)
    heartbeat.timeout.connect(lambda: cpu.append(time.thread_time()))
    heartbeat.start()
    start_and_wait(qtbot, window)
    heartbeat.stop()
    work = [b - a for a, b in zip(cpu, cpu[1:], strict=False)]
    assert len(cpu) > 20  # the run lasted a while and the timer kept firing
    assert max(work) < 0.250, f"GUI thread busy for {max(work) * 1000:.0f} ms of CPU between two ticks"


def test_engine_failure_shows_a_dialog_and_the_window_keeps_working(
    qtbot, window, tiny_model_dir, text_file, tmp_path
):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file at all")
    configure(window, broken, text_file, tmp_path / "adapter")
    assert settle(qtbot, window).ok  # only the weights are bad: found when the engine loads them
    failed = start_and_wait(qtbot, window, "failed")
    box = window.findChild(QMessageBox, "errorDialog")
    assert box is not None and box.isVisible()
    assert box.text() == failed.message and box.informativeText() == failed.hint
    assert "Traceback" in box.detailedText()
    assert not (tmp_path / "adapter").exists()
    box.close()
    assert window.form.isEnabled() and not window.cancelButton.isEnabled()
    window.form.modelPathEdit.setText(str(tiny_model_dir))  # fix the input, run again
    assert settle(qtbot, window).ok
    result = start_and_wait(qtbot, window)
    assert len(result.layers) == N_LAYERS


def test_a_second_run_is_compared_with_the_first(qtbot, window, tiny_model_dir, text_file, tmp_path):
    configure(window, tiny_model_dir, text_file, tmp_path / "a", rank=2, method="loftq")
    assert settle(qtbot, window).ok
    first = start_and_wait(qtbot, window)
    window.form.rankSpin.setValue(8)
    window.form.methodCombo.setCurrentIndex(window.form.methodCombo.findData("quailora"))
    assert settle(qtbot, window).ok
    second = start_and_wait(qtbot, window)
    combo = window.compareCombo
    names = [combo.itemText(i) for i in range(combo.count())]
    assert names == ["None", "#1 LoftQ / r2 / 4-bit NF4", "#2 QuAILoRA / r8 / 4-bit NF4"]
    combo.setCurrentIndex(1)
    overlay = window.layerErrorChart.compare_items["cal"]
    assert list(overlay.yData) == pytest.approx([r.cal_err_after for r in first.layers])  # data, not log10
    panel = window.comparePanel
    header = [panel.table.horizontalHeaderItem(i).text() for i in range(3)]
    assert header == ["Figure", "#2 QuAILoRA / r8 / 4-bit NF4", "#1 LoftQ / r2 / 4-bit NF4"]
    rows = {panel.cell(i, 0): (panel.cell(i, 1), panel.cell(i, 2)) for i in range(panel.table.rowCount())}
    after = rows["Mean calibrated error, after"]
    assert after == (
        f"{second.summary['mean_cal_err_after']:.4g}",
        f"{first.summary['mean_cal_err_after']:.4g}",
    )
    combo.setCurrentIndex(0)
    assert window.layerErrorChart.compare is None
    assert overlay.yData is None or len(overlay.yData) == 0  # the overlay is gone


def test_a_compared_run_below_the_shown_runs_range_is_drawn_at_its_value(qtbot):
    # the compared run removed far more error than the shown one: on the log axis its points
    # must sit at their own values (the tooltip's), not pinned at the shown run's floor
    from quailora_core.events import LayerResult
    from quailora_gui.controllers.results import RunResults
    from quailora_gui.views.charts import LayerErrorChart

    def layers(after):
        return [LayerResult(index=i, name=f"model.layers.0.m{i}", block=0, module=f"m{i}", shape=(8, 8),
                            cal_err_before=2e-3, cal_err_after=after[i], uncal_err_before=0.1, uncal_err_after=0.05,
                            heldout_err_before=3e-3, heldout_err_after=after[i], seconds=0.1)
                for i in range(len(after))]  # fmt: skip

    chart = LayerErrorChart()
    qtbot.addWidget(chart)
    chart.set_log_scale(True)
    chart.set_results(RunResults(layers([1e-3, 8e-4])))
    chart.set_compare(RunResults(layers([8.3e-6, 5e-4])), "#2")
    for key in ("cal", "heldout"):
        assert list(chart.compare_items[key].yData) == pytest.approx([8.3e-6, 5e-4])
        chart.plots[key].vb.updateAutoRange()
        low, _high = chart.plots[key].vb.viewRange()[1]  # log10 units
        assert low <= math.log10(8.3e-6)  # the point is inside the view, not under its floor


def test_dropping_a_model_folder_and_a_text_file_fills_the_form(qtbot, window, tiny_model_dir, text_file):
    window.show()
    for path in (tiny_model_dir, text_file):
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(path))])
        args = (Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
        enter = QDragEnterEvent(QPoint(40, 40), *args)
        QApplication.sendEvent(window, enter)
        assert enter.isAccepted()
        QApplication.sendEvent(window, QDropEvent(QPointF(40, 40), *args))
    assert window.form.modelPathEdit.text() == str(tiny_model_dir)
    assert window.form.calibrationPathEdit.text() == str(text_file)
    assert str(tiny_model_dir) in window.recent_models.items
