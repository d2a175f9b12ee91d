"""The QuAILoRA initialization run: model + calibration text -> peft adapter.

`run_init(config, on_event, cancel)` is the one entry point the CLI, the GUI and the tests
call. This module only orchestrates: `preflight` (every check that needs no weights), then
load the full-precision model with its blocks left in the checkpoint (`model/streamed`),
capture what each decoder block receives (`activations`), walk the blocks with the run's
input strategy (`strategies`: fp, propagated, asymmetric), which solves each layer
(`layer`), and write the adapter with its record, self-checked (`verify`) before it is
renamed into place. Only one block's weights are in memory at a time (read from the
checkpoint for its turn, on the accelerator when there is one), and the host keeps one
block's activations: memory does not grow with the number of blocks.
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
from quailora_core.memory import release_freed_memory, return_large_allocations
from quailora_core.model.fingerprint import weight_fingerprint
from quailora_core.model.streamed import load_streamed
from quailora_core.quant.record import QuantRecord
from quailora_core.serving.folder import adapter_verdicts
from quailora_core.serving.stacks import StackVerdict

__all__ = ["InitResult", "plan_for", "preflight", "run_init"]


@dataclass
class InitResult:
    output_dir: str
    layers: list[LayerResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    serving: list[StackVerdict] = field(default_factory=list)  # per serving stack (serving/stacks.py)


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
        return_large_allocations()
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch_threads(cpu_threads_for(self.device, hidden * hidden * 2)))
            folder = None
            if self.config.init.offload_activations:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quailora-activations-")))
            self.store = HiddenStore(folder)
            self._offload_root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quailora-weights-")))
            walk = Walk(self.config, self.pre.plan, self.device, self.store, lambda: _check(self.cancel),
                        self.solver.solve)  # fmt: skip
            self.strategy = self.solver.strategy = STRATEGIES[self.config.init.inputs](walk)
            return self._run()

    def _run(self) -> InitResult:
        from transformers import AutoTokenizer

        from quailora_core.model.info import load_model_config, meta_model
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
        fingerprint, architecture = self._walk(data)
        _check(self.cancel)
        summary = summarize(self.solver.layers)
        summary["overfitting"] = overfitting(self.solver.layers, tokens, cal.seq_len)
        if summary["overfitting"]:
            self.emit(Log("warning", summary["overfitting"]))
        # the file is written before the self-check runs, so it can only hold the time so far
        summary["seconds_to_solve"] = time.perf_counter() - started
        self.emit(Stage("export"))
        record = self._record(data.summary, summary, fingerprint, architecture)
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
                    verify_mode, folder, AdapterRecord.load(folder), chosen, reported, data.input_ids,
                    data.attention_mask, cfg.init.batch_size, self.device, cfg.init.inputs, self.offload_folder(),
                    cfg.model.trust_remote_code,
                )  # fmt: skip
            self.emit(Log("info" if verify_mode != "off" else "warning", result.summary_line()))
            summary["verify"] = verify_mode
            summary["verified_layers"] = len(result.layers)
            summary["verify_max_difference"] = result.max_difference if result.layers else None
            return result.record()

        # peft writes the adapter from the model's module tree alone: a meta-device skeleton
        skeleton = meta_model(load_model_config(self.pre.model_path, cfg.model.trust_remote_code),
                              cfg.model.trust_remote_code)  # fmt: skip
        output = write_adapter(
            skeleton, cfg.lora, self.pre.target_names, self.solver.factors, cfg.output, cfg.overwrite, record, check
        )
        summary["wall_seconds"] = time.perf_counter() - started
        self.emit(Finished(str(output), summary))
        return InitResult(str(output), self.solver.layers, summary, adapter_verdicts(output))

    def offload_folder(self) -> Path:
        """A fresh, empty folder for weights that cannot be read from the checkpoint in place
        (model/streamed.py); all of them are removed with the run."""
        return Path(tempfile.mkdtemp(dir=self._offload_root))

    def _walk(self, data) -> tuple[str, str]:
        """Load the model with its blocks left in the checkpoint (model/streamed.py), record what
        each block receives, and walk the blocks, each read onto the device for its turn and
        released after. Returns the first target's weight fingerprint and the architecture;
        the model is gone when this returns, so the self-check starts from free memory."""
        from quailora_core.model.info import AUTO_CLASSES

        cfg, plan = self.config, self.pre.plan
        streamed = load_streamed(self.pre.model_path, AUTO_CLASSES[self.pre.auto_class], self.dtype, self.device,
                                 self.offload_folder(), cfg.model.trust_remote_code)  # fmt: skip
        refuse_missing_weights(streamed.loading_info)
        for note in streamed.notes:
            self.emit(Log("info", note))
        model, blocks = streamed.model, streamed.blocks
        if blocks.path != plan.blocks_path or len(blocks.blocks) != plan.n_blocks:
            raise EngineError(
                f"The loaded model's blocks ({blocks.path}, {len(blocks.blocks)}) differ from its skeleton's "
                f"({plan.blocks_path}, {plan.n_blocks}).",
                "This model builds differently when loaded; please report it.",
            )
        streamed.detach_blocks()
        modules = {t.name: model.get_submodule(t.name) for t in plan.targets}
        first = plan.targets[0]
        fingerprint = ""
        self.emit(
            Log(
                "info",
                f"{len(plan.targets)} layers in {len(blocks.blocks)} blocks; {data.input_ids.shape[0]} x "
                f"{data.input_ids.shape[1]} calibration tokens, {data.heldout_input_ids.shape[0]} held-out sequences; "
                f"device {self.device}, {str(self.dtype).removeprefix('torch.')}; weights read block by block",
            )
        )
        bs = cfg.init.batch_size
        by_block = plan.by_block()
        with torch.no_grad():
            streams = {
                "cal": capture_block_inputs(model, blocks, data.input_ids, data.attention_mask, bs, self.device,
                                            self.store, streamed.block_weights),
                "heldout": capture_block_inputs(model, blocks, data.heldout_input_ids, data.heldout_attention_mask,
                                                bs, self.device, self.store, streamed.block_weights)
                if data.heldout_input_ids.shape[0]
                else [],
            }  # fmt: skip
            self.signatures = call_signature(streams["cal"][0].calls)
            streamed.release_resident()  # the embeddings' work is done
            release_freed_memory()
            # a paired strategy keeps a second, quantized-path stream; it starts equal to the first
            qstreams = dict(streams) if self.strategy.paired else {}
            self.emit(Stage("calibrate", total=len(plan.targets)))
            for b in range(len(blocks.blocks)):
                _check(self.cancel)
                with streamed.block_weights(b, self.device) as block:
                    if b == first.block:
                        fingerprint = weight_fingerprint(modules[first.name].weight.data)
                    layers = [(t, modules[t.name]) for t in by_block.get(b, [])]
                    streams, qstreams = self.strategy.block(b, block, layers, streams, qstreams)
                release_freed_memory()
        for batches in (*streams.values(), *qstreams.values()):
            for batch in batches:
                self.store.drop(batch.hidden)
        architecture = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
        del streamed, model, blocks, modules, streams, qstreams
        release_freed_memory()
        return fingerprint, architecture

    def _record(self, cal_summary: dict[str, Any], summary: dict[str, Any], fingerprint: str,
                architecture: str) -> AdapterRecord:  # fmt: skip
        cfg, plan = self.config, self.pre.plan
        versions = {}
        for pkg in ("quailora", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[pkg] = importlib.metadata.version(pkg)
        from quailora_core.model.info import load_model_config
        from quailora_core.model.targets import expert_count

        experts = expert_count(load_model_config(self.pre.model_path, cfg.model.trust_remote_code)) or 0
        base = BaseModelRecord(self.pre.model_path, cfg.model.path, architecture, self.pre.auto_class,
                               fingerprint, plan.targets[0].name, experts)  # fmt: skip
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
