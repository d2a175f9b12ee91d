"""The engine end to end on the (pretrained) demo model.

The acceptance rule of ALGORITHM.md: load the base as the fine-tuning run will
(transformers + BitsAndBytesConfig + PeftModel.from_pretrained) and every targeted layer's
effective weight Q + s * B @ A must reproduce the engine's reported calibrated error to
within 1e-4 relative, with H recomputed here independently of the engine.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import make_config, read_metadata
from independent import effective_weights, independent_grams

from quailora_core.errors import Cancelled
from quailora_core.events import CancelToken, Finished, LayerResult, Stage
from quailora_core.init.pipeline import run_init


@pytest.mark.parametrize(
    "changes",
    [
        {"quantization__bits": 4, "quantization__quant_type": "nf4", "init__method": "quailora"},
        {"quantization__bits": 4, "quantization__quant_type": "fp4", "quantization__double_quant": False,
         "init__method": "exact", "lora__rslora": True},
        {"quantization__bits": 8, "init__method": "quailora"},
    ],
    ids=["nf4-quailora", "fp4-exact-rslora", "int8-quailora"],
)
def test_adapter_loaded_by_peft_reproduces_reported_error(demo_model, tmp_path, changes):
    cfg = make_config(demo_model, tmp_path / "adapter", **changes)
    events = []
    result = run_init(cfg, events.append)
    layers = {r.name: r for r in result.layers}
    weights = effective_weights(cfg, result.output_dir)
    grams = independent_grams(cfg, list(weights))
    assert set(weights) == set(layers) and len(layers) == 4 * 7
    for name, (w, eff) in weights.items():
        h = grams[name]
        d = w - eff
        measured = float((((d @ h) * d).sum() / ((w @ h) * w).sum()).detach())
        assert measured == pytest.approx(layers[name].cal_err_after, rel=1e-4), name
        assert layers[name].cal_err_after < layers[name].cal_err_before, name
    assert isinstance(events[-1], Finished) and events[-1].output_dir == result.output_dir


def test_events_stream_one_result_per_layer_in_model_order(demo_model, tmp_path):
    events = []
    result = run_init(make_config(demo_model, tmp_path / "a"), events.append)
    stages = [e.name for e in events if isinstance(e, Stage)]
    assert stages == ["load", "calibrate", "export", "verify"]
    layer_events = [e for e in events if isinstance(e, LayerResult)]
    assert [e.index for e in layer_events] == list(range(28))
    assert [e.block for e in layer_events] == sorted(e.block for e in layer_events)
    assert layer_events == result.layers
    for e in layer_events:
        assert 0 < e.cal_err_after < e.cal_err_before
        assert e.heldout_err_after < e.heldout_err_before  # the gain carries to unseen text
        assert e.uncal_err_before > 0 and e.seconds >= 0 and math.isfinite(e.uncal_err_after)


def test_qlora_keeps_the_full_error_and_loftq_minimizes_weight_error(demo_model, tmp_path):
    plain = run_init(make_config(demo_model, tmp_path / "q", init__method="qlora")).layers
    loftq = run_init(make_config(demo_model, tmp_path / "l", init__method="loftq")).layers
    for p, lq in zip(plain, loftq, strict=True):
        assert p.cal_err_after == pytest.approx(p.cal_err_before)
        assert p.uncal_err_after == pytest.approx(p.uncal_err_before)
        assert lq.uncal_err_after < p.uncal_err_after
        assert lq.cal_err_before == pytest.approx(p.cal_err_before)


def test_als_reaches_the_closed_form_on_real_layers(demo_model, tmp_path):
    als = run_init(make_config(demo_model, tmp_path / "als", init__method="quailora")).layers
    exact = run_init(make_config(demo_model, tmp_path / "ex", init__method="exact")).layers
    for a, e in zip(als, exact, strict=True):
        # both minimize the damped objective; on the reported figure they agree to 0.1%
        assert a.cal_err_after == pytest.approx(e.cal_err_after, rel=1e-3), a.name


@pytest.mark.parametrize("inputs", ["propagated", "asymmetric"])
def test_other_input_sources_give_working_adapters(demo_model, tmp_path, inputs):
    result = run_init(make_config(demo_model, tmp_path / inputs, init__inputs=inputs))
    assert len(result.layers) == 28
    for r in result.layers:
        assert math.isfinite(r.cal_err_after) and r.cal_err_after < r.cal_err_before
    meta = read_metadata(result.output_dir)
    assert meta["init"]["inputs"] == inputs


def test_cancel_stops_within_a_layer_and_leaves_nothing(demo_model, tmp_path):
    cancel = CancelToken()
    seen = []

    def on_event(event):
        if isinstance(event, LayerResult):
            seen.append(event)
            cancel.cancel()

    with pytest.raises(Cancelled):
        run_init(make_config(demo_model, tmp_path / "out"), on_event, cancel)
    assert len(seen) == 1
    assert list(tmp_path.iterdir()) == []


def test_adapter_folder_has_peft_files_metadata_and_model_card(demo_model, tmp_path):
    result = run_init(make_config(demo_model, tmp_path / "card"))
    out = Path(result.output_dir)
    assert {p.name for p in out.iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", "quailora.json", "README.md"
    }
    meta = read_metadata(out)
    assert meta["quantization"]["bnb_config"]["bnb_4bit_quant_type"] == "nf4"
    assert meta["calibration"]["samples"] == 12 and len(meta["layers"]) == 28
    assert "PeftModel.from_pretrained" in (out / "README.md").read_text()
    from safetensors.torch import load_file

    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert len(tensors) == 2 * 28


@pytest.mark.parametrize("inputs", ["fp", "propagated", "asymmetric"])
def test_offloaded_activations_give_the_same_adapter(demo_model, tmp_path, inputs, monkeypatch):
    import tempfile

    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    kept = run_init(make_config(demo_model, tmp_path / "ram", init__inputs=inputs)).layers
    seen = []
    cfg = make_config(demo_model, tmp_path / "disk", init__inputs=inputs, init__offload_activations=True)

    def watch(event):
        if isinstance(event, LayerResult):
            seen.extend(p.name for p in spill.rglob("*.pt"))

    offloaded = run_init(cfg, watch).layers
    assert seen, "activations were not written to disk"
    assert list(spill.iterdir()) == []  # the temporary folder is gone afterwards
    for a, b in zip(kept, offloaded, strict=True):
        assert a.cal_err_after == pytest.approx(b.cal_err_after, rel=1e-12)
        assert a.heldout_err_after == pytest.approx(b.heldout_err_after, rel=1e-12)


def test_nan_weights_are_refused_with_the_layer_name_and_no_adapter(demo_model, tmp_path, capsys):
    import transformers as tf
    from tiny_models import save_tiny

    from quailora_core.cli import main

    folder = save_tiny("llama", tmp_path / "tiny", tokenizer_from=demo_model)
    model = tf.AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    model.save_pretrained(folder)
    out = tmp_path / "adapter"
    code = main(["init", "--model", str(folder), "--calibration", "demo", "--samples", "4", "--seq-len", "32",
                 "--rank", "4", "--device", "cpu", "--output", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "model.layers.1.mlp.up_proj has NaN or Inf weights" in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".adapter")]
