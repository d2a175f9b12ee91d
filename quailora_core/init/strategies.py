"""Where each layer's calibration inputs come from: the input strategies, registered by name.

`fp` (the paper's setting) collects every layer's statistics from the full-precision model
in one pass. `propagated` feeds each layer what the quantized and already initialized
model feeds it; `asymmetric` keeps both streams, paired token by token: the target is the
full-precision layer on full-precision inputs, the inputs are the quantized path's. In
those two, the layers that read one input (q/k/v; gate/up; ...) are solved group by group
in the order the block runs them, each on inputs computed with the block's earlier groups
already at Q + L: exactly what the loaded quantized model feeds them, so the self-check
can recompute it from a plain forward pass.

A strategy walks one block (`block`) and says how a layer's correction is solved on its
statistics (`correction`); the pipeline only picks one by name (`STRATEGIES[inputs]`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quailora_core.config import RunConfig
from quailora_core.device import cpu_threads_for, torch_threads
from quailora_core.init import solvers
from quailora_core.init.activations import BlockBatch, HiddenStore, run_block
from quailora_core.init.stats import GramCollector
from quailora_core.model.targets import Target, TargetPlan, module_weight, set_module_weight
from quailora_core.quant.quantizer import quantize_dequantize

Streams = dict[str, list[BlockBatch]]  # "cal" / "heldout" -> one BlockBatch per batch
Layers = list[tuple[Target, nn.Module]]


@dataclass
class Walk:
    """What a strategy needs from the run: settings, the plan, where activations live, and
    the layer solver (`solve(b, target, module, collector) -> Q + L`)."""

    config: RunConfig
    plan: TargetPlan
    device: torch.device
    store: HiddenStore
    check: Callable[[], None]  # raises Cancelled when the run was cancelled
    solve: Callable[[int, Target, nn.Module, GramCollector], torch.Tensor]


class InputStrategy:
    name = ""
    paired = False  # keeps a second, quantized-path stream beside the full-precision one

    def __init__(self, walk: Walk) -> None:
        self.walk = walk

    def block(self, b: int, block: nn.Module, layers: Layers, streams: Streams, qstreams: Streams
              ) -> tuple[Streams, Streams]:  # fmt: skip
        """Collect this block's statistics, solve its layers, return the next block's inputs."""
        raise NotImplementedError

    def correction(self, method: str, w, q, e, collector: GramCollector, sub: str, work_dtype, rank: int,
                   damping: float, iters: int) -> tuple[Any, str, str | None, dict[str, float]]:  # fmt: skip
        """(L, method used, fallback warning, relative errors) of one layer: min ||(W - Q - L) X^T||.

        The damped H and its factor are made once per distinct input (`collector.derived`):
        q/k/v share one, gate/up another. The solve and the figures run in `work_dtype`
        on the statistics as accumulated (float64 on the CPU); `exact` takes its top
        singular vectors from a block Krylov space, `quailora` starts ALS from a randomized
        rank-r SVD of E instead of a full one (both as accurate as the full SVD on real
        layers: tests/test_solve_precision.py)."""
        gram = collector.derived(sub, "cal", ("damped", damping, work_dtype),
                                 lambda h: solvers.DampedGram(h, damping, dtype=work_dtype))  # fmt: skip
        h_ho = collector.derived(sub, "heldout", ("as", work_dtype), lambda m: m.to(work_dtype))
        with torch_threads(cpu_threads_for(self.walk.device, e.numel())):
            lora, used, warning = solvers.safe_solve(
                method, e, gram, rank, damping, iters, tol=solvers.ALS_TOL, dtype=work_dtype, randomized=True,
                krylov=solvers.KRYLOV_DEPTH,
            )  # fmt: skip
            metrics = solvers.relative_errors(w, e, lora, gram, h_ho, rank=rank, dtype=work_dtype)
        return lora, used, warning, metrics

    # ------------------------------------------------------------------ shared steps
    def collect(self, b, block, layers: Layers, streams, qstreams, all_layers: Layers, originals, keep: bool):
        """One pass of the block over every batch with hooks on `layers`' inputs.

        Returns the collector and (when `keep`) the outputs of the first stream. With
        paired streams each batch runs twice: the full-precision stream with the block's
        original weights, then the quantized stream with the weights as they stand."""
        store = self.walk.store
        collector = GramCollector({t.sub: module for t, module in layers}, self.walk.device, self.paired)
        outs_by_key: dict[str, list[Any]] = {}
        try:
            for key in ("cal", "heldout"):
                outs = []
                for i, batch in enumerate(streams[key]):
                    if self.paired:
                        current = {t.name: m.weight.data for t, m in all_layers}
                        for t, m in all_layers:
                            m.weight.data = originals[t.name]
                        collector.begin(batch.token_mask, key, mode="stash")
                        out = run_block(block, b, batch, store)
                        for t, m in all_layers:
                            m.weight.data = current[t.name]
                        collector.begin(batch.token_mask, key, mode="cross")
                        store.drop(run_block(block, b, qstreams[key][i], store))
                    else:
                        collector.begin(batch.token_mask, key)
                        out = run_block(block, b, batch, store)
                    if keep:
                        outs.append(out)
                    else:
                        store.drop(out)
                outs_by_key[key] = outs
        finally:
            collector.remove()
        return collector, outs_by_key

    def advance(self, old: Streams, hidden: dict[str, list[Any]]) -> Streams:
        """The next block's input batches; the old hidden states are released."""
        new = {k: [bt.with_hidden(h) for bt, h in zip(old[k], v, strict=True)] for k, v in hidden.items()}
        for batches in old.values():
            for batch in batches:
                self.walk.store.drop(batch.hidden)
        return new


