"""Run kinds: how a fine-tuning run is spread over processes, and the files that start it.

`[train] launch` names one of four kinds (`config.RUN_KINDS`):

    single      one machine: one process (one GPU, or the CPU), or NUM_PROCESSES data-parallel ones
    ddp         data parallel: one process per GPU, each with the whole 4-bit model
    fsdp        FSDP-QLoRA: the 4-bit base sharded over the GPUs (FULL_SHARD), for a model
                that does not fit one card (peft's and Answer.AI's 70B on 2 x 24 GB)
    deepspeed   DeepSpeed ZeRO-3 + QLoRA: the same sharding through DeepSpeed

`quailora export-run` writes, next to `launch.sh`, the accelerate config file of the kind
(`accelerate_config.yaml`, and `ds_config.json` for DeepSpeed) with what these stacks need
for QLoRA, as peft's FSDP and DeepSpeed guides say: the 4-bit weights stored in the model
dtype (checked here against the adapter: `check_run_kind`), CPU-RAM-efficient loading with
the module states synced from rank 0, the transformer wrap policy on the model's own decoder
block class (found by `model.blocks.find_decoder_blocks` on the model built by transformers
on the meta device, never a table of names), sharded state dicts, `use_orig_params` off;
ZeRO-3 with `zero3_init_flag` and 16-bit weights gathered on save. Everything the Trainer
sets itself (batch size, accumulation, precision) is `auto` or left out, so the run file stays
the one place to set it. The number of processes and machines, the machine rank and the main
process address are not in these files: `launch.sh` takes them from its environment
(NUM_PROCESSES, NUM_MACHINES, MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT), so one
folder serves one GPU, eight, or a cluster.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from quailora_core.adapter.record import AdapterRecord
from quailora_core.config import RUN_KINDS, SHARDED_RUN_KINDS, sharded_storage_problem
from quailora_core.errors import InputError

ACCELERATE_CONFIG = "accelerate_config.yaml"
DEEPSPEED_CONFIG = "ds_config.json"

_DISTRIBUTED_TYPE = {"single": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}


# ---------------------------------------------------------------------------- checks
def check_run_kind(launch: str, record: AdapterRecord, adapter: str, installed: bool = True) -> None:
    """Refuse a run kind that the adapter (its quantization) or, with `installed`, this
    machine (DeepSpeed not installed) cannot run; reads only the adapter's record."""
    if launch not in RUN_KINDS:
        raise InputError(f"Unknown run kind {launch!r}.", f"Use one of {', '.join(RUN_KINDS)}.", field="train.launch")
    q = record.quantization
    problem = sharded_storage_problem(launch, q.bits, q.quant_storage or "uint8", q.load_dtype)
    if problem:
        raise InputError(
            f"Adapter {adapter!r} cannot train in a {launch} run: {problem[0]}",
            f"Initialize it again for the run: {problem[1]}",
            field="train.launch",
        )
    if installed and launch == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise InputError("The deepspeed run kind needs DeepSpeed, which is not installed.",
                         "pip install deepspeed", field="train.launch")  # fmt: skip


def check_sharding_device(launch: str, several_processes: bool, cuda: bool | None = None) -> None:
    """Refuse a sharded kind that would start several processes on a machine without CUDA.

    accelerate shards (FSDP, ZeRO-3) on GPUs only: on a CPU-only machine `accelerate launch`
    with an FSDP config starts CPU processes that each train an unsharded copy of the model
    (its distributed type stays MULTI_CPU), which is not the run that was asked for. `cuda`:
    whether the machine has CUDA, when the caller knows (the app's engine process); else torch
    is asked."""
    if launch not in SHARDED_RUN_KINDS or not several_processes:
        return
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return
    name = "FSDP-QLoRA" if launch == "fsdp" else "DeepSpeed ZeRO-3"
    raise InputError(
        f"Run kind {launch!r} ({name}) shards the 4-bit base over CUDA GPUs, and this machine has none: "
        "accelerate would train an unsharded copy of the model in each process.",
        "Start launch.sh on a machine with NVIDIA GPUs, or use [train] launch = \"ddp\" to train data "
        "parallel on the CPU.",
        field="train.launch",
    )


# ---------------------------------------------------------------------------- the block class
def decoder_block_class(model_path: str, trust_remote_code: bool = False) -> str:
    """The class name of the model's decoder blocks, what FSDP wraps one by one: found on the
    model transformers builds from the config (meta device, no weights), as the engine finds
    the blocks it initializes. accelerate resolves the name on the real model
    (`get_module_class_from_name`), so it must be the class of the very modules in the list."""
    from quailora_core.model.blocks import find_decoder_blocks
    from quailora_core.model.info import load_model_config, meta_model
    from quailora_core.sources.references import resolve_model_path

    path = resolve_model_path(model_path)
    model = meta_model(load_model_config(path, trust_remote_code), trust_remote_code)
    return type(find_decoder_blocks(model).blocks[0]).__name__


