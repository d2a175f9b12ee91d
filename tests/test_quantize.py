"""Q is bit for bit what transformers + BitsAndBytesConfig build for training."""

from __future__ import annotations

import pytest
import torch
from tiny_models import save_tiny
from transformers import AutoModelForCausalLM

from quailora_core.config import QuantConfig
from quailora_core.quant.quantizer import bnb_config, dequantized_module_weight, quantize_dequantize

SETTINGS = [
    QuantConfig(bits=4, quant_type="nf4", double_quant=True),
    QuantConfig(bits=4, quant_type="nf4", double_quant=False),
    QuantConfig(bits=4, quant_type="fp4", double_quant=True),
    QuantConfig(bits=4, quant_type="fp4", double_quant=False),
    QuantConfig(bits=8),
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("q", SETTINGS, ids=lambda q: f"{q.bits}bit-{q.quant_type}-dq{int(q.double_quant)}")
def test_engine_q_matches_what_transformers_loads(tiny_llama, q, dtype):
    full = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype)
    quant = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype, quantization_config=bnb_config(q, dtype))
    full_modules = dict(full.named_modules())
    compared = 0
    for name, module in quant.named_modules():
        if not name.startswith("model.layers.") or not hasattr(module, "weight") or module.weight.ndim != 2:
            continue
        expected = dequantized_module_weight(module)
        ours = quantize_dequantize(full_modules[name].weight.data, q)
        assert ours.dtype == expected.dtype, name
        assert torch.equal(ours, expected), f"{name}: engine Q differs from the bitsandbytes module"
        compared += 1
    assert compared == 2 * 7  # every targeted linear of both blocks


def test_quantization_error_is_real_and_smaller_at_8_bit(tiny_llama):
    full = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    w = full.model.layers[0].mlp.down_proj.weight.data
    err4 = (w - quantize_dequantize(w, QuantConfig(bits=4))).norm() / w.norm()
    err8 = (w - quantize_dequantize(w, QuantConfig(bits=8))).norm() / w.norm()
    assert 0 < err8 < err4 < 0.2


def test_training_an_8bit_layer_logs_no_per_step_noise(tmp_path):
    """A user's training log must not fill with one bitsandbytes "inputs will be cast" line per
    forward of an 8-bit layer, nor with transformers' deprecation warning that peft triggers;
    bitsandbytes' other warnings still get through. Run in a fresh interpreter, as a training
    process starts (every entry point, the training child's too, calls `quiet_library_noise()`
    first; importing the engine alone changes nothing: tests/test_config.py)."""
    import subprocess
    import sys

    model = save_tiny("llama", tmp_path / "model")
    code = f"""
import logging, torch
from quailora_core.library_noise import quiet_library_noise
quiet_library_noise()
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
logging.basicConfig(level=logging.WARNING)
m = AutoModelForCausalLM.from_pretrained({str(model)!r}, dtype=torch.float32,
                                         quantization_config=BitsAndBytesConfig(load_in_8bit=True))
m = get_peft_model(m, LoraConfig(r=2, target_modules="all-linear"))
x = torch.randint(0, 100, (2, 8))
for _ in range(3):
    m(input_ids=x, labels=x).loss.backward()
logging.getLogger("bitsandbytes.autograd._functions").warning("some other bitsandbytes warning")
print("trained")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "trained" in run.stdout, run.stderr[-2000:]
    assert "inputs will be cast" not in run.stderr
    assert "is_gradient_checkpointing" not in run.stderr
    assert "some other bitsandbytes warning" in run.stderr
