"""Every adapter checks itself: load it as fine-tuning will and recompute its figures.

The engine computes each layer's figures along its own path: a block-by-block forward
pass with recorded block inputs, Q from bitsandbytes' functions, its own LoRA split. An
adapter that only looks right along that path is wrong (feeding a block another block's
attention mask, or computing a Q for a layer that transformers never quantizes, both
gave confident figures for a broken adapter). So once the adapter is written, and before
it is moved into place, this module

- loads the base as the training run does (transformers + the BitsAndBytesConfig
  recorded in the adapter's own `quailora.json` + `peft.PeftModel.from_pretrained`),
  and takes each checked layer's effective weight `Q + s·B·A` from the loaded modules;
- takes that layer's inputs from a plain whole-model forward pass on the calibration
  batches (the model's own `forward`, no block runner): the full-precision model's for
  `fp`, the loaded quantized + adapter model's for `propagated`, both for `asymmetric`;
- recomputes the calibrated error before (Q alone) and after (Q + s·B·A), and compares
  both with what the run reported.

`sample` checks every target of the first and the last block and of the first block of
each kind of block (blocks the model calls with other arguments, such as Gemma's
sliding- and full-attention layers); `all` checks every layer, in as many passes as the
statistics' memory needs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quailora_core.adapter.record import AdapterRecord
from quailora_core.errors import EngineError
from quailora_core.init.stats import token_rows
from quailora_core.model.targets import Target, TargetPlan, module_weight

# the largest relative difference between a recomputed and a reported error that passes
TOLERANCE = 1e-3
# statistics (one in x in matrix per distinct layer input) kept at once; more layers
# than fit are checked in further passes over the calibration batches, each stopping after
# its last block (a pass for an early block is cheap). At 4 GiB the passes held up to 0.7 GB
# of statistics at 1.1 B parameters, the self-check's peak and a third of the run's host
# memory; now a pass holds about one block's
GRAM_BUDGET_BYTES = 256 * 2**20


@dataclass
class LayerCheck:
    name: str
    reported_before: float
    found_before: float
    reported_after: float
    found_after: float

    @property
    def difference(self) -> float:
        return max(
            _relative(self.found_before, self.reported_before), _relative(self.found_after, self.reported_after)
        )


@dataclass
class Verification:
    mode: str
    layers: list[LayerCheck] = field(default_factory=list)
    seconds: float = 0.0
    tolerance: float = TOLERANCE

    @property
    def max_difference(self) -> float:
        return max((c.difference for c in self.layers), default=0.0)

    @property
    def worst(self) -> LayerCheck | None:
        return max(self.layers, key=lambda c: c.difference, default=None)

    @property
    def passed(self) -> bool:
        return all(c.difference <= self.tolerance for c in self.layers)

    def record(self) -> dict[str, Any]:
        """What `quailora.json` keeps."""
        worst = self.worst
        return {
            "mode": self.mode,
            "passed": self.passed,
            "layers_checked": len(self.layers),
            "max_relative_difference": self.max_difference,
            "worst_layer": worst.name if worst else None,
            "tolerance": self.tolerance,
            "seconds": round(self.seconds, 3),
            "layers": [asdict(c) for c in self.layers],
        }

    def summary_line(self) -> str:
        if self.mode == "off":
            return "self-check off: the adapter was not verified"
        return (
            f"self-check: {len(self.layers)} layers recomputed from the adapter loaded as training loads it; "
            f"largest difference {self.max_difference:.1e} relative (limit {self.tolerance:.0e})"
        )


def _relative(found: float, reported: float) -> float:
    scale = max(abs(reported), abs(found))
    return 0.0 if scale == 0 else abs(found - reported) / scale


def choose_layers(mode: str, plan: TargetPlan, signatures: list[int]) -> list[Target]:
    """The layers a self-check recomputes (see the module docstring)."""
    if mode == "off":
        return []
    if mode == "all":
        return list(plan.targets)
    by_block = plan.by_block()
    blocks = sorted({0, plan.n_blocks - 1, *signatures})
    return [t for b in blocks for t in by_block.get(b, [])]


class _Inputs:
    """Forward pre-hooks that accumulate `X^T X` (and, paired with a stash of another
    model's inputs, `X_other^T X`) per distinct layer input, padding excluded.

    Not stats.GramCollector: that one pairs one module's two runs (the engine's
    asymmetric passes), this pairs the same layer in two different models, and a check
    that shares the code it checks would share its mistakes."""

    def __init__(self, modules: dict[str, nn.Module], dtype: torch.dtype, stash_for: _Inputs | None = None) -> None:
        self.dtype = dtype
        self.mask: torch.Tensor | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.cross: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self.stash: dict[str, torch.Tensor] = {}
        self.keep_stash = False
        self.partner = stash_for
        self.alias: dict[str, str] = {}  # layer -> the layer whose identical input it shares
        self._seen: dict[int, tuple[str, torch.Tensor]] = {}
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in modules.items()]

    def begin(self, mask: torch.Tensor) -> None:
        self.mask = mask.bool()
        self._seen = {}
        self.stash = {}

    def _hook(self, name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            seen = self._seen.get(id(x))  # the tensor is kept alive there, so its id is not reused
            if seen is not None and seen[1] is x and seen[0] != name:
                self.alias[name] = seen[0]
                return
            self._seen[id(x)] = (name, x)
            flat = token_rows(x, self.mask).to(self.dtype)
            if name not in self.sums:
                self.sums[name] = torch.zeros(flat.shape[1], flat.shape[1], dtype=self.dtype, device=flat.device)
                self.count[name] = 0
            self.sums[name] += flat.T @ flat
            self.count[name] += flat.shape[0]
            if self.keep_stash:
                self.stash[name] = flat
            if self.partner is not None:
                other = self.partner.stash.get(self.partner.alias.get(name, name))
                if other is not None:
                    if name not in self.cross:
                        self.cross[name] = torch.zeros_like(self.sums[name])
                    self.cross[name] += other.to(flat.device).T @ flat

        return hook

    def gram(self, name: str) -> torch.Tensor:
        key = self.alias.get(name, name)
        return self.sums[key] / max(self.count[key], 1)

    def cross_moment(self, name: str) -> torch.Tensor:
        key = self.alias.get(name, name)
        return self.cross[key] / max(self.count[key], 1)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def verify_adapter(
    mode: str,
    adapter_dir: Path,
    record: AdapterRecord,
    chosen: list[Target],
    reported: dict[str, tuple[float, float]],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int,
    device: torch.device,
    inputs: str,
    offload_folder: Path,
    trust_remote_code: bool = False,
) -> Verification:
    """Recompute `chosen` layers' calibrated errors from the adapter in `adapter_dir`
    (see the module docstring); `reported[name] = (cal_err_before, cal_err_after)`.

    Both models are loaded here from what the record says: the quantized one as training
    loads it, the full-precision one with its blocks and embeddings read from the checkpoint
    as they run (model/streamed.py; accelerate's hooks do the reading, `offload_folder` takes
    what cannot be read in place). Unless the check needs the quantized model's own forward
    pass (`propagated`, `asymmetric` inputs), only the checked layers of the quantized model
    are kept once it is loaded, so the two models are never in memory together.

    Raises EngineError when any differs by more than TOLERANCE, relative.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from quailora_core.memory import release_freed_memory
    from quailora_core.model.base import auto_class, load_quantized_base
    from quailora_core.model.streamed import load_streamed
    from quailora_core.quant.quantizer import dequantized_module_weight

    started = time.perf_counter()
    result = Verification(mode=mode)
    if not chosen:
        return result
    # float32 sums of per-batch products are ample for errors that are sums of squares; the
    # asymmetric error is a difference of such sums, which float64 keeps exact on the CPU
    acc = torch.float64 if device.type == "cpu" and inputs == "asymmetric" else torch.float32
    base = load_quantized_base(
        record.base_model.path, record, device if device.type == "cuda" else None, trust_remote_code
    )
    base.config.use_cache = False
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    loaded = model.base_model.model
    wrapped = {name for name, module in loaded.named_modules() if isinstance(module, LoraLayer)}
    if wrapped != set(record.targets):
        extra, lost = sorted(wrapped - set(record.targets)), sorted(set(record.targets) - wrapped)
        raise EngineError(
            f"Self-check failed: loaded as training loads it, the adapter wraps {len(wrapped)} layers, not the "
            f"{len(record.targets)} it was computed for ({(extra or lost)[0]} "
            f"{'is wrapped too' if extra else 'is not wrapped'}). No adapter was written.",
            "Please report this with the model's config.json.",
        )
    checked = {t.name: loaded.get_submodule(t.name) for t in chosen}
    if inputs == "fp":  # only the checked layers are needed: let the rest of the quantized model go
        del model, base, loaded
        model = None
        release_freed_memory()
    streamed = load_streamed(record.base_model.path, auto_class(record), record.quantization.dtype(), device,
                             offload_folder, trust_remote_code, offload_embeddings=True)  # fmt: skip
    fp_model = streamed.model
    for group in _groups(chosen, acc):
        fp_modules = {t.name: fp_model.get_submodule(t.name) for t in group}
        q_modules = {t.name: checked[t.name] for t in group}
        last = f"{streamed.blocks.path}.{max(t.block for t in group)}"  # the passes stop after it
        fp_last = fp_model.get_submodule(last)
        q_last = model.base_model.model.get_submodule(last) if model is not None else None
        fp_in = _Inputs(fp_modules, acc) if inputs in ("fp", "asymmetric") else None
        q_in = _Inputs(q_modules, acc, stash_for=fp_in) if inputs in ("propagated", "asymmetric") else None
        if fp_in is not None:
            fp_in.keep_stash = inputs == "asymmetric"
        try:
            with torch.no_grad():
                for start in range(0, input_ids.shape[0], batch_size):
                    ids = input_ids[start : start + batch_size].to(device)
                    mask = attention_mask[start : start + batch_size].to(device)
                    if fp_in is not None:
                        fp_in.begin(mask)
                        with _stop_after(fp_last):
                            fp_model(input_ids=ids, attention_mask=mask, use_cache=False)
                    if q_in is not None:
                        q_in.begin(mask)
                        with _stop_after(q_last):
                            model(input_ids=ids, attention_mask=mask, use_cache=False)
        finally:
            for collector in (fp_in, q_in):
                if collector is not None:
                    collector.remove()
        for t in group:
            with streamed.materialized(t.name, torch.device("cpu")) as module:
                w = module_weight(module, t).to(acc, copy=True)
            layer = q_modules[t.name]
            base_layer = layer.get_base_layer()
            q = dequantized_module_weight(base_layer) if t.quantized else module_weight(base_layer, t)
            q = q.to(w.device, acc)
            lora = _delta(layer).to(w.device, acc)
            if inputs == "asymmetric":
                before, after = _asymmetric(w, q, lora, fp_in, q_in, t.name)
            else:
                h = (fp_in if inputs == "fp" else q_in).gram(t.name).to(w.device)
                before, after = _calibrated(w, q, h), _calibrated(w, q + lora, h)
            rb, ra = reported[t.name]
            result.layers.append(LayerCheck(t.name, rb, before, ra, after))
    del model, checked, fp_model, streamed
    release_freed_memory()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result.seconds = time.perf_counter() - started
    worst = result.worst
    if not result.passed and worst is not None:
        raise EngineError(
            f"Self-check failed: loaded as training loads it, {worst.name} has calibrated error "
            f"{worst.found_before:.4e} before and {worst.found_after:.4e} after initialization; the run reported "
            f"{worst.reported_before:.4e} and {worst.reported_after:.4e} ({worst.difference:.1e} apart, limit "
            f"{TOLERANCE:.0e}). No adapter was written.",
            "This model family is not handled correctly; please report it with the model's config.json. "
            "--verify off skips the check and writes an adapter that is likely wrong.",
        )
    return result


