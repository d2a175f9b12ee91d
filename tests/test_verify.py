"""The self-check catches the wrong adapters it exists for, and costs little when all is well.

Each failure here is one that shipped before in some form: a Q computed for a layer that
transformers never quantizes (Falcon), and blocks fed another block's attention mask and
rotary tables (Gemma 2/3). The check must fail such runs loudly and leave nothing on disk.
"""

from __future__ import annotations

import pytest
from helpers import make_config, read_metadata
from tiny_models import save_tiny

import quailora_core.init.layer as layer
import quailora_core.init.pipeline as engine
from quailora_core.cli import main
from quailora_core.errors import EngineError
from quailora_core.events import Log
from quailora_core.init.verify import choose_layers
from quailora_core.model.targets import Target, TargetPlan


def _nothing_left(tmp_path, name="adapter"):
    return not (tmp_path / name).exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}")]


def test_a_q_that_training_never_sees_fails_the_run(demo_model, tmp_path, monkeypatch):
    # as if the engine believed a layer is quantized that transformers keeps in full precision
    monkeypatch.setattr(layer, "quantize_dequantize", lambda w, q: w + 0.01 * w.abs().mean() * w.sign())
    with pytest.raises(EngineError, match="Self-check failed") as info:
        engine.run_init(make_config(demo_model, tmp_path / "adapter"))
    assert "No adapter was written" in info.value.message
    assert _nothing_left(tmp_path)


def test_blocks_fed_block_0s_arguments_fail_the_run(demo_model, tmp_path, monkeypatch):
    model = save_tiny("gemma3_text", tmp_path / "gemma3", tokenizer_from=demo_model)
    real = engine.capture_block_inputs

    def block_0_for_all(*args, **kwargs):
        batches = real(*args, **kwargs)
        for batch in batches:
            batch.calls = [batch.calls[0]] * len(batch.calls)
        return batches

    monkeypatch.setattr(engine, "capture_block_inputs", block_0_for_all)
    with pytest.raises(EngineError, match=r"Self-check failed: .*model\.layers\.[12]\."):
        engine.run_init(make_config(model, tmp_path / "adapter"))
    assert _nothing_left(tmp_path)


def test_the_check_result_is_recorded_and_printed(demo_model, tmp_path, capsys):
    out = tmp_path / "adapter"
    code = main(["init", "--model", "demo", "--calibration", "demo", "--samples", "4", "--seq-len", "32",
                 "--heldout", "1", "--rank", "4", "--device", "cpu", "--output", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    check = read_metadata(out)["verification"]
    # sample: the first and the last of the demo model's 4 blocks, all 7 targets each
    assert check["passed"] and check["mode"] == "sample" and check["layers_checked"] == 14
    assert "self-check: 14 layers recomputed" in err


def test_verify_off_is_recorded_and_warned(demo_model, tmp_path):
    logs = []
    cfg = make_config(demo_model, tmp_path / "adapter", init__verify="off")
    result = engine.run_init(cfg, lambda e: logs.append(e) if isinstance(e, Log) else None)
    assert read_metadata(result.output_dir)["verification"]["mode"] == "off"
    assert result.summary["verified_layers"] == 0
    assert any(e.level == "warning" and "not verified" in e.message for e in logs)


def test_sample_covers_first_last_and_each_kind_of_block():
    targets = [Target(f"m.layers.{b}.q", b, "q", 8, 8, "Linear", True) for b in range(6)]
    plan = TargetPlan("m.layers", 6, targets)
    # blocks 2 and 4 are called with other arguments than block 0 (say, full attention)
    chosen = choose_layers("sample", plan, [0, 0, 2, 0, 2, 0])
    assert [t.block for t in chosen] == [0, 2, 5]
    assert len(choose_layers("all", plan, [0] * 6)) == 6 and choose_layers("off", plan, [0] * 6) == []


@pytest.mark.parametrize("inputs", ["propagated", "asymmetric"])
def test_quantized_layers_without_a_lora_run_with_q_on_the_quantized_path(demo_model, tmp_path, inputs):
    """With only q_proj and v_proj targeted, the other linear layers are still 4-bit in the
    model training loads: the quantized-path inputs must see their Q, which the check holds."""
    cfg = make_config(demo_model, tmp_path / "adapter", init__inputs=inputs, init__verify="all",
                      lora__targets=["q_proj", "v_proj"])  # fmt: skip
    result = engine.run_init(cfg)
    check = read_metadata(result.output_dir)["verification"]
    assert check["passed"] and check["layers_checked"] == 8
    assert check["max_relative_difference"] < 1e-4
