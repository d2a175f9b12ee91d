"""The QuAILoRA initialization run: model + calibration text -> peft adapter.

`run_init(config, on_event, cancel)` is the one entry point the CLI, the GUI and the tests
call. This module only orchestrates: `preflight` (every check that needs no weights), then
load the full-precision model, capture what each decoder block receives
(`activations`), walk the blocks with the run's input strategy (`strategies`: fp,
propagated, asymmetric), which solves each layer (`layer`), and write the adapter with its
record, self-checked (`verify`) before it is renamed into place. Only one block sits on
the accelerator at a time, and the host keeps one block's activations.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from quailora_core.adapter.record import AdapterRecord, BaseModelRecord
from quailora_core.adapter.writer import write_adapter
from quailora_core.config import RunConfig
from quailora_core.device import cpu_threads_for, torch_threads
from quailora_core.errors import Cancelled, EngineError
from quailora_core.events import CancelToken, EventCallback, Finished, LayerResult, Log, Stage, ignore_events
from quailora_core.init.activations import HiddenStore, call_signature, capture_block_inputs
from quailora_core.init.layer import LayerSolver
from quailora_core.init.metrics import summarize
from quailora_core.init.overfitting import overfitting, token_shortfall
from quailora_core.init.preflight import Preflight, plan_for, preflight, refuse_missing_weights
from quailora_core.init.strategies import STRATEGIES, Walk
from quailora_core.init.verify import Verification, choose_layers, verify_adapter
from quailora_core.model.blocks import find_decoder_blocks
from quailora_core.model.fingerprint import weight_fingerprint
from quailora_core.quant.record import QuantRecord

__all__ = ["InitResult", "plan_for", "preflight", "run_init"]


@dataclass
class InitResult:
    output_dir: str
    layers: list[LayerResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


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
        self.solver = LayerSolver(config, pre.device, on_event)

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
            walk = Walk(self.config, self.pre.plan, self.device, self.store, lambda: _check(self.cancel),
                        self.solver.solve)  # fmt: skip
            self.strategy = self.solver.strategy = STRATEGIES[self.config.init.inputs](walk)
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
        tokens = int(data.attention_mask.sum())
        shortfall = token_shortfall(tokens, [t.in_features for t in plan.targets], cal.seq_len)
        if shortfall:
            self.emit(Log("warning", shortfall))
        _check(self.cancel)
        model, info = AUTO_CLASSES[self.pre.auto_class].from_pretrained(
            self.pre.model_path,
            dtype=self.dtype,
            low_cpu_mem_usage=True,
            trust_remote_code=cfg.model.trust_remote_code,
            output_loading_info=True,
        )
        refuse_missing_weights(info)
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
            # a paired strategy keeps a second, quantized-path stream; it starts equal to the first
            qstreams = dict(streams) if self.strategy.paired else {}
            self.emit(Stage("calibrate", total=len(plan.targets)))
            for b, block in enumerate(blocks.blocks):
                _check(self.cancel)
                home = next(block.parameters()).device
                block.to(self.device)
                try:
                    layers = [(t, modules[t.name]) for t in by_block.get(b, [])]
                    streams, qstreams = self.strategy.block(b, block, layers, streams, qstreams)
                finally:
                    block.to(home)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        _check(self.cancel)
        summary = summarize(self.solver.layers)
        summary["overfitting"] = overfitting(self.solver.layers, tokens, cal.seq_len)
        if summary["overfitting"]:
            self.emit(Log("warning", summary["overfitting"]))
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
                reported = {r.name: (r.cal_err_before, r.cal_err_after) for r in self.solver.layers}
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
            model, cfg.lora, self.pre.target_names, self.solver.factors, cfg.output, cfg.overwrite, record, check
        )
        summary["wall_seconds"] = time.perf_counter() - started
        self.emit(Finished(str(output), summary))
        return InitResult(str(output), self.solver.layers, summary)

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
            fallback_layers=self.solver.fallbacks,
            summary=summary,
            layers=[asdict(r) for r in self.solver.layers],
            versions=versions,
            python=platform.python_version(),
            run_config=cfg.to_dict(),
        )
