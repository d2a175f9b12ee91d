"""One layer's initialization: quantize W exactly as bitsandbytes will, solve the correction
on the layer's input statistics, split it into peft's A and B, report a `LayerResult`.

The statistics and the objective come from the run's input strategy (`strategies.py`);
what is common to all of them (the checks on W and on the statistics, the split, the
report) is here.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from quailora_core.config import RunConfig
from quailora_core.errors import EngineError
from quailora_core.events import EventCallback, LayerResult, Log
from quailora_core.init import solvers
from quailora_core.init.stats import GramCollector
from quailora_core.init.strategies import InputStrategy
from quailora_core.model.targets import Target, module_weight
from quailora_core.quant.quantizer import quantize_dequantize


class LayerSolver:
    """Solves layer after layer; keeps what the adapter needs (A, B per layer) and the reports."""

    def __init__(self, config: RunConfig, device: torch.device, emit: EventCallback) -> None:
        self.config, self.emit = config, emit
        # float32 on every device: the solves are rank-r problems on float64 statistics, and
        # float32 changes their objective by ~1e-10 relative on real layers at 2-3x less
        # time on the CPU (tests/test_solve_precision.py bounds it); the asymmetric source keeps float64
        self.work_dtype = torch.float32
        self.strategy: InputStrategy | None = None  # set by the pipeline once the walk exists
        self.layers: list[LayerResult] = []
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.fallbacks: list[str] = []

    def solve(self, b: int, target: Target, module: nn.Module, collector: GramCollector) -> torch.Tensor:
        """Quantize, solve and report one layer; returns its effective weight Q + L.

        A target that transformers leaves in full precision has Q = W: no error, and the
        solve then gives L = 0 (a plain LoRA start)."""
        cfg, work = self.config, self.work_dtype
        t0 = time.perf_counter()
        full, sub = target.name, target.sub
        w_load = module_weight(module, target)
        if not torch.isfinite(w_load).all():
            raise EngineError(
                f"{full} has NaN or Inf weights: no adapter can be computed for it.",
                "The checkpoint is damaged or comes from a diverged training run; use another checkpoint.",
            )
        q = quantize_dequantize(w_load, cfg.quantization).to(work) if target.quantized else w_load.to(work)
        w = w_load.to(work)
        e = w - q
        h = collector.gram(sub, "cal")
        if h is None:
            raise EngineError(f"No calibration inputs reached {full}.", "Check the calibration data.")
        finite = [collector.derived(sub, key, "finite", lambda m: bool(torch.isfinite(m).all())) for key in ("cal", "heldout")]  # fmt: skip
        if finite[0] is False or finite[1] is False:  # once per distinct input (None: no held-out stream)
            raise EngineError(
                f"The calibration inputs of {full} contain NaN or Inf (an earlier layer overflows).",
                "Load the model in float32 or bfloat16 (--dtype), or check the weights of the blocks before it.",
            )
        rank = cfg.lora.rank
        lora, used, warning, metrics = self.strategy.correction(
            cfg.init.method, w, q, e, collector, sub, work, rank, cfg.init.damping, cfg.init.als_iters
        )
        if not all(math.isfinite(float(v)) for k, v in metrics.items() if not k.startswith("heldout")):
            raise EngineError(f"The solve for {full} gave non-finite errors: no adapter was written.",
                              "Try more damping (--damping 0.1) or float32 weights (--dtype float32).")  # fmt: skip
        if warning:
            self.fallbacks.append(full)
            self.emit(Log("warning", f"{full}: {warning}"))
        if lora is not None and float(torch.linalg.norm(lora)) > 0:
            a, bmat = solvers.split_lora(lora, cfg.lora.scaling, rank)
            self.factors[full] = (a.cpu(), bmat.cpu())
            effective = q + cfg.lora.scaling * (bmat.to(work) @ a.to(work))
        else:
            effective = q
        result = LayerResult(
            index=len(self.layers),
            name=full,
            block=b,
            module=sub,
            shape=(int(w.shape[0]), int(w.shape[1])),
            cal_err_before=float(metrics["cal_err_before"]),
            cal_err_after=float(metrics["cal_err_after"]),
            uncal_err_before=float(metrics["uncal_err_before"]),
            uncal_err_after=float(metrics["uncal_err_after"]),
            heldout_err_before=float(metrics.get("heldout_err_before", float("nan"))),
            heldout_err_after=float(metrics.get("heldout_err_after", float("nan"))),
            seconds=time.perf_counter() - t0,
            method=used,
        )
        self.layers.append(result)
        self.emit(result)
        return effective
