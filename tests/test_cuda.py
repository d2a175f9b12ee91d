"""The CUDA paths on the demo model: the engine, training and `quailora eval` on a GPU.

Every test here is marked `cuda` and skipped without a CUDA GPU; `python -m pytest -m cuda`
selects them (with the other CUDA tests, e.g. tests/test_solvers.py), and
benchmarks/gpu_check.sh runs them as its first step. They check what the CPU tests check,
on the GPU: the engine's self-check passes (the adapter, loaded as training loads it,
reproduces the reported errors), training picks bf16 and paged 8-bit AdamW and reports GPU
memory, and evaluation runs on the GPU with finite perplexities.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import make_config

from quailora_core.events import TrainStep
from quailora_core.init.pipeline import run_init

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def cuda_adapter(demo_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cuda-adapter") / "adapter"
    run_init(make_config(demo_model, out, init__device="cuda"))
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_on_cuda_passes_its_self_check_on_every_layer(demo_model, tmp_path, dtype):
    cfg = make_config(demo_model, tmp_path / "a", init__device="cuda", init__verify="all", model__dtype=dtype)
    result = run_init(cfg)
    assert len(result.layers) == 28
    for r in result.layers:
        assert math.isfinite(r.cal_err_after) and r.cal_err_after < r.cal_err_before, r.name
    assert result.summary["verified_layers"] == 28
    assert result.summary["verify_max_difference"] < 1e-3
    meta = json.loads((Path(result.output_dir) / "quailora.json").read_text())
    assert meta["quantization"]["load_dtype"] == dtype


def test_engine_on_cuda_agrees_with_the_cpu(demo_model, tmp_path):
    cpu = run_init(make_config(demo_model, tmp_path / "cpu", init__verify="off")).layers
    gpu = run_init(make_config(demo_model, tmp_path / "gpu", init__device="cuda", init__verify="off")).layers
    for c, g in zip(cpu, gpu, strict=True):
        assert g.name == c.name
        assert g.cal_err_before == pytest.approx(c.cal_err_before, rel=1e-3), c.name
        assert g.cal_err_after == pytest.approx(c.cal_err_after, rel=2e-2), c.name


def test_training_on_cuda_uses_bf16_paged_adamw_8bit_and_reports_gpu_memory(demo_model, cuda_adapter, tmp_path):
    from quailora_core.train.trainer import run_train

    text = tmp_path / "repeated.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    cfg = make_config(demo_model, cuda_adapter)
    t = cfg.train
    t.data, t.output = str(text), str(tmp_path / "out")
    t.seq_len, t.batch_size, t.max_steps = 32, 2, 4
    t.eval_interval, t.save_interval, t.validation_fraction = 4, 4, 0.25
    events = []
    result = run_train(cfg, events.append)
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert [e.step for e in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(e.loss) and e.gpu_memory_gb is not None and e.gpu_memory_gb > 0 for e in steps)
    metrics = json.loads((Path(result.output_dir) / "metrics.json").read_text())
    assert metrics["device"] == "cuda" and metrics["optim"] == "paged_adamw_8bit"
    assert metrics["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert math.isfinite(metrics["eval_loss"])


def test_eval_on_cuda(cuda_adapter):
    from quailora_core.evaluate import evaluate_adapter

    report = evaluate_adapter(str(cuda_adapter), "demo", samples=4, seq_len=64, device="cuda")
    assert report.device.startswith("cuda")
    for loss in (report.fp_loss, report.quantized_loss, report.adapter_loss):
        assert math.isfinite(loss)