STRATEGIES: dict[str, type[InputStrategy]] = {}


def register(cls: type[InputStrategy]) -> type[InputStrategy]:
    STRATEGIES[cls.name] = cls
    return cls


@register
class FullPrecision(InputStrategy):
    """One stream, the full-precision model's, one pass per block."""

    name = "fp"

    def block(self, b, block, layers, streams, qstreams):
        collector, next_fp = self.collect(b, block, layers, streams, qstreams, layers, {}, keep=True)
        last_reader = {collector.group_of[t.sub]: t.sub for t, _ in layers}  # the last layer of each input
        for target, module in layers:
            self.walk.check()
            self.walk.solve(b, target, module, collector)
            if last_reader[collector.group_of[target.sub]] == target.sub:
                collector.release(target.sub)  # no later layer reads this input: free its statistics
        return self.advance(streams, next_fp), {}


@register
class Propagated(InputStrategy):
    """One stream: the inputs the quantized + initialized model feeds each layer."""

    name = "propagated"

    def block(self, b, block, layers, streams, qstreams):
        walk = self.walk
        # quantized layers of this block without a LoRA run with Q on the quantized path
        frozen = [(t, block.get_submodule(t.sub)) for t in walk.plan.by_block("frozen").get(b, [])]
        every = list(layers) + frozen
        originals = {t.name: m.weight.data for t, m in every}
        for t, m in frozen:
            set_module_weight(m, t, quantize_dequantize(module_weight(m, t), walk.config.quantization).to(m.weight.dtype))
        next_fp: dict[str, list[Any]] | None = None
        remaining = list(layers)
        try:
            while remaining:
                keep = self.paired and next_fp is None  # the full-precision stream's next inputs
                collector, outs = self.collect(b, block, remaining, streams, qstreams, every, originals, keep)
                if keep:
                    next_fp = outs
                first = set(collector.groups()[0]) if collector.groups() else {t.sub for t, _ in remaining}
                for target, module in [(t, m) for t, m in remaining if t.sub in first]:
                    walk.check()
                    eff = walk.solve(b, target, module, collector)
                    set_module_weight(module, target, eff.to(module.weight.dtype))
                remaining = [(t, m) for t, m in remaining if t.sub not in first]
            # the block as the quantized + initialized model runs it: the next quantized-path inputs
            quantized = qstreams if self.paired else streams
            new_q = {k: [run_block(block, b, qb, walk.store) for qb in v] for k, v in quantized.items()}
        finally:
            for target, module in every:
                module.weight.data = originals[target.name]
        if not self.paired:
            return self.advance(streams, new_q), {}
        return self.advance(streams, next_fp or {}), self.advance(qstreams, new_q)


