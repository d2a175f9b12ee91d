"""The config is where a setting is defined once: its default, its help and usual value
(shown by the CLI's --help and the app's tooltips), and the field an error about it names."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from helpers import make_config

from quailora_core.cli.commands import make_parser
from quailora_core.cli.flags import INIT_FLAGS, TRAIN_FLAGS
from quailora_core.config import INPUT_SOURCES, METHODS, SECTIONS, RunConfig, field_help, section_help
from quailora_core.errors import InputError
from quailora_core.init import solvers
from quailora_core.init.preflight import preflight
from quailora_core.init.strategies import STRATEGIES


def _subparser(name: str):
    parser = make_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


def test_every_setting_has_help_and_a_usual_value():
    for section, cls in [*SECTIONS.items(), (None, RunConfig)]:
        names = [f.name for f in dataclasses.fields(cls) if f.name not in SECTIONS]
        helps = {h.path.rpartition(".")[2]: h for h in section_help(section)}
        assert set(helps) == set(names), (section, set(names) - set(helps))
        for h in helps.values():
            assert h.help and not h.help.endswith(".") and h.usual, h
    # the usual value is the default's text unless a field says otherwise
    assert field_help("init.als_iters").usual == "500" == str(RunConfig().init.als_iters)
    assert field_help("lora.rank").tooltip() == "LoRA rank r: the number of directions the adapter can correct (usual: 16)."


def test_cli_flags_show_the_config_help():
    for command, table in (("init", INIT_FLAGS), ("train", TRAIN_FLAGS)):
        actions = {a.option_strings[0]: a for a in _subparser(command)._actions if a.option_strings}
        for flag, (section, name, _, text) in table.items():
            path = f"{section}.{name}" if section else name
            assert actions[flag].help == field_help(path).flag_help() == text, flag
    assert "--rank" in INIT_FLAGS and "--lr" in TRAIN_FLAGS and "--max-steps" in TRAIN_FLAGS


def test_one_list_of_methods_and_input_strategies():
    assert solvers.METHODS is METHODS
    assert set(STRATEGIES) == set(INPUT_SOURCES)
    assert STRATEGIES["asymmetric"].paired and not STRATEGIES["fp"].paired


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("lora", "rank", 0), "lora.rank"),
        (("lora", "alpha", 0.0), "lora.alpha"),
        (("quantization", "bits", 3), "quantization.bits"),
        (("quantization", "quant_type", "int3"), "quantization.quant_type"),
        (("calibration", "samples", 0), "calibration.samples"),
        (("calibration", "seq_len", 4), "calibration.seq_len"),
        (("init", "method", "magic"), "init.method"),
        (("init", "inputs", "random"), "init.inputs"),
        (("init", "device", "tpu"), "init.device"),
        (("model", "dtype", "float8"), "model.dtype"),
    ],
)
def test_validation_errors_name_their_setting(change, field, tmp_path):
    cfg = RunConfig(output=str(tmp_path / "out"))
    cfg.model.path = "demo"  # the model and the text are checked before the device
    section, name, value = change
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(InputError) as info:
        cfg.validate()
    assert info.value.field == field


def test_a_non_empty_output_is_about_the_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(InputError) as info:
        RunConfig(output=str(tmp_path / "out")).validate()
    assert info.value.field == "output"


def test_preflight_errors_name_their_setting(demo_model, text_file, tmp_path):
    cases = [
        ({"model": str(tmp_path / "missing")}, "model.path"),
        ({"lora__rank": 100_000}, "lora.rank"),
        ({"lora__targets": ["no_such_proj"]}, "lora.targets"),
        ({"calibration__source": str(tmp_path / "missing.txt")}, "calibration.source"),
    ]
    table = tmp_path / "rows.jsonl"
    table.write_text(json.dumps({"body": "some text " * 20}) + "\n", encoding="utf-8")
    cases.append(({"calibration__source": str(table)}, "calibration.text_column"))
    for changes, field in cases:
        model = changes.pop("model", None)
        cfg = make_config(model or demo_model, tmp_path / "adapter", **changes)
        if "calibration__source" not in changes and cfg.calibration.source == "demo":
            cfg.calibration.source = str(text_file)
        with pytest.raises(InputError) as info:
            preflight(cfg)
        assert info.value.field == field, (changes, info.value.message)
    assert not (tmp_path / "adapter").exists()


def test_importing_the_engine_changes_no_process_wide_state():
    code = (
        "import logging, warnings\n"
        "names = ['bitsandbytes.backends.cpu.ops', 'bitsandbytes.autograd._functions']\n"
        "before = [(logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names]\n"
        "filters = list(warnings.filters)\n"
        "import quailora_core.init.pipeline, quailora_core.train.trainer, quailora_core.cli\n"
        "after = [(logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names]\n"
        "assert before == after, (before, after)\n"
        "assert [f for f in warnings.filters if 'is_gradient_checkpointing' in str(f[1])] == []\n"
        "from quailora_core.library_noise import quiet_library_noise\n"
        "quiet_library_noise(); quiet_library_noise()\n"
        "assert len(logging.getLogger(names[1]).filters) == 1\n"
        "assert logging.getLogger(names[0]).level == logging.ERROR\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("toml", "field", "words"),
    [
        ('[lora]\nrank = "sixteen"\n', "lora.rank", "must be a whole number"),
        ("[calibration]\nseed = 1.5\n", "calibration.seed", "must be a whole number"),
        ('[quantization]\ndouble_quant = "yes"\n', "quantization.double_quant", "must be true or false"),
        ("[lora]\ntargets = 'q_proj'\n", "lora.targets", "must be a list"),
    ],
)
def test_a_run_file_value_of_the_wrong_kind_is_refused_by_name(tmp_path, toml, field, words):
    path = tmp_path / "run.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(InputError) as info:
        RunConfig.load(path)
    assert info.value.field == field and words in info.value.message


def test_an_unknown_section_names_the_known_ones(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[modle]\npath = 'x'\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        RunConfig.load(path)
    assert "'modle'" in info.value.message and "model" in info.value.hint and "calibration" in info.value.hint
    # a number where a float is expected is fine (alpha = 16)
    path.write_text("[lora]\nalpha = 16\n", encoding="utf-8")
    assert RunConfig.load(path).lora.alpha == 16
