"""FSDP1 sharding of a QuAILoRA QLoRA model in two CPU processes (gloo), and how a sharded run's
trained adapter is written (`train.trainer`: `_plain_name`, `check_trained_adapter`).

A real FSDP run needs CUDA (launch.sh refuses it without GPUs), but torch's FSDP1 itself runs on
the CPU. `tests/fsdp_cpu_ranks.py` is started with `python -m torch.distributed.run --standalone
--nproc_per_node 2` on a tiny Llama and a real QuAILoRA adapter computed for a sharded run
(bfloat16 model, NF4 weights stored as bfloat16), loaded as the trainer loads it. Each rank
writes its figures to a JSON file; rank 0 writes adapters as the trainer's `_write` does.

What the ranks showed (torch 2.13, accelerate 1.16, peft 0.21.2, bitsandbytes 0.50), and
what these tests assert:

* accelerate does not shard on a CPU: `Accelerator(fsdp_plugin=..., cpu=True)` in torchrun
  processes keeps `MULTI_CPU`, drops the plugin and prepares a model as DDP, so the ranks call
  torch's FSDP constructor themselves, with the arguments accelerate passes (FULL_SHARD, its
  device: without `device_id` FSDP refuses a CPU-only machine, no `sync_module_states`, which is
  refused on a CPU) and the auto wrap policy transformers' Trainer puts in for peft
  (`peft.utils.other.fsdp_auto_wrap_policy`: every LoRA Linear is a unit of its own, beside the
  decoder blocks). Wrapping the blocks only fails ("uniform dtype": peft keeps LoRA weights in
  float32 beside the bfloat16-stored 4-bit weights).
* With use_orig_params False and True: two AdamW steps, the first loss equal to the unwrapped
  model's on the same batch (measured: identical, relative difference 0), every LoRA gradient
  finite and nonzero, every Linear4bit keeps its quant_state (on the module; with
  use_orig_params=False the weight itself loses it when FSDP flattens it, and bitsandbytes puts
  it back at each forward), and the dequantized 4-bit weights are unchanged by training.
* The full state dict (FULL_STATE_DICT, not offloaded: accelerate's `offload_to_cpu=True`
  fails on a CPU, rank 0 raising in the first unit while rank 1 waits in the next all-gather)
  has plain names already: none holds `_fsdp_wrapped_module.`, so `_plain_name` changes nothing.
* peft alone cannot write the adapter of a sharded run: `save_pretrained(state_dict=full)` saves
  an adapter WITHOUT A SINGLE TENSOR, which `check_trained_adapter` refuses ("missing 28").
  peft 0.21 picks a state dict's entries by the names of its LoRA modules
  (`_get_tuner_state_dict_key_prefixes`), and inside the nested FSDP units those names hold
  `_fsdp_wrapped_module.` in the middle (peft strips it only at the start), so no key matches.
  The trainer's write (`write_gathered_adapter`) picks the tensors by the initial adapter's
  names instead; that adapter passes `check_trained_adapter` and holds exactly the ranks' own
  gathered LoRA tensors (picked here independently), bit-identical on both ranks and in both
  variants, every one changed by training.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_config
from safetensors.torch import load_file
from tiny_models import save_tiny

from quailora_core.train.processes import weights_digest

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[1]
RANKS = Path(__file__).with_name("fsdp_cpu_ranks.py")
DEADLINE = 600  # seconds for the launch: generous, a loaded machine is slow, not wrong
LORA_TENSORS = 28  # A and B of 7 projections in each of 2 blocks
VARIANTS = ["flat", "orig"]  # use_orig_params False / True


@pytest.fixture(scope="module")
def launched(demo_model, tmp_path_factory) -> dict:
    """Both ranks' results, the initial adapter and the output folder, from one launch."""
    from quailora_core.init.pipeline import run_init

    root = tmp_path_factory.mktemp("fsdp-cpu")
    model = save_tiny("llama", root / "tiny", tokenizer_from=demo_model)
    adapter = root / "adapter"
    cfg = make_config(model, adapter, model__dtype="bfloat16", quantization__quant_storage="bfloat16",
                      train__launch="fsdp", lora__rank=4, calibration__samples=4, calibration__seq_len=32,
                      calibration__heldout_samples=2)  # fmt: skip
    run_init(cfg)
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(RANKS), str(model), str(adapter), str(out)]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    for r in ranks:
        assert "error" not in r, r["error"]
    return {"ranks": ranks, "adapter": adapter, "out": out}


