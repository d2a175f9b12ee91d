"""A rough estimate of a run's peak memory and time, shown before it starts.

It counts what the engine holds (the model on the host, one block plus its input and
output activations and its Gram matrices on the compute device) and the floating-point
work (block forwards, Gram products, the solver's SVD and iterations), divided by a
nominal throughput for the device. It is an order-of-magnitude guide, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from quailora_core.config import RunConfig
from quailora_core.device import resolve_device, resolve_dtype
from quailora_core.init.overfitting import token_shortfall
from quailora_core.model.info import ModelSummary, dtype_size
from quailora_core.units import size_text

# nominal sustained throughput (FLOP/s) for this kind of work
_THROUGHPUT = {"cpu": 2.0e10, "cuda": 5.0e13}


@dataclass
class RunEstimate:
    peak_memory_gb: float  # on the compute device (host memory when it is the CPU)
    host_memory_gb: float
    seconds: float
    tokens: int
    note: str
    warnings: list[str] = field(default_factory=list)  # e.g. too few calibration tokens (init/overfitting.py)


def estimate_run(config: RunConfig, summary: ModelSummary) -> RunEstimate:
    try:
        device = resolve_device(config.init.device)
    except Exception:  # the form shows the device error itself
        device = torch.device("cpu")
    dtype = resolve_dtype(config.model.dtype, device)
    elt = dtype_size(dtype)
    acc = 8 if device.type == "cpu" else 4
    cal = config.calibration
    seqs = cal.samples + cal.heldout_samples
    tokens = cal.samples * cal.seq_len
    streams = 2 if config.init.inputs == "fp" else 4  # inputs + outputs, doubled for the quantized path
    activations = seqs * cal.seq_len * summary.hidden_size * elt * streams
    shapes = list(summary.linear_shapes.values())
    block_params = sum(o * i for o, i in shapes)
    distinct_inputs = {i for _, i in shapes}
    grams = sum(i * i for i in distinct_inputs) * acc * (2 if cal.heldout_samples else 1)
    widest = max((o for o, _ in shapes), default=summary.hidden_size)
    batch_work = config.init.batch_size * cal.seq_len * max(widest, summary.intermediate_size) * elt * 4
    solver = max((o * i for o, i in shapes), default=0) * acc * 4
    device_bytes = block_params * elt + activations + grams + batch_work + solver
    model_bytes = summary.n_params * elt
    host_bytes = model_bytes + (0 if device.type == "cuda" else device_bytes)
    passes = 1 if config.init.inputs == "fp" else 3
    forward = 2.0 * block_params * summary.n_blocks * seqs * cal.seq_len * passes
    gram_flops = 2.0 * seqs * cal.seq_len * sum(i * i for i in distinct_inputs) * summary.n_blocks
    r = config.lora.rank
    per_layer = sum(o * i * min(o, i) * 4 + config.init.als_iters * o * i * r * 6 + 2 * i**3 for o, i in shapes)
    if config.init.method in ("qlora",):
        per_layer = 0
    seconds = (forward + gram_flops + per_layer * summary.n_blocks) / _THROUGHPUT[device.type]
    gb = 2**30
    return RunEstimate(
        peak_memory_gb=(host_bytes if device.type == "cpu" else device_bytes) / gb,
        host_memory_gb=host_bytes / gb,
        seconds=seconds,
        tokens=tokens,
        note=f"rough estimate for {device}: model {size_text(model_bytes)} in {str(dtype).removeprefix('torch.')}",
        warnings=[w for w in [token_shortfall(tokens, [i for _, i in shapes], cal.seq_len)] if w],
    )