class _StopForward(Exception):
    """Raised once the last block a pass reads has run."""


@contextlib.contextmanager
def _stop_after(block: nn.Module) -> Iterator[None]:
    """End a forward pass once `block` has run: the blocks after it and the head are not
    computed. The head's logits (batch x sequence x vocabulary, 262 MB for 8 x 256 tokens of
    a 32000-word vocabulary in float32) were the largest allocation of the self-check."""

    def stop(*_: Any) -> None:
        raise _StopForward

    handle = block.register_forward_hook(stop)
    try:
        yield
    except _StopForward:
        pass
    finally:
        handle.remove()


def _groups(chosen: list[Target], dtype: torch.dtype) -> list[list[Target]]:
    """Split the layers into passes whose statistics fit GRAM_BUDGET_BYTES (layers of one
    block stay together: they share inputs)."""
    size = torch.empty((), dtype=dtype).element_size()
    groups: list[list[Target]] = []
    current: list[Target] = []
    used = 0
    for block in sorted({t.block for t in chosen}):
        layers = [t for t in chosen if t.block == block]
        cost = sum(2 * t.in_features**2 * size for t in layers)
        if current and used + cost > GRAM_BUDGET_BYTES:
            groups.append(current)
            current, used = [], 0
        current.extend(layers)
        used += cost
    if current:
        groups.append(current)
    return groups


def _delta(layer: nn.Module) -> torch.Tensor:
    """s·B·A of the loaded peft layer (its default adapter), in (out, in) layout."""
    a = layer.lora_A["default"].weight.float()
    b = layer.lora_B["default"].weight.float()
    return layer.scaling["default"] * (b @ a)


def _calibrated(w: torch.Tensor, m: torch.Tensor, h: torch.Tensor) -> float:
    e = w - m
    return float(((e @ h) * e).sum() / ((w @ h) * w).sum())


def _asymmetric(w, q, lora, fp_in: _Inputs, q_in: _Inputs, name: str) -> tuple[float, float]:
    h_fp = fp_in.gram(name).to(w.device)
    h_q = q_in.gram(name).to(w.device)
    c = q_in.cross_moment(name).to(w.device)
    ref = float(((w @ h_fp) * w).sum())

    def err(m: torch.Tensor) -> float:
        return (ref - 2 * float(((w @ c) * m).sum()) + float(((m @ h_q) * m).sum())) / ref

    return err(q), err(q + lora)
