"""The window at the screen sizes people have: the whole form without scrolling at 1600 x 1000,
nothing clipped at 1024 x 700, heat-map labels that do not overlap, charts whose legends and
stats lines stay readable. (The offscreen screen and fonts of conftest.py make sizes repeatable.)"""

from __future__ import annotations

import math

import pytest
from gui_helpers import configure, settle
from PySide6.QtGui import QFontMetrics

from quailora_core.config import RunConfig
from quailora_core.events import EvalResult, TrainStep
from quailora_gui.controllers.results import short_module_names


def show_at(qtbot, window, width, height):
    window.resize(width, height)
    window.show()
    qtbot.waitExposed(window)
    qtbot.waitUntil(lambda: window.width() <= width and window.height() == height)


def test_the_whole_form_fits_a_1600_by_1000_window_and_nothing_is_clipped_at_1024_by_700(qtbot, window):
    show_at(qtbot, window, 1600, 1000)
    scroll = window.form.scroll
    assert scroll.verticalScrollBar().maximum() == 0  # every setting and Run without scrolling
    assert window.runButton.isVisible()

    show_at(qtbot, window, 1024, 700)
    assert window.width() == 1024  # the window fits a 1024-pixel-wide screen
    contents = scroll.widget()
    assert contents.width() >= contents.minimumSizeHint().width()  # scrolls down, never cut at the side
    assert window.results_area.width() >= 500  # the charts keep room beside the form


def test_the_method_settings_fold_away_and_unfold_for_a_run_file_that_sets_them(qtbot, window):
    form = window.form
    assert not form.methodAdvancedButton.isChecked() and not form.inputsCombo.isVisibleTo(window)
    config = RunConfig()
    config.init.inputs = "asymmetric"  # a setting under "More": never hidden when it is not the default
    form.set_config(config)
    assert form.methodAdvancedButton.isChecked() and form.inputsCombo.isVisibleTo(window)
    form.methodAdvancedButton.click()
    assert not form.inputsCombo.isVisibleTo(window) and form.to_config().init.inputs == "asymmetric"


def test_heat_map_column_labels_are_short_names_that_do_not_overlap(qtbot, window, tiny_model_dir, text_file, tmp_path):
    assert short_module_names(["self_attn.q_proj", "mlp.up_proj"]) == ["q_proj", "up_proj"]
    assert short_module_names(["mlp.experts.0.up_proj", "mlp.experts.1.up_proj", "mlp.gate"]) == [
        "0.up_proj", "1.up_proj", "gate"]  # fmt: skip
    show_at(qtbot, window, 1024, 700)
    configure(window, tiny_model_dir, text_file, tmp_path / "adapter")
    assert settle(qtbot, window).ok
    with qtbot.waitSignal(window.runEnded, timeout=180_000):
        window.runButton.click()
    heat = window.heatMap
    window.tabs.setCurrentWidget(heat)
    qtbot.waitUntil(lambda: heat.isVisible() and heat.plot.vb.width() > 0)
    heat.resize(heat.size())  # the labels are laid out for the width the user sees
    heat._set_module_ticks()
    ticks = heat.module_ticks
    assert {name for _, name in ticks} <= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    per_column = heat.plot.vb.width() / len(heat.modules)
    metrics = QFontMetrics(heat.font())
    for (x0, a), (x1, b) in zip(ticks, ticks[1:], strict=False):
        room = (x1 - x0) * per_column  # pixels between two label centres
        assert room >= (metrics.horizontalAdvance(a) + metrics.horizontalAdvance(b)) / 2, (a, b)
    show_at(qtbot, window, 1600, 1000)
    qtbot.waitUntil(lambda: len(heat.module_ticks) == len(heat.modules))  # room for every column's label


def test_the_loss_legend_stays_off_the_curves_and_the_stats_line_wraps(qtbot, window):
    panel = window.trainingPanel
    assert panel.charts.lossChart.getPlotItem().legend is None  # no legend box inside the plot
    title = panel.charts.lossChart.getPlotItem().titleLabel.text
    assert all(word in title for word in ("training", "smoothed", "validation"))
    state = window.training_control.training
    state.begin()
    for step in range(1, 41):
        state.on_event(TrainStep(step=step, total_steps=100, loss=3.0 - step / 40, lr=2e-4, tokens_per_second=900.0))
    state.on_event(EvalResult(step=40, loss=2.2, perplexity=math.exp(2.2)))
    panel.show_state(state)
    show_at(qtbot, window, 1024, 700)
    window.tabs.setCurrentWidget(panel)
    label = panel.trainStatsLabel
    qtbot.waitUntil(label.isVisible)
    assert "Time left" in label.text() and label.wordWrap()
    assert label.height() >= label.heightForWidth(label.width()) - 1  # all of it shown, wrapped


@pytest.mark.parametrize("checked", [True, False])
def test_view_log_scale_and_the_charts_check_box_agree(qtbot, make_window, checked):
    first = make_window()
    first.logScaleCheck.setChecked(checked)
    first.shutdown()
    second = make_window()
    assert second.logScaleCheck.isChecked() is checked and second.logScaleAction.isChecked() is checked