@register
class Asymmetric(Propagated):
    """Both streams: full-precision targets on quantized-path inputs (ALGORITHM.md)."""

    name = "asymmetric"
    paired = True

    def correction(self, method, w, q, e, collector, sub, work_dtype, rank, damping, iters):
        """As the base class's, on (L0, H_q); this source keeps the solvers' default precision
        (float64 on the CPU: L0 = (W C - Q H_q) H_q^-1 is a solve with H_q itself, whose
        conditioning float32 would feel) and shares only the factor of the damped H_q."""
        work_dtype = torch.float64 if e.device.type == "cpu" else torch.float32
        w, q, e = w.to(work_dtype), q.to(work_dtype), e.to(work_dtype)
        h = collector.gram(sub, "cal").to(work_dtype)
        gram = collector.derived(sub, "cal", ("damped", damping, work_dtype),
                                 lambda m: solvers.DampedGram(m, damping, dtype=work_dtype))  # fmt: skip
        h_fp = collector.gram(sub, "fp:cal").to(work_dtype)
        cross = collector.cross(sub, "cal").to(work_dtype)
        with torch_threads(cpu_threads_for(self.walk.device, e.numel())):
            lora, used, warning = _asymmetric(method, w, q, e, gram, cross, rank, damping, iters)
        metrics = _asymmetric_errors(w, q, lora, h_fp, h, cross)
        h_ho = collector.gram(sub, "heldout")
        if h_ho is not None:
            ho = _asymmetric_errors(
                w, q, lora, collector.gram(sub, "fp:heldout").to(work_dtype), h_ho.to(work_dtype),
                collector.cross(sub, "heldout").to(work_dtype),
            )  # fmt: skip
            metrics["heldout_err_before"], metrics["heldout_err_after"] = ho["cal_err_before"], ho["cal_err_after"]
        return lora, used, warning, metrics


def _asymmetric(method, w, q, e, h_q, cross, rank, damping, iters):
    """min ||W X_fp^T - (Q + L) X_q^T||: the objective equals tr((L - L0) H_q (L - L0)^T) up to a
    constant, so the chosen solver runs on (L0, H_q) (qlora and loftq ignore inputs, as always)."""
    if method in ("qlora", "loftq"):
        return solvers.safe_solve(method, e, h_q, rank, damping, iters)
    try:
        l0 = solvers.asymmetric_target(w, q, h_q, cross, damping)
    except (RuntimeError, ValueError) as exc:
        lora, _, _ = solvers.safe_solve("loftq", e, h_q, rank, damping, iters)
        return lora, "loftq", f"asymmetric target failed ({exc}); fell back to loftq"
    return solvers.safe_solve(method, l0, h_q, rank, damping, iters, tol=solvers.ALS_TOL)


def _asymmetric_errors(w, q, lora, h_fp, h_q, cross) -> dict[str, float]:
    """||W X_fp^T - M X_q^T||^2 / ||W X_fp^T||^2 = (tr(W H_fp W^T) - 2 tr(W C M^T) + tr(M H_q M^T)) / tr(W H_fp W^T)."""
    ref = float(((w @ h_fp) * w).sum())

    def err(m: torch.Tensor) -> float:
        return (ref - 2 * float(((w @ cross) * m).sum()) + float(((m @ h_q) * m).sum())) / ref

    e = w - q
    after = q if lora is None else q + lora
    wn = float(torch.linalg.norm(w))
    return {
        "cal_err_before": err(q),
        "cal_err_after": err(after),
        "uncal_err_before": float(torch.linalg.norm(e)) / wn,
        "uncal_err_after": float(torch.linalg.norm(w - after)) / wn,
    }