# ---------------------------------------------------------------------------- the files
def accelerate_config(launch: str, block_class: str | None = None, offload_params: bool = False) -> dict[str, Any]:
    """The accelerate config file (as a dict; `ClusterConfig` keys) of a run kind.

    `num_processes` / `num_machines` / `machine_rank` here are the one-machine defaults;
    launch.sh passes the real ones from its environment on the command line, which wins.
    """
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": _DISTRIBUTED_TYPE[launch],
        "num_processes": 1,
        "num_machines": 1,
        "machine_rank": 0,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "debug": False,
    }
    if launch != "deepspeed":  # DeepSpeed takes the precision from ds_config.json ("auto": the Trainer's)
        config["mixed_precision"] = "no"  # the Trainer sets bf16 / fp16 itself (TrainingArguments)
    if launch == "fsdp":
        if not block_class:
            raise ValueError("an fsdp config needs the decoder block class")
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": block_class,
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,  # rank 0 reads the weights, the others build on meta
            "fsdp_sync_module_states": True,  # ... and receive them from rank 0 (accelerate requires both)
            # flat parameters, as peft's FSDP-QLoRA guide: a flat parameter must be all trainable or all
            # frozen, and the Trainer replaces the block-only policy above with peft's
            # `fsdp_auto_wrap_policy` (`update_fsdp_plugin_peft`: each LoRA layer its own unit, the
            # blocks as listed); with the block-only policy alone FSDP refuses to flatten a block
            "fsdp_use_orig_params": False,
            "fsdp_offload_params": offload_params,
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_forward_prefetch": False,
        }
    if launch == "deepspeed":
        config["deepspeed_config"] = {
            "deepspeed_config_file": DEEPSPEED_CONFIG,  # launch.sh passes its absolute path
            "zero3_init_flag": True,
            "deepspeed_multinode_launcher": "standard",  # one `accelerate launch` per machine, as for FSDP
        }
    return config


def deepspeed_config(offload_params: bool = False) -> dict[str, Any]:
    """ds_config.json: ZeRO-3 with 16-bit weights gathered on save; `auto` where the Trainer
    fills the value from its own arguments (transformers' HfTrainerDeepSpeedConfig)."""
    device = "cpu" if offload_params else "none"
    return {
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
            "offload_param": {"device": device},
            "offload_optimizer": {"device": device},
        },
    }


_HEADER = """#!/usr/bin/env bash
# Fine-tune the QuAILoRA-initialized adapter of this run folder (see README.md).
# Run kind: {launch} ({what}); accelerate reads {files}.
#
#   ./launch.sh                      train as run.toml says; results go to output/ in this folder
#   ./launch.sh --resume             continue from the last checkpoint in output/
#   ./launch.sh --max-steps 500      any `quailora train` flag overrides run.toml (--json, --lr, ...)
{usage}#
# Works from any working directory: run.toml's paths are relative to this folder.
# The run is checked first in one plain process (no model loaded): a bad setting is one
# `error:` line and exit 2 here, where under accelerate it would be a traceback and exit 1.
# PYTHON=/path/to/python picks the interpreter (default: python, else python3, on the PATH);
# ACCELERATE=/path/to/accelerate the launcher (default: accelerate on the PATH).
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
PYTHON="${{PYTHON:-$(command -v python || command -v python3 || echo python)}}"
ACCELERATE="${{ACCELERATE:-accelerate}}"
"""

_CHECK = '"$PYTHON" -m quailora_core.train "$HERE/run.toml" --check "$@"\n'

_SINGLE = """if [ "${NUM_MACHINES:-1}" != 1 ]; then
  echo "error: this run is for one machine ([train] launch = \\"single\\"); export it with --launch ddp (or fsdp, deepspeed) to use NUM_MACHINES." >&2
  exit 2
fi
{check}# Several processes: accelerate starts them (torchrun) only with --multi_gpu, else it starts one;
# without a GPU they train on the CPU (gloo).
NUM_PROCESSES="${NUM_PROCESSES:-{processes}}"  # [train] processes of run.toml
MULTI=(); if [ "$NUM_PROCESSES" -gt 1 ]; then MULTI=(--multi_gpu); fi
{stop}exec "$ACCELERATE" launch --config_file "$HERE/accelerate_config.yaml" --num_processes "$NUM_PROCESSES" \\
  ${MULTI[@]+"${MULTI[@]}"} -m quailora_core.train "$HERE/run.toml" "$@"
"""

_STOP = """# A stop (Ctrl-C, SIGTERM) reaches every process, which finish the step and save a checkpoint;
# the launcher kills them after TORCH_ELASTIC_SHUTDOWN_TIMEOUT s.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}"
"""

