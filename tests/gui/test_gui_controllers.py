"""The Qt-free controllers: what the views show, computed without a display or Qt."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from quailora_gui.controllers import checks
from quailora_gui.controllers.formatting import fmt_count, fmt_duration, fmt_err, fmt_gib, fmt_pct
from quailora_gui.controllers.paths import RecentList, classify_path, model_path_for, next_free_output
from quailora_gui.controllers.progress import ProgressTracker
from quailora_gui.controllers.results import RunResults, improvement, layer_tooltip
from quailora_gui.controllers.session import Session, compare_rows


def layer(index, block, module, before=0.02, after=0.01, held_before=0.03, held_after=0.02):
    from quailora_core.events import LayerResult

    return LayerResult(
        index=index,
        name=f"model.layers.{block}.{module}",
        block=block,
        module=module,
        shape=(64, 64),
        cal_err_before=before,
        cal_err_after=after,
        uncal_err_before=0.1,
        uncal_err_after=0.05,
        heldout_err_before=held_before,
        heldout_err_after=held_after,
        seconds=0.25,
    )


def test_controllers_import_without_qt():
    code = (
        "import sys\n"
        "import quailora_gui, quailora_gui.controllers.checks, quailora_gui.controllers.results\n"
        "import quailora_gui.controllers.progress, quailora_gui.controllers.session\n"
        "import quailora_gui.controllers.paths, quailora_gui.controllers.formatting\n"
        "import quailora_gui.controllers.labels, quailora_gui.controllers.app_state\n"
        "import quailora_gui.controllers.tasks, quailora_gui.controllers.form_fields\n"
        "import quailora_gui.controllers.target_choice, quailora_gui.controllers.form_text\n"
        "bad = [m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph', 'torch'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_progress_reports_layer_count_and_eta_from_the_calibrate_stage():
    from quailora_core.events import Stage

    now = [100.0]
    tracker = ProgressTracker(clock=lambda: now[0])
    tracker.on_event(Stage("load"))
    assert tracker.busy and tracker.eta_seconds() is None
    now[0] = 130.0  # loading took 30 s: must not count towards the ETA
    tracker.on_event(Stage("calibrate", total=10))
    now[0] = 134.0
    tracker.on_event(layer(0, 0, "q_proj"))
    tracker.on_event(layer(1, 0, "k_proj"))
    assert not tracker.busy
    assert (tracker.done, tracker.total) == (2, 10)
    assert tracker.eta_seconds() == pytest.approx(8 * 2.0)
    assert tracker.status_text() == "Layer 2 of 10: model.layers.0.k_proj"
    assert "16 s left" in tracker.eta_text() and "elapsed 34 s" in tracker.eta_text()


def test_results_are_kept_in_model_order_grouped_by_block():
    results = RunResults()
    for lr in (layer(2, 1, "q_proj"), layer(0, 0, "q_proj"), layer(1, 0, "v_proj"), layer(3, 1, "v_proj")):
        results.add(lr)
    assert [r.index for r in results.layers] == [0, 1, 2, 3]
    assert results.x_positions() == [0.0, 1.0, 3.0, 4.0]  # one empty slot between blocks
    assert results.block_centres() == [(0.5, 0), (3.5, 1)]
    assert results.nearest(3.2).index == 2 and results.nearest(2.0) is None
    assert results.modules() == ["q_proj", "v_proj"] and results.blocks() == [0, 1]


def test_heat_matrix_holds_share_of_error_removed_per_block_and_module():
    results = RunResults(
        [
            layer(0, 0, "q_proj", 0.02, 0.005),
            layer(1, 0, "v_proj", 0.04, 0.03),
            layer(2, 1, "q_proj", 0.1, 0.1),
        ]
    )
    grid = results.heat_matrix()
    assert grid[0] == [pytest.approx(0.75), pytest.approx(0.25)]
    assert grid[1] == [pytest.approx(0.0), None]  # block 1 has no v_proj (yet)
    assert improvement(0.0, 0.0) is None


def test_running_mean_follows_model_order():
    results = RunResults([layer(i, 0, f"m{i}", before=b) for i, b in enumerate([0.1, 0.3, 0.2])])
    assert results.running_mean("cal_err_before") == pytest.approx([0.1, 0.2, 0.2])


def test_tooltip_has_name_and_exact_numbers():
    text = layer_tooltip(layer(5, 1, "up_proj", 0.0123456, 0.00456789))
    assert "model.layers.1.up_proj" in text and "0.01235" in text and "0.004568" in text and "63.0 %" in text


def test_dropped_paths_are_classified(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "hello"}\n')
    run = tmp_path / "run.toml"
    run.write_text("")
    assert classify_path(str(model)) == "model"
    assert classify_path(str(model / "config.json")) == "model"
    assert model_path_for(str(model / "config.json")) == str(model)
    assert classify_path(str(data)) == "calibration"
    assert classify_path(str(tmp_path)) == "calibration"  # a folder of text files
    assert classify_path(str(run)) == "run"
    assert classify_path(str(tmp_path / "missing")) is None


def test_next_free_output_skips_non_empty_folders(tmp_path):
    base = tmp_path / "adapter"
    assert next_free_output(str(base)) == str(base)
    base.mkdir()
    assert next_free_output(str(base)) == str(base)  # empty: still usable
    (base / "x").write_text("x")
    assert next_free_output(str(base)) == f"{base}-2"
    (tmp_path / "adapter-2").mkdir()
    (tmp_path / "adapter-2" / "x").write_text("x")
    assert next_free_output(f"{base}-2") == f"{base}-3"


def test_recent_list_is_most_recent_first_without_duplicates():
    recent = RecentList(["a", "b"], limit=3)
    recent.add("c")
    recent.add("a")
    recent.add("d")
    assert recent.items == ["d", "a", "c"]


def test_session_names_runs_by_method_rank_and_bits_and_compares_summaries():
    from quailora_core.config import RunConfig

    cfg = RunConfig()
    cfg.lora.rank = 8
    session = Session()
    first = session.add(
        cfg, [layer(0, 0, "q_proj")], {"layers": 1, "mean_cal_err_after": 0.01, "seconds": 3.0}, "/a"
    )
    cfg.quantization.bits = 8
    cfg.init.method = "loftq"
    second = session.add(cfg, [], {"layers": 1, "mean_cal_err_after": 0.02}, "/b")
    assert first.name == "#1 QuAILoRA / r8 / 4-bit NF4"
    assert second.name == "#2 LoftQ / r8 / 8-bit"
    assert first.config.quantization.bits == 4  # a copy, not the live config
    rows = compare_rows(first.summary, second.summary)
    assert rows[0] == ("Layers", "1", "1")
    assert rows[1] == ("Mean calibrated error, after", "0.01", "0.02")
    assert rows[2] == ("Time in the solver (sum over layers)", "3.0 s", "–")


def test_number_formatting():
    assert fmt_err(0.0123456) == "0.01235" and fmt_err(None) == "–"
    assert fmt_pct(0.4213) == "42.1 %"
    assert fmt_count(6_738_415_616) == "6.74 B" and fmt_count(115_000) == "115.0 k"
    assert (
        fmt_duration(0.01) == "< 0.1 s"
        and fmt_duration(0.44) == "0.4 s"
        and fmt_duration(185) == "3 min 05 s"
        and fmt_duration(3720) == "1 h 02 min"
    )
    assert fmt_gib(0.34) == "348 MiB" and fmt_gib(12.34) == "12.3 GiB" and fmt_gib(None) == "–"


def test_small_memory_sizes_read_in_mib_never_as_zero_gib():
    # issue 14: the form's estimate said "0.00 GiB" for the demo model
    from quailora_core.units import size_text

    assert fmt_gib(12 / 1024) == "12 MiB" and fmt_gib(0.0001) == "< 1 MiB" and fmt_gib(0) == "0 MiB"
    assert size_text(12.4 * 2**20) == "12 MiB" and size_text(300_000) == "< 1 MiB" and size_text(0) == "0 MiB"
    assert size_text(999 * 2**20) == "999 MiB" and size_text(999.7 * 2**20) == "1.0 GiB"
    assert size_text(1.5 * 2**30) == "1.5 GiB" and size_text(13.24 * 2**30) == "13.2 GiB"


def test_errors_of_validate_go_to_the_label_of_the_setting_they_name(tmp_path):
    """The setting an InputError names (its `field`, a run-file path) decides the label, not its words."""
    from quailora_core.config import RunConfig
    from quailora_core.errors import InputError

    def refused(change):
        cfg = RunConfig(output=str(tmp_path / "free"))
        change(cfg)
        with pytest.raises(InputError) as info:
            cfg.validate()
        return info.value

    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    rank = refused(lambda c: setattr(c.lora, "rank", 0))
    assert rank.message == "rank must be at least 1, got 0." and checks.error_key(rank.field) == checks.LORA
    assert checks.error_key(refused(lambda c: setattr(c, "output", str(full))).field) == checks.OUTPUT
    assert checks.error_key(refused(lambda c: setattr(c.init, "method", "x")).field) == checks.METHOD
    assert checks.error_key(refused(lambda c: setattr(c.init, "verify", "x")).field) == checks.METHOD
    assert checks.error_key(refused(lambda c: setattr(c.model, "dtype", "x")).field) == checks.MODEL
    assert checks.error_key(refused(lambda c: setattr(c.calibration, "seq_len", 4)).field) == checks.SIZES
    assert checks.error_key(refused(lambda c: setattr(c.quantization, "blocksize", 32)).field) == checks.QUANTIZATION
    assert checks.error_key("init.device") == checks.DEVICE  # "Device 'cuda' was asked for but no CUDA GPU ..."
    assert checks.error_key("calibration.text_column") == checks.TEXT_COLUMN
    assert checks.error_key("lora.dropout") == checks.LORA  # not on the form: its section's label
    assert checks.error_key(None) == checks.GENERAL and checks.error_key("train.data") == checks.GENERAL
    report = checks.CheckReport()
    report.refuse(InputError("whatever text", field="lora.rank"))
    report.refuse(InputError("about the targets", "a hint"), default_field="lora.targets")
    assert report.errors == {checks.LORA: "whatever text", checks.TARGETS: "about the targets a hint"}


def test_checker_reports_each_problem_next_to_its_field(tmp_path):
    from quailora_core.config import RunConfig

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    cfg = RunConfig(output=str(out))
    cfg.model.path = str(tmp_path / "no-such-model")
    cfg.calibration.source = str(tmp_path / "no-such-file.txt")
    report = checks.ConfigChecker().check(cfg)
    assert set(report.errors) >= {checks.MODEL, checks.CALIBRATION, checks.OUTPUT}
    assert "does not exist" in report.errors[checks.MODEL]
    assert "not empty" in report.errors[checks.OUTPUT]
    assert report.summary is None and report.estimate is None


def test_checker_uses_injected_core_functions_and_caches_summaries(tmp_path):
    from quailora_core.config import RunConfig

    calls = []
    summary = SimpleNamespace(
        linear_modules=["q_proj", "v_proj"], linear_shapes={"q_proj": (8, 8), "v_proj": (8, 4)}
    )

    def summarize(path, trust_remote_code=False):
        calls.append(path)
        return summary

    preview = SimpleNamespace(columns=["text"], rows=["x"])
    planned = []

    def plan(cfg):  # stands in for the engine's plan_for (which asks peft and transformers)
        from quailora_core.errors import InputError

        planned.append((tuple(cfg.lora.targets), cfg.lora.rank))
        if "o_proj" in cfg.lora.targets:
            raise InputError("Target 'o_proj' matches no layer.", "Linear layers in each block: q_proj, v_proj.",
                             field="lora.targets")  # fmt: skip
        if cfg.lora.rank > 4:
            raise InputError("rank 5 is larger than the smallest target dimension (4, in v_proj).", "",
                             field="lora.rank")  # fmt: skip
        return SimpleNamespace(targets=[])

    checker = checks.ConfigChecker(
        summarize_model=summarize,
        preview=lambda *a, **k: preview,
        estimate_run=lambda cfg, s: SimpleNamespace(peak_memory_gb=1.0, seconds=2.0, tokens=3, note=""),
        plan_targets=plan,
    )
    cfg = RunConfig(output=str(tmp_path / "new"))
    cfg.model.path, cfg.init.device = "demo", "cpu"
    cfg.lora.rank = 4
    assert checker.check(cfg).ok
    cfg.lora.rank = 5  # v_proj's smaller side is 4
    report = checker.check(cfg)
    assert "larger than the smallest target dimension (4, in v_proj)" in report.errors[checks.LORA]
    cfg.lora.rank = 4
    cfg.lora.targets = ["q_proj", "o_proj"]
    assert "'o_proj' matches no layer" in checker.check(cfg).errors[checks.TARGETS]
    assert calls == ["demo"]  # summarized once, then cached
    cfg.lora.targets = ["all-linear"]
    checker.check(cfg)
    checker.check(cfg)
    assert planned.count((("all-linear",), 4)) == 1  # planned once per setting, then cached


# ---------------------------------------------------------------------------- the state machine
def _report(generation, errors=None):
    return checks.CheckReport(errors=dict(errors or {}), generation=generation)


def test_state_machine_moves_through_its_phases_and_refuses_illegal_moves():
    from quailora_gui.controllers.app_state import Action, AppState, Checks, Phase, TransitionError

    state = AppState()
    seen = []
    unsubscribe = state.subscribe(lambda s: seen.append((s.phase, s.checks)))
    assert state.phase is Phase.IDLE and state.checks is Checks.CHECKING
    assert state.actions() == {Action.OPEN_RUN, Action.SAVE_RUN, Action.DROP_INPUT, Action.EDIT_FORM,
                               Action.EDIT_TRAINING, Action.REOPEN, Action.EVALUATE}  # fmt: skip
    assert state.run_status() == "Checking the settings…" and "pending" in state.blockers()
    with pytest.raises(TransitionError, match="cannot start run while idle"):
        state.start_run()  # no report yet: Run is disabled, so the move is illegal
    for illegal in (state.cancel, state.end_run, state.stop, state.end_training, state.end_export):
        with pytest.raises(TransitionError):
            illegal()

    # checks: only the report of the latest generation counts
    first = state.new_check()
    second = state.new_check()
    assert not state.take_report(_report(first)) and state.checks is Checks.CHECKING  # stale: dropped
    assert state.take_report(_report(second, {checks.LORA: "rank too large"}))
    assert state.checks is Checks.FAILED and state.run_status() == "Fix the LoRA settings: click here to show it."
    state.take_report(_report(state.new_check(), {checks.OUTPUT: "not empty", checks.MODEL: "missing"}))
    assert state.first_blocker() == (checks.MODEL, "missing")  # the form's first, top to bottom
    assert state.run_status() == "Fix the model (and 1 more problem): click here to show it."
    state.take_report(_report(state.new_check(), {checks.LORA: "rank too large"}))
    assert state.blockers() == {checks.LORA: "rank too large"} and not state.enabled(Action.RUN)
    assert state.take_report(_report(state.new_check()))
    assert state.checks is Checks.PASSED and state.enabled(Action.RUN) and state.run_status() == "Ready to run."

    # an initialization: Run, Cancel, end
    state.start_run()
    assert state.phase is Phase.RUNNING and state.running and state.run_status() == "Running…"
    assert state.actions() == {Action.CANCEL, Action.SAVE_RUN, Action.EDIT_TRAINING}
    with pytest.raises(TransitionError):
        state.start_training()
    state.cancel()
    assert state.phase is Phase.CANCELLING and not state.enabled(Action.CANCEL)
    with pytest.raises(TransitionError):
        state.cancel()  # once
    state.note(has_run=True, has_results=True)
    state.end_run()
    assert state.phase is Phase.IDLE and {Action.RUN, Action.EXPORT_ADAPTER, Action.EXPORT_RUN,
                                          Action.EXPORT_CHARTS} <= state.actions()  # fmt: skip
    assert not state.enabled(Action.LAUNCH)  # no training output folder yet
    state.note(train_output=True)
    assert state.enabled(Action.LAUNCH) and not state.enabled(Action.RESUME)
    with pytest.raises(AttributeError):
        state.note(running=True)  # phases move through transitions only

    # a launch: the run folder is written first, then the training runs; Stop, end
    from quailora_gui.controllers.app_state import Export

    state.begin_export(Export.LAUNCH)
    assert state.enabled(Action.RUN)  # an initialization may start while a folder is copied
    assert not (state.enabled(Action.LAUNCH) or state.enabled(Action.EXPORT_RUN) or state.enabled(Action.EXPORT_ADAPTER))
    with pytest.raises(TransitionError):
        state.start_training()  # not before the folder is written
    with pytest.raises(TransitionError):
        state.begin_export(Export.ADAPTER)  # one export at a time
    state.end_export()
    state.start_training()
    assert state.training and state.run_status() == "Training is running (see the Training tab)."
    assert state.enabled(Action.STOP) and state.enabled(Action.EXPORT_ADAPTER)  # the adapter, during training
    assert not (state.enabled(Action.RUN) or state.enabled(Action.EDIT_FORM) or state.enabled(Action.EDIT_TRAINING))
    state.stop()
    assert state.phase is Phase.STOPPING and not state.enabled(Action.STOP)
    state.note(resumable=True)
    assert not state.enabled(Action.RESUME)  # still stopping
    state.end_training()
    assert state.enabled(Action.RESUME) and state.enabled(Action.RUN)

    # closing: from any phase, once; then nothing is allowed and reports are dropped
    unsubscribe()
    n = len(seen)
    state.close()
    state.close()
    assert state.phase is Phase.CLOSED and state.actions() == frozenset() and len(seen) == n
    assert not state.take_report(_report(state.generation))
    with pytest.raises(TransitionError):
        state.new_check()
    assert seen[0] == (Phase.IDLE, Checks.FAILED) and (Phase.STOPPING, Checks.PASSED) in seen  # each change


def test_every_phase_lists_its_moves_and_every_action_has_a_rule():
    from quailora_gui.controllers.app_state import TRANSITIONS, Action, AppState, Phase

    assert set(TRANSITIONS) == set(Phase)
    assert all("close" in moves for phase, moves in TRANSITIONS.items() if phase is not Phase.CLOSED)
    state = AppState()
    assert all(isinstance(state.enabled(a), bool) for a in Action)


# ---------------------------------------------------------------------------- tasks
def test_a_task_reports_its_outcome_events_cancel_and_failure_without_qt():
    from quailora_core.errors import Cancelled, InputError
    from quailora_core.events import Log, Stage
    from quailora_gui.controllers import tasks

    got = []
    config = object()

    def engine(cfg, emit, token):
        assert cfg is config
        emit(Stage("load"))
        emit(Log("info", "loaded"))
        if token.cancelled:
            raise Cancelled()
        return "result"

    callbacks = dict(on_event=got.append, on_done=lambda r: got.append(("done", r)),
                     on_failed=lambda f: got.append(("failed", f)), on_cancelled=lambda: got.append("cancelled"))  # fmt: skip
    task = tasks.init_task(config, engine, **callbacks)
    assert (task.name, task.lane) == ("init", tasks.ENGINE)
    context = tasks.TaskContext(emit=got.append)
    tasks.deliver(task, tasks.execute(task, context))
    assert got == [Stage("load"), Log("info", "loaded"), ("done", "result")]

    got.clear()
    context = tasks.TaskContext(emit=got.append)
    context.token.cancel()
    assert context.cancelled
    tasks.deliver(task, tasks.execute(task, context))
    assert got[-1] == "cancelled"

    def refuse(cfg, emit, token):
        raise InputError("The model folder is empty.", "Give a folder with config.json.")

    got.clear()
    failing = tasks.init_task(config, refuse, **callbacks)
    outcome = tasks.execute(failing, tasks.TaskContext())
    assert outcome[0] == tasks.FAILED and "Traceback" in outcome[1][1]
    tasks.deliver(failing, outcome)
    failed = got[0][1]
    assert (failed.message, failed.hint) == ("The model folder is empty.", "Give a folder with config.json.")
    assert "InputError" in failed.details
    assert tasks.run_failure(MemoryError()).message == "The run ran out of memory."
    assert tasks.run_failure(ValueError("bad shape")).message == "The run failed: bad shape"


def test_a_check_task_turns_a_bug_into_a_report_of_its_generation():
    from quailora_gui.controllers import tasks

    class Broken:
        def check(self, config):
            raise RuntimeError("a bug")

    task = tasks.check_task(Broken(), object(), 7)
    assert task.supersede and task.lane == tasks.CHECKS
    kind, report = tasks.execute(task, tasks.TaskContext())
    assert kind == tasks.DONE and report.generation == 7
    assert report.errors == {checks.GENERAL: "Could not check the settings: a bug"}


# ---------------------------------------------------------------------------- the form's tables
def test_the_field_table_names_real_settings_with_their_help_and_labels_keep_the_core_choices():
    from quailora_core import config as core
    from quailora_gui.controllers import form_fields, labels

    paths = [f.path for f in form_fields.FIELDS + form_fields.TRAIN_FIELDS]
    assert len(paths) == len(set(paths)) == 28 + 18
    for f in form_fields.FIELDS + form_fields.TRAIN_FIELDS:
        form_fields.get_value(core.RunConfig(), f.path)  # a real setting
        assert labels.tooltip(f.name) == core.field_help(f.path).tooltip()
        assert f.name not in labels.TOOLTIPS  # one sentence, in the core only
        assert f.error in form_fields.ERROR_KEYS
    assert "(usual: 500)" in labels.tooltip("alsItersSpin")  # the default, not a stale copy
    assert list(labels.METHOD_LABELS) == list(core.METHODS)
    assert list(labels.INPUT_LABELS) == list(core.INPUT_SOURCES)
    assert list(labels.VERIFY_LABELS) == list(core.VERIFY_MODES)
    assert list(labels.QUANT_TYPE_LABELS) == list(core.QUANT_TYPES)
    assert list(labels.RUN_KIND_LABELS) == list(core.RUN_KINDS)  # every run kind offered, none invented
    assert form_fields.default_value("calibration.split") == "train"


def test_target_specs_are_kept_as_written_until_a_box_is_touched():
    from quailora_core.model.target_names import matches
    from quailora_gui.controllers.target_choice import TargetChoice

    leaves = ["q_proj", "k_proj", "v_proj", "o_proj"]
    choice = TargetChoice(["self_attn.o_proj", "q_proj"])
    assert choice.checked(leaves) == ["q_proj", "o_proj"]
    assert choice.targets(leaves, ["q_proj", "o_proj"], False) == ["self_attn.o_proj", "q_proj"]  # as written
    assert matches("self_attn.o_proj", "model.layers.0.self_attn.o_proj")  # the engine's rule, the same spec
    choice.touched = True
    assert choice.targets(leaves, ["v_proj", "o_proj"], False) == ["v_proj", "self_attn.o_proj"]  # the boxes, in order
    assert choice.targets(leaves, leaves, False) == ["all-linear"]
    assert TargetChoice(["all-linear"]).checked(leaves) == leaves
    assert TargetChoice(["mlp.down_proj"]).checked(leaves) == []
    assert TargetChoice(["x"]).targets([], [], False) == ["x"]  # no boxes yet: the specs


def test_the_cores_hints_reach_the_window_without_command_line_flags():
    from quailora_core import config as core
    from quailora_gui.controllers.wording import app_words

    for section in (*core.SECTIONS, None):
        for h in core.section_help(section):
            if h.flag:
                worded = app_words(f"Use {h.flag} 3, or leave it out of {h.flag}.")
                assert "--" not in worded and h.path.rpartition(".")[2].replace("_", " ") in worded, worded
    assert app_words("Check the path, or use --model demo.") == "Check the path, or use the demo model."
    assert app_words("Set [train] data in the run file, or use --data PATH.") == "Choose the training data."
    assert app_words("Unknown key 'x' in [train] of the run file.") == "Unknown key 'x' in [train] of the run file."
