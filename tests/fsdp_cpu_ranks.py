"""One rank of tests/test_fsdp_cpu.py: FSDP1 over a QuAILoRA-initialized QLoRA model, on the CPU.

Started by the test with `python -m torch.distributed.run --standalone --nproc_per_node 2`
(gloo). Each rank writes what it saw to `<out>/rank<R>.json`; the test reads those and the
adapter rank 0 saved. Arguments: the tiny base model's folder, the initial adapter's folder,
the output folder.

The model is loaded as the trainer loads it for a sharded run (`load_quantized_base` with the
adapter's recorded BitsAndBytesConfig: NF4, 4-bit weights stored as bfloat16;
`prepare_for_training(..., "fsdp")`; `PeftModel.from_pretrained(..., is_trainable=True)`),
then wrapped with torch FSDP1 the way accelerate does it once transformers' Trainer has put
peft's `fsdp_auto_wrap_policy` into the plugin (`update_fsdp_plugin_peft`). accelerate itself
does not shard on a CPU (it keeps `MULTI_CPU` and drops the plugin; recorded under
"accelerate"), so the ranks call torch's FSDP constructor with the arguments accelerate passes.
After two AdamW steps the full state dict is gathered (FULL_STATE_DICT, not offloaded) and rank
0 writes the adapter two ways: as the trainer's `_write` does (`write_gathered_adapter`), and
with peft's save_pretrained alone, each checked with the trainer's `check_trained_adapter`. A rank stuck in a collective prints
where and exits after HANG_S seconds.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

SEQ, BATCH, LR, STEPS = 16, 2, 1e-3, 2
# accelerate passes its device; without one, torch's FSDP looks for an accelerator and refuses the CPU
CPU = torch.device("cpu")
HANG_S = 240  # a rank still running after this long is stuck in a collective: it prints where, and exits


def _load(model_path: str, adapter: str):
    """The model as the trainer builds it for a sharded run, on the CPU (no gradient checkpointing)."""
    from peft import PeftModel

    from quailora_core.adapter.record import AdapterRecord
    from quailora_core.model.base import load_quantized_base
    from quailora_core.train.run_kinds import prepare_for_training

    record = AdapterRecord.load(Path(adapter))
    model = load_quantized_base(model_path, record, None)
    model.config.use_cache = False
    model = prepare_for_training(model, "fsdp", gradient_checkpointing=False)
    return PeftModel.from_pretrained(model, adapter, is_trainable=True)


def _linear4bit(model) -> dict:
    import bitsandbytes as bnb

    return {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def _batch(rank: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + rank)  # a different batch on each rank
    return torch.randint(0, vocab, (BATCH, SEQ), generator=g)


def _accelerate_on_cpu() -> dict:
    """What accelerate makes of an FSDP plugin in CPU processes (gloo)."""
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=1, use_orig_params=False, sync_module_states=False,
                                            cpu_ram_efficient_loading=False)  # fmt: skip
    accelerator = Accelerator(fsdp_plugin=plugin, cpu=True)
    prepared = accelerator.prepare(torch.nn.Linear(4, 4))
    return {"distributed_type": str(accelerator.distributed_type.value),
            "fsdp_plugin_kept": getattr(accelerator.state, "fsdp_plugin", None) is not None,
            "prepared_as": type(prepared).__name__}  # fmt: skip


def _block_only_policy(model_path: str, adapter: str) -> str:
    """The FSDP error when only the decoder blocks are wrapped (the plugin's own policy, before
    the Trainer replaces it): a block would hold the bfloat16-stored 4-bit weights beside peft's
    float32 LoRA weights (and frozen beside trainable ones), which FSDP cannot flatten together."""
    import functools

    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = _load(model_path, adapter)
    policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
    try:
        FSDP(model, auto_wrap_policy=policy, use_orig_params=False, device_id=CPU)
    except ValueError as e:
        return str(e)
    return ""


def _variant(model_path: str, adapter: str, out: Path, rank: int, use_orig_params: bool) -> dict:
    import bitsandbytes.functional as bnbf
    from accelerate.utils import extract_model_from_parallel
    from peft import get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from peft.utils import SAFETENSORS_WEIGHTS_NAME
    from peft.utils.other import fsdp_auto_wrap_policy
    from safetensors.torch import load_file
    from torch.distributed.fsdp import FullStateDictConfig, ShardingStrategy, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from quailora_core.errors import QuailoraError
    from quailora_core.train.processes import weights_digest
    from quailora_core.train.trainer import _plain_name, check_trained_adapter, write_gathered_adapter

    res: dict = {}
    torch.manual_seed(0)
    model = _load(model_path, adapter)
    model.train()
    batch = _batch(rank, model.config.vocab_size)
    with torch.no_grad():
        res["unwrapped_loss"] = model(input_ids=batch, labels=batch).loss.item()
    linears = _linear4bit(model)
    dequantized = {n: bnbf.dequantize_4bit(m.weight.data, m.weight.quant_state).clone() for n, m in linears.items()}
    res["linear4bit"] = len(linears)
    res["storage_dtypes"] = sorted({str(m.weight.data.dtype) for m in linears.values()})

    # accelerate's FSDP1 constructor arguments (FULL_SHARD, no CPU offload, no sync of module
    # states: refused on a CPU), with the auto wrap policy transformers' Trainer puts in
    wrapped = FSDP(model, sharding_strategy=ShardingStrategy.FULL_SHARD, auto_wrap_policy=fsdp_auto_wrap_policy(model),
                   use_orig_params=use_orig_params, sync_module_states=False, limit_all_gathers=True,
                   device_id=CPU)  # fmt: skip
    res["fsdp_units"] = sum(1 for m in wrapped.modules() if isinstance(m, FSDP))
    after = _linear4bit(wrapped)
    res["module_quant_state_after_wrap"] = sum(1 for m in after.values() if m.quant_state is not None)
    res["weight_quant_state_after_wrap"] = sum(1 for m in after.values()
                                               if getattr(m.weight, "quant_state", None) is not None)  # fmt: skip
    seen: dict[str, bool] = {}

    def watch(name):
        def hook(module, args, output):
            seen[name] = getattr(module.weight, "quant_state", None) is module.quant_state is not None
        return hook

    handles = [m.register_forward_hook(watch(n)) for n, m in after.items()]
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR)
    res["losses"], res["grad_sq"] = [], []
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = wrapped(input_ids=batch, labels=batch).loss
        loss.backward()
        res["losses"].append(loss.item())
        # each rank holds a shard of every gradient: the sums of squares over both ranks
        local = torch.stack([p.grad.float().pow(2).sum() if p.grad is not None else torch.zeros(())
                             for p in trainable])  # fmt: skip
        dist.all_reduce(local)
        res["grad_sq"].append(local.tolist())
        res["grads_finite"] = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in trainable)
        optimizer.step()
    for h in handles:
        h.remove()
    res["trainable_tensors"] = len(trainable)
    res["quant_state_in_forward"] = sum(seen.values())
    with FSDP.summon_full_params(wrapped, writeback=False):
        res["dequantized_equal_after_training"] = sum(
            1 for n, m in _linear4bit(wrapped).items()
            if torch.equal(bnbf.dequantize_4bit(m.weight.data.view(-1, 1), m.quant_state), dequantized[_plain_name(n)])
        )  # fmt: skip

    # accelerate's get_state_dict for FSDP1 takes FullStateDictConfig(offload_to_cpu=True,
    # rank0_only=True); offloading to the CPU fails on a CPU (rank 0 raises, rank 1 waits in the next
    # all-gather), so it is taken here without offload, once rank 0 only and once on every rank
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig(False, True)):
        rank0_only = wrapped.state_dict()
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig(False, False)):
        full = wrapped.state_dict()
    res["rank0_only_keys"] = len(rank0_only)  # rank 1: no LoRA tensors (bitsandbytes adds its own)
    unwrapped = extract_model_from_parallel(wrapped)  # what accelerator.unwrap_model returns
    res["unwrapped_type"] = type(unwrapped).__name__
    res["full_keys"] = len(full)
    res["full_keys_with_wrapper_names"] = sum(1 for k in full if _plain_name(k) != k)
    # peft picks the adapter's entries by the names of its LoRA modules, which (inside the nested
    # FSDP units) hold `_fsdp_wrapped_module.` in the middle; peft only strips it at the start
    lora_modules = [n for n, m in unwrapped.named_modules() if isinstance(m, LoraLayer)]
    res["lora_modules"] = len(lora_modules)
    res["lora_module_names_with_wrapper_names"] = sum(1 for n in lora_modules if _plain_name(n) != n)
    res["lora_module_example"] = lora_modules[0]
    res["peft_selects"] = len(get_peft_model_state_dict(unwrapped, state_dict=full))
    expected = load_file(str(Path(adapter) / SAFETENSORS_WEIGHTS_NAME))
    # each rank's own LoRA tensors of the gathered state dict, named as in the adapter's file
    lora = {n: v for k, v in full.items() if (n := k.replace(".default.", ".")) in expected}
    res["lora_tensors"] = len(lora)
    res["lora_digest"] = weights_digest(lora)
    rank0_lora = {n: v for k, v in rank0_only.items() if (n := k.replace(".default.", ".")) in expected}
    res["rank0_only_lora_digest"] = weights_digest(rank0_lora) if rank0_only else None
    res["changed_by_training"] = sum(1 for k, v in lora.items() if not torch.equal(v, expected[k]))
    if rank == 0:  # rank 0 writes, as the trainer's _write does; one folder per way of writing
        tag = "orig" if use_orig_params else "flat"
        for way in ("trainer", "peft-alone"):
            folder = out / f"adapter-{tag}-{way}"
            if way == "trainer":
                folder.mkdir()
                write_gathered_adapter(unwrapped, folder, full, Path(adapter))
            else:
                unwrapped.save_pretrained(str(folder), state_dict=full)
            written = load_file(str(folder / SAFETENSORS_WEIGHTS_NAME))
            try:
                check_trained_adapter(folder, Path(adapter))
                check = "passed"
            except QuailoraError as e:
                check = str(e.args[0])
            res[way] = {"folder": str(folder), "tensors": len(written), "check": check,
                        "digest": weights_digest(written)}  # fmt: skip
    dist.barrier()
    return res


def main() -> None:
    model_path, adapter, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    faulthandler.dump_traceback_later(HANG_S, exit=True)  # a collective that never completes
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result: dict = {"rank": rank, "world_size": dist.get_world_size()}
    try:
        result["accelerate"] = _accelerate_on_cpu()
        result["block_only_policy_error"] = _block_only_policy(model_path, adapter)
        for use_orig_params in (False, True):
            result["orig" if use_orig_params else "flat"] = _variant(model_path, adapter, out, rank, use_orig_params)
    except Exception:  # noqa: BLE001 - the test shows it
        result["error"] = traceback.format_exc()
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
