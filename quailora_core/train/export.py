"""A self-contained fine-tuning run folder: `quailora export-run` and `export_run(config, run_dir)`.

The folder holds everything a training run needs except the base model and the package:

    run.toml     the run, with the adapter and data given relative to the folder
    adapter/     a copy of the initialized adapter (peft files + quailora.json)
    data/        copies of the local training / validation files (hub ids and `demo` stay as they are)
    launch.sh    `python -m quailora_core.train run.toml --check "$@"` (a bad setting: one line, exit 2), then
                 `accelerate launch --config_file accelerate_config.yaml ... -m quailora_core.train run.toml "$@"`,
                 from any working directory; processes and machines from its environment
    accelerate_config.yaml   the accelerate config of the run kind (`[train] launch`, `train.run_kinds`)
    ds_config.json           the DeepSpeed config (the deepspeed run kind only)
    README.md    what is here and how to run it, here and on a cluster

`quailora train` resolves relative paths in a run file against the file's folder, so the
folder can be copied to another machine (with the base model at the path, or hub id,
written in run.toml's [model] section) and launched there. Training writes to `output/`
inside the folder. The folder is written atomically: under a temporary name, renamed
into place when complete.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from pathlib import Path

from quailora_core.adapter.record import AdapterRecord
from quailora_core.config import DEMO_MODEL, RunConfig
from quailora_core.errors import InputError
from quailora_core.files import atomic_dir, check_output_dir
from quailora_core.sources.training_data import check_training_source
from quailora_core.train.layout import ADAPTER_DIR, DATA_DIR, LAUNCHER, OUTPUT_DIR, RUN_FILE, adapter_dir
from quailora_core.train.run_kinds import (
    ACCELERATE_CONFIG,
    DEEPSPEED_CONFIG,
    accelerate_config,
    check_run_kind,
    decoder_block_class,
    deepspeed_config,
    launch_script,
)


def _local(source: str) -> Path | None:
    """The local file or folder a data source names, or None (demo, a hub dataset id, empty)."""
    if not source or source == DEMO_MODEL:
        return None
    path = Path(source).expanduser()
    return path if path.exists() else None


def export_run(config: RunConfig, run_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write the run folder for training `config`'s adapter (see the module docstring).

    Paths in `config` are taken relative to the working directory (a run file's paths
    relative to its folder, as `RunConfig.load` reads them). The adapter
    (`[train] adapter`, else the run's `output`) must exist; `[train] data` must be set and,
    when it is a local path, exist. Raises InputError before writing anything; returns the
    folder's absolute path.
    """
    t = config.train
    check_output_dir(str(run_dir), overwrite)
    t.validate()
    adapter = adapter_dir(config)
    record = AdapterRecord.load(adapter)
    check_run_kind(t.launch, record, adapter, installed=False)  # DeepSpeed is needed where the run trains
    if not t.data:
        raise InputError("No training data set.", "Set [train] data in the run file, or use --data PATH.")
    check_training_source(t.data, "train.data")
    if t.validation_data:
        check_training_source(t.validation_data, "train.validation_data")
    run = copy.deepcopy(config)
    # The run trains exactly what the adapter was computed for; say so in the run file.
    run.quantization = record.quantization.config()
    run.model.dtype = record.quantization.load_dtype
    if run.model.path != DEMO_MODEL and Path(run.model.path).expanduser().exists():
        run.model.path = str(Path(run.model.path).expanduser().resolve())
    run.output = ADAPTER_DIR
    run.overwrite = False
    run.train.adapter = ADAPTER_DIR
    run.train.output = OUTPUT_DIR
    run.train.resume = False
    copies: dict[str, Path] = {}
    for name in ("data", "validation_data"):
        src = _local(getattr(t, name))
        if src is not None:
            dest = f"{DATA_DIR}/{_unique(src.name, {p.name for p in copies.values()})}"
            copies[dest] = src
            setattr(run.train, name, dest)
    cal = _local(run.calibration.source)
    if cal is not None:  # not needed for training; keep a usable absolute reference
        run.calibration.source = str(cal.resolve())
    from quailora_core.adapter.writer import copy_adapter  # imports torch and peft: after the checks

    block = decoder_block_class(run.model.path, run.model.trust_remote_code) if t.launch == "fsdp" else None
    with atomic_dir(run_dir, overwrite) as tmp:
        copy_adapter(adapter, tmp / ADAPTER_DIR)
        for dest, src in copies.items():
            target = tmp / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target)
            else:
                shutil.copy2(src, target)
        run.save(tmp / RUN_FILE)
        launcher = tmp / LAUNCHER
        launcher.write_text(launch_script(t.launch, t.processes), encoding="utf-8")
        _write_accelerate_config(tmp / ACCELERATE_CONFIG, accelerate_config(t.launch, block, t.offload_params))
        if t.launch == "deepspeed":
            (tmp / DEEPSPEED_CONFIG).write_text(json.dumps(deepspeed_config(t.offload_params), indent=2) + "\n",
                                                encoding="utf-8")  # fmt: skip
        launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        (tmp / "README.md").write_text(_readme(run, record), encoding="utf-8")
    return Path(run_dir).expanduser().resolve()