def test_accelerate_does_not_shard_on_a_cpu(launched):
    for r in launched["ranks"]:
        assert r["world_size"] == 2
        assert r["accelerate"] == {"distributed_type": "MULTI_CPU", "fsdp_plugin_kept": False,
                                   "prepared_as": "DistributedDataParallel"}  # fmt: skip
        # the plugin's own policy (decoder blocks only) cannot flatten a block with LoRA weights in it
        assert "Must flatten tensors with uniform" in r["block_only_policy_error"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fsdp_trains_the_quantized_model_as_the_unwrapped_one(launched, variant):
    for r in launched["ranks"]:
        v = r[variant]
        assert v["linear4bit"] == 14 and v["storage_dtypes"] == ["torch.bfloat16"]
        assert v["fsdp_units"] == 1 + 2 + LORA_TENSORS  # root, 2 blocks, each LoRA Linear
        first, second = v["losses"]
        assert all(math.isfinite(x) for x in v["losses"])
        assert first == pytest.approx(v["unwrapped_loss"], rel=1e-3)
        assert second != first  # the first step changed the LoRA weights
        assert v["trainable_tensors"] == LORA_TENSORS and v["grads_finite"]
        for step in v["grad_sq"]:  # each LoRA tensor's squared gradient norm, summed over the shards
            assert len(step) == LORA_TENSORS and all(math.isfinite(g) and g > 0 for g in step)
        # the base stays 4-bit and intact: quant_state on every module, on every weight in the
        # forward, the same dequantized weights after training
        assert v["module_quant_state_after_wrap"] == 14
        assert v["weight_quant_state_after_wrap"] == (14 if variant == "orig" else 0)
        assert v["quant_state_in_forward"] == 14 and v["dequantized_equal_after_training"] == 14
    a, b = (r[variant] for r in launched["ranks"])
    assert a["unwrapped_loss"] != b["unwrapped_loss"]  # each rank trained on a batch of its own
    assert a["grad_sq"] == b["grad_sq"]  # the gradients are the average over both ranks' batches


@pytest.mark.parametrize("variant", VARIANTS)
def test_gathered_state_dict_has_plain_names_and_peft_alone_selects_nothing_from_it(launched, variant):
    """The gathered keys need no cleaning, and peft's own selection finds none of the LoRA
    tensors in them: what peft writes alone is an empty adapter, which the check refuses."""
    rank0 = launched["ranks"][0][variant]
    for r in launched["ranks"]:
        v = r[variant]
        assert v["unwrapped_type"] == "PeftModelForCausalLM"
        assert v["full_keys_with_wrapper_names"] == 0
        assert v["lora_modules"] == 14 and v["lora_module_names_with_wrapper_names"] == 14
        assert "._fsdp_wrapped_module." in v["lora_module_example"]
        assert v["peft_selects"] == 0
    assert rank0["peft-alone"]["tensors"] == 0 and "missing 28" in rank0["peft-alone"]["check"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_trainers_write_is_the_gathered_adapter_of_both_ranks(launched, variant):
    a, b = (r[variant] for r in launched["ranks"])
    assert a["lora_tensors"] == b["lora_tensors"] == LORA_TENSORS
    assert a["lora_digest"] == b["lora_digest"]  # bit-identical on both ranks
    assert a["rank0_only_lora_digest"] == a["lora_digest"]  # rank0_only=True gathers the same on rank 0
    assert a["changed_by_training"] == b["changed_by_training"] == LORA_TENSORS
    trainer = a["trainer"]
    assert trainer["check"] == "passed" and trainer["tensors"] == LORA_TENSORS
    folder = Path(trainer["folder"])
    written = load_file(str(folder / "adapter_model.safetensors"))
    initial = load_file(str(launched["adapter"] / "adapter_model.safetensors"))
    assert weights_digest(written) == a["lora_digest"]  # the file holds the ranks' own full-state tensors
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in initial.items()}
    assert (folder / "adapter_config.json").is_file()  # and peft's config beside them
    other = "orig" if variant == "flat" else "flat"
    assert a["lora_digest"] == launched["ranks"][0][other]["lora_digest"]  # use_orig_params changes nothing