_MULTI = """{check}NUM_MACHINES="${{NUM_MACHINES:-1}}"
{default}if [ -z "${{NUM_PROCESSES:-}}" ]; then  # all GPUs of this machine, on every machine
  GPUS="$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
  NUM_PROCESSES=$((GPUS * NUM_MACHINES))
fi
ARGS=(--config_file "$HERE/accelerate_config.yaml" --num_processes "$NUM_PROCESSES"
      --num_machines "$NUM_MACHINES" --machine_rank "${{MACHINE_RANK:-0}}")
if [ -n "${{MAIN_PROCESS_IP:-}}" ]; then ARGS+=(--main_process_ip "$MAIN_PROCESS_IP"); fi
if [ -n "${{MAIN_PROCESS_PORT:-}}" ]; then ARGS+=(--main_process_port "$MAIN_PROCESS_PORT"); fi
{extra}{stop}exec "$ACCELERATE" launch "${{ARGS[@]}}" -m quailora_core.train "$HERE/run.toml" "$@"
"""

_WHAT = {
    "single": "one machine: one process, or NUM_PROCESSES data-parallel ones",
    "ddp": "data parallel, one process per GPU, each with the whole 4-bit model",
    "fsdp": "FSDP-QLoRA, the 4-bit base sharded over the GPUs",
    "deepspeed": "DeepSpeed ZeRO-3 + QLoRA, the 4-bit base sharded over the GPUs",
}

_MULTI_USAGE = """#   NUM_PROCESSES=4 ./launch.sh      4 processes, one per GPU (default: [train] processes in run.toml,
#                                    0 = every GPU of this machine); the batch size in run.toml is per GPU
#   NUM_MACHINES=2 MACHINE_RANK=0 MAIN_PROCESS_IP=host0 [MAIN_PROCESS_PORT=29500] ./launch.sh
#                                    on each of 2 machines (MACHINE_RANK 0 and 1); NUM_PROCESSES
#                                    counts the processes of all machines together
"""


def launch_script(launch: str, processes: int = 0) -> str:
    """launch.sh for a run kind: the cheap check, then `accelerate launch` with the kind's config.
    `processes` ([train] processes) is the count when NUM_PROCESSES is not set; 0 is the kind's
    own: one process for single, every GPU of each machine for the others."""
    files = ACCELERATE_CONFIG + (f" and {DEEPSPEED_CONFIG}" if launch == "deepspeed" else "")
    if launch == "single":
        usage = ("#   NUM_PROCESSES=4 ./launch.sh      data-parallel on 4 GPUs of this machine: one process per GPU\n"
                 "#                                    (default: [train] processes in run.toml, else 1); the batch\n"
                 "#                                    size in run.toml is per GPU.\n"
                 "#                                    Several machines: export with --launch ddp, fsdp or deepspeed\n")
        body = _SINGLE.replace("{check}", _CHECK).replace("{stop}", _STOP).replace("{processes}", str(processes or 1))
        return _HEADER.format(launch=launch, what=_WHAT[launch], files=files, usage=usage) + body
    extra = 'ARGS+=(--deepspeed_config_file "$HERE/ds_config.json")\n' if launch == "deepspeed" else ""
    default = f'NUM_PROCESSES="${{NUM_PROCESSES:-{processes}}}"  # [train] processes of run.toml\n' if processes else ""
    return (_HEADER.format(launch=launch, what=_WHAT[launch], files=files, usage=_MULTI_USAGE)
            + _MULTI.format(check=_CHECK, extra=extra, stop=_STOP, default=default))  # fmt: skip


# ---------------------------------------------------------------------------- the training process
def optimizer_name(launch: str, cuda: bool) -> str:
    """The Trainer's `optim` for a run kind: paged 8-bit AdamW on CUDA (QLoRA's), except in a
    sharded run, where peft's FSDP guide reports it failing to save a checkpoint: AdamW there
    (the optimizer state is sharded with the LoRA weights, which are few)."""
    if not cuda:
        return "adamw_torch"
    return "adamw_torch" if launch in SHARDED_RUN_KINDS else "paged_adamw_8bit"


def prepare_for_training(model: Any, launch: str, gradient_checkpointing: bool) -> Any:
    """The quantized base made ready for LoRA training, as the run kind needs it.

    One process or data parallel: peft's `prepare_model_for_kbit_training` (the frozen base,
    its norms and embeddings upcast to float32 for stability, gradient checkpointing). A sharded
    run must keep every parameter in the storage dtype, since FSDP and ZeRO-3 flatten a block's
    parameters into one tensor of one dtype (float32 norms beside bfloat16-stored 4-bit weights
    are the "mixed dtypes" failure): the base is frozen and checkpointed, nothing is cast, as
    TRL does for sharded QLoRA.
    """
    kwargs = {"use_reentrant": False}
    if launch not in SHARDED_RUN_KINDS:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs=kwargs
        )
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    return model