def _write_accelerate_config(path: Path, config: dict) -> None:
    import yaml

    head = ("# accelerate config of this run (written by `quailora export-run`; see README.md).\n"
            "# launch.sh passes the number of processes and machines from its environment.\n")  # fmt: skip
    path.write_text(head + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    stem, suffix = os.path.splitext(name)
    i = 2
    while f"{stem}-{i}{suffix}" in taken:
        i += 1
    return f"{stem}-{i}{suffix}"


def _tracking_text(tracker: str) -> str:
    if tracker == "tensorboard":
        return "TensorBoard event files: `tensorboard --logdir output/logs`"
    if tracker == "none":
        return "none: `[train] tracking` is `none`"
    return f"`[train] tracking` is `{tracker}`; `output/training_run.json` says how to view them"


_KIND_TEXT = {
    "single": "single process: one GPU (or the CPU)",
    "ddp": "data parallel: one process per GPU, each holding the whole 4-bit model",
    "fsdp": "FSDP-QLoRA: the 4-bit base sharded over the GPUs (FULL_SHARD, one decoder block per FSDP unit)",
    "deepspeed": "DeepSpeed ZeRO-3 + QLoRA: the 4-bit base sharded over the GPUs",
}


def _cluster_text(launch: str, processes: int = 0) -> str:
    """How to start the run on one machine with several GPUs and on a cluster, for its kind."""
    if launch == "single":
        default = processes or 1
        return f"""```bash
./launch.sh                    # {default} process{"es" if default > 1 else ""} ([train] processes in run.toml)
NUM_PROCESSES=4 ./launch.sh    # data parallel: one process per GPU on a 4-GPU machine
```

This run is for one machine (`[train] launch = "single"`). For several machines, export it again
with `--launch ddp` (a copy of the 4-bit model per GPU), or `--launch fsdp` / `--launch deepspeed`
(the base sharded over the GPUs: for a model that does not fit one card); their README shows the
`accelerate launch` and Slurm commands.
"""
    deepspeed = (" and `--deepspeed_config_file ds_config.json`" if launch == "deepspeed" else "")
    needs = ("\nThe deepspeed kind needs `pip install deepspeed` on every machine; `launch.sh` says so "
             "before it starts.\n" if launch == "deepspeed" else "")  # fmt: skip
    first = (f"./launch.sh                                  # {processes} processes ([train] processes in run.toml)"
             if processes else "./launch.sh                                  # every GPU of this machine, one process each")
    default = (f"`[train] processes` of run.toml, {processes}" if processes
               else "this machine's GPUs times `NUM_MACHINES`")
    return f"""```bash
{first}
NUM_PROCESSES=2 ./launch.sh                  # 2 processes (GPUs)
```

`launch.sh` takes the layout from its environment: `NUM_PROCESSES` (all processes of all machines
together; default: {default}), `NUM_MACHINES` (default 1),
`MACHINE_RANK` (this machine's rank, 0 to `NUM_MACHINES - 1`), `MAIN_PROCESS_IP` and
`MAIN_PROCESS_PORT` (rank 0's address, which every machine must reach; accelerate's default
port is 29500). It runs `accelerate launch --config_file accelerate_config.yaml --num_processes N
--num_machines M --machine_rank R --main_process_ip HOST --main_process_port PORT`{deepspeed}
`-m quailora_core.train run.toml`. On two machines with 8 GPUs each, run on each machine, with
this folder and the base model at the same paths:

```bash
NUM_MACHINES=2 NUM_PROCESSES=16 MACHINE_RANK=0 MAIN_PROCESS_IP=node0 MAIN_PROCESS_PORT=29500 ./launch.sh   # on node0
NUM_MACHINES=2 NUM_PROCESSES=16 MACHINE_RANK=1 MAIN_PROCESS_IP=node0 MAIN_PROCESS_PORT=29500 ./launch.sh   # on node1
```

With Slurm, one task per node (each `launch.sh` starts that node's processes):

```bash
#!/bin/bash
#SBATCH --job-name=quailora-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
export NUM_MACHINES=$SLURM_NNODES
export NUM_PROCESSES=$((SLURM_NNODES * 8))
export MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MAIN_PROCESS_PORT=29500
srun bash -c 'MACHINE_RANK=$SLURM_NODEID ./launch.sh'
```

Checkpoints and the trained adapter are written to `output/` on the machine of rank 0: put the
folder on a shared file system, or copy `output/` back from rank 0, before `--resume`.
{needs}"""


def _readme(run: RunConfig, record: AdapterRecord) -> str:
    t, quant = run.train, record.quantization.label()
    model = run.model.path
    where = (
        "the demo model (`demo`: ships with the package, no download)"
        if model == DEMO_MODEL
        else f"`{model}`"
    )
    steps = f"{t.epochs:g} epochs" if t.epochs > 0 else f"{t.max_steps} steps"
    ds_row = ("| `ds_config.json` | the DeepSpeed config: ZeRO-3, 16-bit weights gathered on save, the rest `auto` "
              "(from the Trainer's settings) |\n" if t.launch == "deepspeed" else "")  # fmt: skip
    storage = ""
    if t.launch in ("fsdp", "deepspeed"):
        storage = (f"\nThe sharded run needs the 4-bit weights stored in the model dtype: the adapter was computed "
                   f"with `bnb_4bit_quant_storage = {record.quantization.quant_storage}` and the model dtype "
                   f"`{record.quantization.load_dtype}`, and training loads exactly that.\n")  # fmt: skip
    return f"""# QuAILoRA fine-tuning run

A self-contained QLoRA fine-tuning run, exported by QuAILoRA Studio (`quailora export-run`).
Run kind: **{t.launch}**, {_KIND_TEXT[t.launch]} (`[train] launch` in `run.toml`).

| file | what it is |
|---|---|
| `run.toml` | the run: base model, quantization, training settings; paths relative to this folder |
| `adapter/` | the QuAILoRA-initialized LoRA adapter ({record.init.get("method")}, rank {record.lora.get("rank")}, {quant}) |
| `data/` | the training data (copied here when it was a local file) |
| `launch.sh` | checks the run (one line and exit 2 on a bad setting), then starts the training with `accelerate launch` |
| `accelerate_config.yaml` | the accelerate config of the run kind |
{ds_row}
## Run it

On any machine with the package installed (`pip install quailora`, or `pip install -e .` from
the source) and a CUDA build of PyTorch for GPU training:

```bash
./launch.sh                    # trains {steps}; writes output/ here
./launch.sh --resume           # continues from the last checkpoint in output/
python -m quailora_core.train run.toml --max-steps 10   # the same without accelerate, one process
```

## Several GPUs, several machines

{_cluster_text(t.launch, t.processes)}
## The base model

The base model is {where}. On another machine, put the model there or edit `[model] path`
in `run.toml` (a local folder or a Hugging Face Hub id); training refuses a base whose weights
differ from the one the adapter was initialized on, and loads it with exactly the
quantization the adapter was computed for ({quant}, recorded in `adapter/quailora.json`).
{storage}
`output/` receives the checkpoints (`checkpoint-N/`, the last two kept), the trained adapter
(`output/adapter/`, loadable with `PeftModel.from_pretrained`), `metrics.json` and the
experiment tracker's files in `output/logs/` ({_tracking_text(t.tracking)}).
Add `--json` to stream progress as JSON lines.
"""
