"""The QuAILoRA initialization run: model + calibration text -> peft adapter.

`run_init` is the one entry point the CLI, the GUI and the tests call. It validates
everything cheap first (config, model reference, targets, rank, calibration file), then
loads the full-precision model on the host and walks it block by block on the compute
device: capture block 0's inputs, then for each block collect input statistics with
hooks, quantize each target weight exactly as bitsandbytes will, solve for the LoRA
pair, emit a `LayerResult`, produce the next block's inputs and move on. Only one block
sits on the accelerator at a time, and the host keeps one block's activations.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import math
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quailora_core.adapter.record import AdapterRecord, BaseModelRecord
from quailora_core.adapter.writer import write_adapter
from quailora_core.config import RunConfig
from quailora_core.device import cpu_threads_for, resolve_device, resolve_dtype, torch_threads
from quailora_core.errors import Cancelled, EngineError, InputError, about
from quailora_core.events import CancelToken, EventCallback, Finished, LayerResult, Log, Stage, ignore_events
from quailora_core.init import solvers
from quailora_core.init.metrics import summarize
from quailora_core.init.stats import GramCollector
from quailora_core.init.verify import Verification, choose_layers, verify_adapter
from quailora_core.model.blocks import (
    BlockBatch,
    HiddenStore,
    call_signature,
    capture_block_inputs,
    find_decoder_blocks,
    run_block,
)
from quailora_core.model.fingerprint import weight_fingerprint
from quailora_core.model.info import load_model_config, meta_model, model_class, resolve_model_path
from quailora_core.model.targets import Target, TargetPlan, module_weight, plan_targets, set_module_weight
from quailora_core.quant.quantizer import quantize_dequantize
from quailora_core.quant.record import QuantRecord

# ALS stops once an iteration improves the damped objective by less than this (relative):
# by then it sits within ~1e-5 of the closed form on real layers (tests/test_engine.py).
ALS_TOL = 1e-10


@dataclass
class InitResult:
    output_dir: str
    layers: list[LayerResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Preflight:
    """What the cheap checks found: everything needed to start the heavy work."""

    model_path: str
    device: torch.device
    dtype: torch.dtype
    texts: list[str]
    plan: TargetPlan
    hidden_size: int = 0
    auto_class: str = "AutoModelForCausalLM"

    @property
    def target_names(self) -> list[str]:
        return self.plan.names


def preflight(config: RunConfig) -> Preflight:
    """All checks that need no weights: config, model folder, which layers transformers
    quantizes and peft wraps (asked of them on the model skeleton), rank vs. layer sizes,
    calibration data. Raises InputError; writes nothing."""
    from quailora_core.sources.text import load_texts

    config.validate()
    device = resolve_device(config.init.device)
    dtype = resolve_dtype(config.model.dtype, device)
    with about("model.path"):
        model_path = resolve_model_path(config.model.path)
        hf_config = load_model_config(model_path, config.model.trust_remote_code)
        auto = model_class(hf_config, config.model.trust_remote_code)
    plan = _plan(config, hf_config, dtype)
    cal = config.calibration
    with about("calibration.source", "calibration.text_column"):
        texts = load_texts(cal.source, cal.text_column, cal.dataset_config, cal.split)
    text_config = hf_config.get_text_config()
    hidden = int(getattr(text_config, "hidden_size", 0) or 0)
    return Preflight(model_path, device, dtype, texts, plan, hidden, auto.__name__)


def plan_for(config: RunConfig) -> TargetPlan:
    """The layers `config` would initialize (targets.plan_targets), from the model's config
    alone: what the app's form check shows. Raises InputError as preflight would (a device
    that is not there is the device check's to report: the plan then assumes the CPU)."""
    try:
        device = resolve_device(config.init.device)
    except InputError:
        device = torch.device("cpu")
    dtype = resolve_dtype(config.model.dtype, device)
    with about("model.path"):
        hf_config = load_model_config(resolve_model_path(config.model.path), config.model.trust_remote_code)
    return _plan(config, hf_config, dtype)


def _plan(config: RunConfig, hf_config, dtype: torch.dtype) -> TargetPlan:
    with about("model.path"):
        _refuse_prequantized(hf_config)
        skeleton = meta_model(hf_config, config.model.trust_remote_code)
    with about("lora.targets"):
        return plan_targets(skeleton, hf_config, config.lora, config.quantization, dtype)


