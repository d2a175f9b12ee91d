"""The conformance matrix: every model family people bring, as a tiny local model.

Each row either works, and its adapter then reproduces every reported error when loaded
as training loads it (recomputed here, independently of the engine, and by the engine's
own self-check), or is refused before any weight loads with one line saying why. The
table in README.md and docs/families.md is generated from the same rows
(`benchmarks/family_matrix.py`).
"""

from __future__ import annotations

import pytest
from helpers import make_config, read_metadata
from independent import recomputed_errors, wrapped_layers
from tiny_models import CONFIGS, FAMILIES, save_tiny

from quailora_core.errors import InputError
from quailora_core.init.pipeline import preflight, run_init

# rows that are refused, and the words that say why
REFUSED = {
    "falcon": "keeps every target of this model in full precision",
    "mamba": "peft refuses these targets",
}
VISION_LANGUAGE = {"qwen2_vl", "llava", "gemma3_vlm"}
BLOCKS = {
    "gpt2": "transformer.h", "gptj": "transformer.h", "bloom": "transformer.h",
    "gpt_neox": "gpt_neox.layers", "opt": "model.decoder.layers",
    **{k: "model.language_model.layers" for k in VISION_LANGUAGE},
}  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_model):
    root = tmp_path_factory.mktemp("families")
    return lambda kind: save_tiny(kind, root / kind, tokenizer_from=demo_model)


def test_every_family_has_a_name_for_the_table():
    assert set(FAMILIES) == set(CONFIGS)


@pytest.mark.parametrize("kind", sorted(set(CONFIGS) - set(REFUSED)))
def test_family_works_and_its_adapter_checks_out(models, tmp_path, kind):
    cfg = make_config(models(kind), tmp_path / "adapter", init__verify="all")
    result = run_init(cfg)
    meta = read_metadata(result.output_dir)
    reported = {r.name: r for r in result.layers}
    assert meta["targets"] == list(reported)
    assert all(name.startswith(BLOCKS.get(kind, "model.layers") + ".") for name in reported)
    # every target is quantized, and the initialization lowers every error
    assert meta["full_precision_targets"] == []
    for r in result.layers:
        assert 0 < r.cal_err_after < r.cal_err_before, r.name
    # the engine's own self-check loaded the adapter and recomputed every layer ...
    check = meta["verification"]
    assert check["passed"] and check["mode"] == "all" and check["layers_checked"] == len(reported)
    assert check["max_relative_difference"] < 1e-4
    # ... and so does this test, with none of the engine's code
    for name, found in recomputed_errors(cfg, result.output_dir).items():
        assert found == pytest.approx(reported[name].cal_err_after, rel=1e-4), name
    if kind in VISION_LANGUAGE:
        # the adapter is made for (and checked on) the whole multimodal model
        assert meta["base_model"]["architecture"].endswith("ForConditionalGeneration")
        assert any("outside the language model" in note for note in meta["notes"])
    # peft, loading the adapter on the quantized base, wraps exactly the initialized layers
    assert wrapped_layers(result.output_dir) == set(reported)


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_family_is_refused_before_any_weight_loads(models, tmp_path, kind):
    cfg = make_config(models(kind), tmp_path / "adapter")
    with pytest.raises(InputError, match=REFUSED[kind]) as info:
        preflight(cfg)
    assert "\n" not in info.value.one_line()
    assert not (tmp_path / "adapter").exists()


def test_moe_defaults_leave_out_scalar_gates_and_say_what_happens_to_experts(models):
    pre = preflight(make_config(models("qwen2_moe"), "unused-output"))
    leaves = {t.sub.split(".")[-1] for t in pre.plan.targets}
    assert "shared_expert_gate" not in leaves and {"q_proj", "down_proj"} <= leaves
    assert [why for _, why in pre.plan.skipped] == ["a scalar gate (1 output) cannot hold a LoRA of rank above 1"] * 2
    assert any("fused 3-D parameters" in note and "do" in note for note in pre.plan.notes)


def test_gpt2_conv1d_layers_are_targets_and_quantized(models):
    pre = preflight(make_config(models("gpt2"), "unused-output"))
    assert {t.kind for t in pre.plan.targets} == {"Conv1D"}
    assert all(t.quantized for t in pre.plan.targets)


def test_a_checkpoint_missing_weights_is_refused(models, tmp_path):
    """A checkpoint saved without its LM head (an encoder presented as a causal LM) would
    get a random head from transformers: refused, not fitted."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "headless"
    shutil.copytree(models("llama"), folder)
    weights = load_file(folder / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"does not store 1 weight\(s\) .*lm_head.weight"):
        run_init(make_config(folder, tmp_path / "adapter"))
    assert not (tmp_path / "adapter").exists()