def _refuse_prequantized(hf_config) -> None:
    """QuAILoRA needs W itself: a checkpoint stored quantized (GPTQ, AWQ, FP8, bnb) has lost it."""
    record = getattr(hf_config, "quantization_config", None) or getattr(
        hf_config.get_text_config(), "quantization_config", None
    )
    if record:
        method = record.get("quant_method", "?") if isinstance(record, dict) else getattr(record, "quant_method", "?")
        raise InputError(
            f"This checkpoint is stored quantized ({method}); QuAILoRA needs the full-precision weights.",
            "Give the original bfloat16/float16/float32 checkpoint of the model.",
        )


def run_init(
    config: RunConfig, on_event: EventCallback = ignore_events, cancel: CancelToken | None = None
) -> InitResult:
    """Initialize the LoRA adapter described by `config` and write it to `config.output`."""
    cancel = cancel or CancelToken()
    on_event(Stage("load"))
    pre = preflight(config)
    return _Run(config, pre, on_event, cancel).run()


def _check(cancel: CancelToken) -> None:
    if cancel.cancelled:
        raise Cancelled()


class _Run:
    """One initialization run (state that would otherwise be passed everywhere)."""

    def __init__(self, config: RunConfig, pre: Preflight, on_event: EventCallback, cancel: CancelToken) -> None:
        self.config, self.pre, self.emit, self.cancel = config, pre, on_event, cancel
        self.device, self.dtype = pre.device, pre.dtype
        self.work_dtype = torch.float64 if self.device.type == "cpu" else torch.float32
        self.layers: list[LayerResult] = []
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.fallbacks: list[str] = []

    # ------------------------------------------------------------------ top level
    def run(self) -> InitResult:
        """The whole run; on the CPU a small model runs single-threaded (see torch_threads)."""
        hidden = self.pre.hidden_size
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch_threads(cpu_threads_for(self.device, hidden * hidden * 2)))
            folder = None
            if self.config.init.offload_activations:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quailora-activations-")))
            self.store = HiddenStore(folder)
            return self._run()

    def _run(self) -> InitResult:
        from transformers import AutoTokenizer

        from quailora_core.model.info import AUTO_CLASSES
        from quailora_core.sources.packing import pack

        cfg, cal, plan = self.config, self.config.calibration, self.pre.plan
        started = time.perf_counter()
        for note in plan.notes:
            self.emit(Log("info", note))
        tokenizer = AutoTokenizer.from_pretrained(self.pre.model_path, trust_remote_code=cfg.model.trust_remote_code)
        data = pack(self.pre.texts, tokenizer, cal.samples, cal.seq_len, cal.heldout_samples, cal.seed)
        for warning in data.warnings:
            self.emit(Log("warning", warning))
        _check(self.cancel)
        model, info = AUTO_CLASSES[self.pre.auto_class].from_pretrained(
            self.pre.model_path,
            dtype=self.dtype,
            low_cpu_mem_usage=True,
            trust_remote_code=cfg.model.trust_remote_code,
            output_loading_info=True,
        )
        _refuse_missing_weights(info)
        model.eval()
        model.config.use_cache = False
        blocks = find_decoder_blocks(model)
        if blocks.path != plan.blocks_path or len(blocks.blocks) != plan.n_blocks:
            raise EngineError(
                f"The loaded model's blocks ({blocks.path}, {len(blocks.blocks)}) differ from its skeleton's "
                f"({plan.blocks_path}, {plan.n_blocks}).",
                "This model builds differently when loaded; please report it.",
            )
        modules = {t.name: model.get_submodule(t.name) for t in plan.targets}
        self.emit(
            Log(
                "info",
                f"{len(plan.targets)} layers in {len(blocks.blocks)} blocks; {data.input_ids.shape[0]} x "
                f"{data.input_ids.shape[1]} calibration tokens, {data.heldout_input_ids.shape[0]} held-out sequences; "
                f"device {self.device}, {str(self.dtype).removeprefix('torch.')}",
            )
        )
        bs = cfg.init.batch_size
        by_block = plan.by_block()
        with torch.no_grad():
            streams = {
                "cal": capture_block_inputs(
                    model, blocks, data.input_ids, data.attention_mask, bs, self.device, self.store
                ),
                "heldout": capture_block_inputs(
                    model, blocks, data.heldout_input_ids, data.heldout_attention_mask, bs, self.device, self.store
                )
                if data.heldout_input_ids.shape[0]
                else [],
            }
            self.signatures = call_signature(streams["cal"][0].calls)
            # asymmetric keeps a second, quantized-path stream; it starts equal to the first
            qstreams = dict(streams) if cfg.init.inputs == "asymmetric" else {}
            self.emit(Stage("calibrate", total=len(plan.targets)))
            for b, block in enumerate(blocks.blocks):
                _check(self.cancel)
                home = next(block.parameters()).device
                block.to(self.device)
                try:
                    layers = [(t, modules[t.name]) for t in by_block.get(b, [])]
                    streams, qstreams = self._block(b, block, layers, streams, qstreams)
                finally:
                    block.to(home)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        _check(self.cancel)
        summary = summarize(self.layers)
        summary["wall_seconds"] = time.perf_counter() - started
        self.emit(Stage("export"))
        architecture = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
        record = self._record(data.summary, summary, modules, architecture)
        verify_mode = cfg.init.verify

        def check(folder: Path) -> dict[str, Any]:
            """The self-check on the written folder (verify.py): nothing is moved into place
            unless the adapter, loaded as training loads it, reproduces the reported figures."""
            if verify_mode == "off":
                result = Verification("off")
            else:
                self.emit(Stage("verify"))
                _check(self.cancel)
                chosen = choose_layers(verify_mode, plan, self.signatures)
                reported = {r.name: (r.cal_err_before, r.cal_err_after) for r in self.layers}
                with torch_threads(None):
                    result = verify_adapter(
                        verify_mode, folder, AdapterRecord.load(folder), model, blocks.blocks, chosen, reported,
                        data.input_ids, data.attention_mask, bs, self.device, cfg.init.inputs,
                        cfg.model.trust_remote_code,
                    )  # fmt: skip
            self.emit(Log("info" if verify_mode != "off" else "warning", result.summary_line()))
            summary["verify"] = verify_mode
            summary["verified_layers"] = len(result.layers)
            summary["verify_max_difference"] = result.max_difference if result.layers else None
            return result.record()

        output = write_adapter(
            model, cfg.lora, self.pre.target_names, self.factors, cfg.output, cfg.overwrite, record, check
        )
        summary["wall_seconds"] = time.perf_counter() - started
        self.emit(Finished(str(output), summary))
        return InitResult(str(output), self.layers, summary)

    # ------------------------------------------------------------------ one block
    def _block(self, b, block, layers: list[tuple[Target, nn.Module]], streams, qstreams):
        """Collect statistics for this block's targets, solve them, return the next inputs.

        fp: one stream, the full-precision model's, one pass. propagated: one stream, the
        inputs the quantized + initialized model feeds each layer; asymmetric: both
        streams, paired token by token (full-precision targets, quantized-path inputs).
        In those two, the layers that read one input (q/k/v; gate/up; ...) are solved
        group by group in the order the block runs them, each on inputs computed with the
        block's earlier groups already at Q + L: exactly what the loaded quantized model
        feeds them, so the self-check can recompute it from a plain forward pass.
        """
        if self.config.init.inputs == "fp":
            collector, next_fp = self._collect(b, block, layers, streams, qstreams, layers, {}, keep=True)
            for target, module in layers:
                _check(self.cancel)
                self._layer(b, target, module, collector)
            return self._advance(streams, next_fp), {}
        asymmetric = self.config.init.inputs == "asymmetric"
        # quantized layers of this block without a LoRA run with Q on the quantized path
        frozen = [(t, block.get_submodule(t.sub)) for t in self.pre.plan.by_block("frozen").get(b, [])]
        every = list(layers) + frozen
        originals = {t.name: m.weight.data for t, m in every}
        for t, m in frozen:
            set_module_weight(m, t, quantize_dequantize(module_weight(m, t), self.config.quantization).to(m.weight.dtype))
        next_fp: dict[str, list[Any]] | None = None
        remaining = list(layers)
        try:
            while remaining:
                keep = asymmetric and next_fp is None  # the full-precision stream's next inputs
                collector, outs = self._collect(b, block, remaining, streams, qstreams, every, originals, keep)
                if keep:
                    next_fp = outs
                first = set(collector.groups()[0]) if collector.groups() else {t.sub for t, _ in remaining}
                for target, module in [(t, m) for t, m in remaining if t.sub in first]:
                    _check(self.cancel)
                    eff = self._layer(b, target, module, collector)
                    set_module_weight(module, target, eff.to(module.weight.dtype))
                remaining = [(t, m) for t, m in remaining if t.sub not in first]
            # the block as the quantized + initialized model runs it: the next quantized-path inputs
            quantized = qstreams if asymmetric else streams
            new_q = {k: [run_block(block, b, qb, self.store) for qb in v] for k, v in quantized.items()}
        finally:
            for target, module in every:
                module.weight.data = originals[target.name]
        if not asymmetric:
            return self._advance(streams, new_q), {}
        return self._advance(streams, next_fp or {}), self._advance(qstreams, new_q)

    def _collect(self, b, block, layers, streams, qstreams, all_layers, originals, keep: bool):
        """One pass of the block over every batch with hooks on `layers`' inputs.

        Returns the collector and (when `keep`) the outputs of the first stream. In the
        asymmetric mode each batch runs twice: the full-precision stream with the block's
        original weights, then the quantized stream with the weights as they stand."""
        inputs = self.config.init.inputs
        collector = GramCollector({t.sub: module for t, module in layers}, self.device)
        outs_by_key: dict[str, list[Any]] = {}
        try:
            for key in ("cal", "heldout"):
                outs = []
                for i, batch in enumerate(streams[key]):
                    if inputs == "asymmetric":
                        current = {t.name: m.weight.data for t, m in all_layers}
                        for t, m in all_layers:
                            m.weight.data = originals[t.name]
                        collector.begin(batch.token_mask, key, mode="stash")
                        out = run_block(block, b, batch, self.store)
                        for t, m in all_layers:
                            m.weight.data = current[t.name]
                        collector.begin(batch.token_mask, key, mode="cross")
                        self.store.drop(run_block(block, b, qstreams[key][i], self.store))
                    else:
                        collector.begin(batch.token_mask, key)
                        out = run_block(block, b, batch, self.store)
                    if keep:
                        outs.append(out)
                    else:
                        self.store.drop(out)
                outs_by_key[key] = outs
        finally:
            collector.remove()
        return collector, outs_by_key

    def _advance(self, old: dict[str, list[BlockBatch]], hidden: dict[str, list[Any]]) -> dict[str, list[BlockBatch]]:
        """The next block's input batches; the old hidden states are released."""
        new = {k: _with_hidden(old[k], v) for k, v in hidden.items()}
        for batches in old.values():
            for batch in batches:
                self.store.drop(batch.hidden)
        return new

    # ------------------------------------------------------------------ one layer
    def _layer(self, b: int, target: Target, module: nn.Module, collector: GramCollector) -> torch.Tensor:
        """Quantize, solve and report one layer; returns its effective weight Q + L.

        A target that transformers leaves in full precision has Q = W: no error, and the
        solve then gives L = 0 (a plain LoRA start)."""
        cfg = self.config
        t0 = time.perf_counter()
        full, sub = target.name, target.sub
        w_load = module_weight(module, target)
        if not torch.isfinite(w_load).all():
            raise EngineError(
                f"{full} has NaN or Inf weights: no adapter can be computed for it.",
                "The checkpoint is damaged or comes from a diverged training run; use another checkpoint.",
            )
        if target.quantized:
            q = quantize_dequantize(w_load, cfg.quantization).to(self.work_dtype)
        else:
            q = w_load.to(self.work_dtype)
        w = w_load.to(self.work_dtype)
        e = w - q
        method, rank, damping = cfg.init.method, cfg.lora.rank, cfg.init.damping
        h = collector.gram(sub, "cal")
        h_ho = collector.gram(sub, "heldout")
        if h is None:
            raise EngineError(f"No calibration inputs reached {full}.", "Check the calibration data.")
        if not torch.isfinite(h).all() or (h_ho is not None and not torch.isfinite(h_ho).all()):
            raise EngineError(
                f"The calibration inputs of {full} contain NaN or Inf (an earlier layer overflows).",
                "Load the model in float32 or bfloat16 (--dtype), or check the weights of the blocks before it.",
            )
        h = h.to(self.work_dtype)
        h_ho = h_ho.to(self.work_dtype) if h_ho is not None else None
        if cfg.init.inputs == "asymmetric":
            h_fp = collector.gram(sub, "fp:cal").to(self.work_dtype)
            cross = collector.cross(sub, "cal").to(self.work_dtype)
            with torch_threads(cpu_threads_for(self.device, e.numel())):
                lora, used, warning = _asymmetric(method, w, q, e, h, cross, rank, damping, cfg.init.als_iters)
            metrics = _asymmetric_errors(w, q, lora, h_fp, h, cross)
            if h_ho is not None:
                ho = _asymmetric_errors(
                    w,
                    q,
                    lora,
                    collector.gram(sub, "fp:heldout").to(self.work_dtype),
                    h_ho,
                    collector.cross(sub, "heldout").to(self.work_dtype),
                )
                metrics["heldout_err_before"], metrics["heldout_err_after"] = ho["cal_err_before"], ho["cal_err_after"]
        else:
            with torch_threads(cpu_threads_for(self.device, e.numel())):
                lora, used, warning = solvers.safe_solve(method, e, h, rank, damping, cfg.init.als_iters, tol=ALS_TOL)
            metrics = solvers.relative_errors(w, e, lora, h, h_ho)
        if not all(math.isfinite(float(v)) for k, v in metrics.items() if not k.startswith("heldout")):
            raise EngineError(f"The solve for {full} gave non-finite errors: no adapter was written.",
                              "Try more damping (--damping 0.1) or float32 weights (--dtype float32).")  # fmt: skip
        if warning:
            self.fallbacks.append(full)
            self.emit(Log("warning", f"{full}: {warning}"))
        if lora is not None and float(torch.linalg.norm(lora)) > 0:
            a, bmat = solvers.split_lora(lora, cfg.lora.scaling, rank)
            self.factors[full] = (a.cpu(), bmat.cpu())
            effective = q + cfg.lora.scaling * (bmat.to(self.work_dtype) @ a.to(self.work_dtype))
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

    # ------------------------------------------------------------------ record
    def _record(self, cal_summary: dict[str, Any], summary: dict[str, Any], modules, architecture: str) -> AdapterRecord:
        cfg, plan = self.config, self.pre.plan
        first_target = plan.targets[0]
        first = modules[first_target.name].weight.data  # as stored in the checkpoint (Conv1D: in x out)
        versions = {}
        for pkg in ("quailora", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[pkg] = importlib.metadata.version(pkg)
        base = BaseModelRecord(self.pre.model_path, cfg.model.path, architecture, self.pre.auto_class,
                               weight_fingerprint(first), first_target.name)  # fmt: skip
        return AdapterRecord(
            base_model=base,
            quantization=QuantRecord.of(cfg.quantization, self.dtype),
            targets=self.pre.target_names,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            lora={**asdict(cfg.lora), "scaling": cfg.lora.scaling},
            init={**asdict(cfg.init), "device": str(self.device)},
            calibration={**asdict(cfg.calibration), **cal_summary},
            full_precision_targets=[t.name for t in plan.targets if not t.quantized],
            skipped_layers=[{"name": n, "reason": r} for n, r in plan.skipped],
            notes=list(plan.notes),
            fallback_layers=self.fallbacks,
            summary=summary,
            layers=[asdict(r) for r in self.layers],
            versions=versions,
            python=platform.python_version(),
            run_config=cfg.to_dict(),
        )


def _with_hidden(batches: list[BlockBatch], hidden: list[Any]) -> list[BlockBatch]:
    return [bt.with_hidden(h) for bt, h in zip(batches, hidden, strict=True)]


def _refuse_missing_weights(info: dict[str, Any]) -> None:
    """A checkpoint that lacks weights the model needs (a BERT saved without its LM head,
    loaded as a causal LM) gets them randomly initialized by transformers: the adapter
    would fit noise, and a 4-bit load of such layers cannot be trained. Refuse it."""
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise InputError(
            f"The checkpoint does not store {len(missing)} weight(s) this model needs (e.g. {missing[0]}); "
            "transformers would initialize them randomly.",
            "Give a checkpoint saved for causal language modelling (its *ForCausalLM or "
            "*ForConditionalGeneration class).",
        )


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
    return solvers.safe_solve(method, l0, h_q, rank, damping, iters, tol=ALS_TOL)


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
