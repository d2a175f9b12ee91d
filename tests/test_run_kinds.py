"""Run kinds (`[train] launch`: single, ddp, fsdp, deepspeed): the quantization a sharded run
needs, the adapter computed for it, and the accelerate files `export-run` writes, read back by
accelerate itself the way `accelerate launch` reads them.

FSDP with bitsandbytes and DeepSpeed cannot run on a CPU: these tests go up to the launch (the
command launch.sh builds, the environment accelerate's launcher gives each process, the plugin
objects built from it, the wrap class resolved on the real model); benchmarks/gpu_check.sh runs
the sharded kinds for real when a GPU is lent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import bitsandbytes.functional as bnbf
import pytest
import torch
from helpers import make_config, read_metadata
from tiny_models import model_class, save_tiny
from transformers import AutoModelForCausalLM

from quailora_core.adapter.record import AdapterRecord
from quailora_core.config import QuantConfig, RunConfig
from quailora_core.errors import InputError
from quailora_core.model.blocks import find_decoder_blocks
from quailora_core.quant.quantizer import bnb_config, quantize_dequantize
from quailora_core.train.export import export_run
from quailora_core.train.run_kinds import decoder_block_class
from quailora_core.train.settings import check_before_loading, check_quantization

PAIRS = [{"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}."} for i in range(8)]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def sharded_adapter(demo_model, tmp_path_factory) -> Path:
    """An adapter computed for a sharded run: bfloat16 model, 4-bit weights stored as bfloat16."""
    from quailora_core.init.pipeline import run_init

    out = tmp_path_factory.mktemp("sharded") / "adapter"
    cfg = make_config(demo_model, out, model__dtype="bfloat16", quantization__quant_storage="bfloat16",
                      train__launch="fsdp")  # fmt: skip
    run_init(cfg)
    return out


def train_run(model: Path, adapter: Path, tmp: Path, launch: str) -> RunConfig:
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS), encoding="utf-8")
    record = AdapterRecord.load(adapter)
    cfg = make_config(model, adapter)
    cfg.model.dtype, cfg.quantization = record.quantization.load_dtype, record.quantization.config()
    t = cfg.train
    t.adapter, t.data, t.seq_len, t.batch_size, t.max_steps, t.launch = str(adapter), str(data), 48, 2, 4, launch
    return cfg


# ---------------------------------------------------------------------------- part 2: Q per storage dtype
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16-model", "fp32-model"])
@pytest.mark.parametrize("storage", ["uint8", "bfloat16", "float16", "float32"])
def test_engine_q_is_what_transformers_loads_for_each_storage_dtype(tiny_llama, storage, dtype):
    """The packed bytes are viewed as the storage dtype (what FSDP shards), and bitsandbytes'
    own dequantize of each Linear4bit still gives exactly the engine's Q."""
    q = QuantConfig(bits=4, quant_storage=storage)
    full = dict(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype).named_modules())
    quant = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype, quantization_config=bnb_config(q, dtype))
    compared = 0
    for name, module in quant.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None:
            continue
        assert module.weight.data.dtype == getattr(torch, storage), name  # the storage really is in effect
        expected = bnbf.dequantize_4bit(module.weight.data, state)
        assert torch.equal(quantize_dequantize(full[name].weight.data, q), expected), name
        compared += 1
    assert compared == 2 * 7  # every linear of both blocks


def test_an_adapter_for_a_sharded_run_records_its_storage_and_passes_the_self_check(sharded_adapter):
    meta = read_metadata(sharded_adapter)
    assert meta["quantization"]["quant_storage"] == "bfloat16" and meta["quantization"]["load_dtype"] == "bfloat16"
    assert meta["quantization"]["bnb_config"]["bnb_4bit_quant_storage"] == "bfloat16"
    check = meta["verification"]
    assert check["passed"] and check["layers_checked"] > 0  # loaded as training loads it: Q matches


# ---------------------------------------------------------------------------- the settings
def test_a_sharded_run_refuses_a_storage_that_is_not_the_model_dtype(demo_model, tmp_path):
    cfg = make_config(demo_model, tmp_path / "a", train__launch="fsdp", model__dtype="bfloat16")
    with pytest.raises(InputError) as err:
        cfg.validate()  # quant_storage uint8
    assert err.value.field == "quantization.quant_storage"
    assert "quant_storage = \"bfloat16\"" in err.value.hint and "\n" not in err.value.one_line()
    cfg.model.dtype = "auto"  # bfloat16 on a GPU, float32 here: the adapter must know which
    cfg.quantization.quant_storage = "bfloat16"
    with pytest.raises(InputError, match="model dtype 'auto'"):
        cfg.validate()
    cfg.model.dtype = "bfloat16"
    cfg.validate()
    cfg.quantization.bits = 8
    with pytest.raises(InputError, match="4-bit base only"):
        cfg.validate()
    cfg = make_config(demo_model, tmp_path / "b", train__launch="ddp")  # data parallel: any storage
    cfg.validate()
    cfg.train.launch = "tensor-parallel"
    with pytest.raises(InputError, match="Unknown run kind") as err:
        cfg.train.validate()
    assert err.value.field == "train.launch"
    cfg = make_config(demo_model, tmp_path / "c", quantization__quant_storage="int4")
    with pytest.raises(InputError, match="Unknown quant storage"):
        cfg.validate()


def test_training_refuses_a_storage_dtype_or_run_kind_the_adapter_was_not_computed_for(
    demo_model, demo_adapter, sharded_adapter, tmp_path
):
    cfg = train_run(demo_model, demo_adapter, tmp_path, "single")
    check_before_loading(cfg)
    cfg.quantization.quant_storage = "bfloat16"  # the run file says bf16, the adapter uint8
    with pytest.raises(InputError, match="quant_storage 'bfloat16' vs 'uint8'"):
        check_before_loading(cfg)
    cfg = train_run(demo_model, demo_adapter, tmp_path, "fsdp")  # uint8 / float32: not shardable
    with pytest.raises(InputError, match="cannot train in a fsdp run") as err:
        check_quantization(cfg, AdapterRecord.load(demo_adapter), str(demo_adapter))
    assert "Initialize it again" in err.value.hint and err.value.field == "train.launch"
    cfg = train_run(demo_model, sharded_adapter, tmp_path, "fsdp")
    check_before_loading(cfg)
    cfg.train.launch = "deepspeed"
    if HAS_DEEPSPEED:
        check_before_loading(cfg)
    else:
        with pytest.raises(InputError) as err:
            check_before_loading(cfg)
        assert err.value.hint == "pip install deepspeed"


# ---------------------------------------------------------------------------- the wrap class
@pytest.mark.parametrize("kind,expected", [("llama", "LlamaDecoderLayer"), ("gpt2", "GPT2Block"),
                                           ("qwen2_vl", "Qwen2VLDecoderLayer")])  # fmt: skip
def test_the_wrap_class_is_the_real_block_class_of_the_model(kind, expected, tmp_path):
    from accelerate.utils.dataclasses import get_module_class_from_name

    path = save_tiny(kind, tmp_path / kind)
    name = decoder_block_class(str(path))
    assert name == expected
    model = model_class(kind).from_pretrained(path)
    cls = get_module_class_from_name(model, name)  # what accelerate's wrap policy looks up
    assert cls is type(find_decoder_blocks(model).blocks[0])
    assert all(isinstance(block, cls) for block in find_decoder_blocks(model).blocks)


# ---------------------------------------------------------------------------- export + launch.sh
def _launch(run_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """launch.sh with `echo` as the launcher: the check runs for real, then the accelerate
    command line it would exec is printed."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable,
            "ACCELERATE": "echo", **env}  # fmt: skip
    for name in ("NUM_PROCESSES", "NUM_MACHINES", "MACHINE_RANK", "MAIN_PROCESS_IP", "MAIN_PROCESS_PORT"):
        if name not in env:
            full.pop(name, None)
    return subprocess.run(["bash", str(run_dir / "launch.sh")], env=full, capture_output=True, text=True,
                          timeout=180)  # fmt: skip


def _launcher_view(argv: list[str], monkeypatch):
    """What `accelerate launch argv` makes of the arguments and config file: its own parser and
    validation, and the environment its launcher gives every process (set here)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    assert argv[0] == "launch"
    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv[1:]))
    if args.use_deepspeed:  # as launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.use_fsdp or args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        env = dict(os.environ)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return args, defaults


def _rank0(args) -> str:
    """The rank-0 address accelerate hands torchrun (a rendezvous endpoint, or master address and port)."""
    if getattr(args, "rdzv_endpoint", None):
        return args.rdzv_endpoint
    return f"{args.master_addr}:{args.master_port}"


LAYOUT = {"NUM_PROCESSES": "4", "NUM_MACHINES": "2", "MACHINE_RANK": "1", "MAIN_PROCESS_IP": "10.1.2.3",
          "MAIN_PROCESS_PORT": "29555"}  # fmt: skip


def test_single_run_launches_one_process_or_data_parallel_ones_on_this_machine(demo_model, demo_adapter, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    from accelerate.commands.config.config_args import load_config_from_file

    run_dir = export_run(train_run(demo_model, demo_adapter, tmp_path, "single"), tmp_path / "run")
    assert not (run_dir / "ds_config.json").exists()
    assert load_config_from_file(str(run_dir / "accelerate_config.yaml")).distributed_type == "NO"
    proc = _launch(run_dir, {})
    assert proc.returncode == 0, proc.stderr[-2000:]
    argv = shlex.split(proc.stdout)
    assert argv[-3:] == ["-m", "quailora_core.train", str(run_dir / "run.toml")]
    args, _ = _launcher_view(argv, monkeypatch)
    assert args.num_processes == 1 and not (args.multi_gpu or args.use_fsdp or args.use_deepspeed)
    proc = _launch(run_dir, {"NUM_PROCESSES": "2"})  # as before run kinds: data parallel on this machine
    assert proc.returncode == 0, proc.stderr[-2000:]
    args, _ = _launcher_view(shlex.split(proc.stdout), monkeypatch)
    assert args.multi_gpu and (args.nproc_per_node, args.num_machines) == ("2", 1)
    proc = _launch(run_dir, {"NUM_MACHINES": "2"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "--launch ddp" in lines[0], proc.stderr


def test_ddp_run_launches_the_processes_and_machines_of_the_environment(demo_model, demo_adapter, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    run_dir = export_run(train_run(demo_model, demo_adapter, tmp_path, "ddp"), tmp_path / "run")
    proc = _launch(run_dir, LAYOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    args, defaults = _launcher_view(shlex.split(proc.stdout), monkeypatch)
    assert defaults.distributed_type == "MULTI_GPU" and args.multi_gpu and not args.use_fsdp
    # what accelerate hands torchrun: 2 processes on each of 2 machines, this one node 1, rank 0 at the address
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("2", "2", 1)
    assert _rank0(args) == "10.1.2.3:29555"
    assert "ACCELERATE_USE_FSDP" not in os.environ
    readme = (run_dir / "README.md").read_text()
    assert "MACHINE_RANK=$SLURM_NODEID" in readme and "srun" in readme and "--machine_rank" in readme


def test_the_run_files_process_count_is_launch_shs_default_and_the_environment_overrides_it(
        demo_model, demo_adapter, tmp_path, monkeypatch):  # fmt: skip
    """[train] processes (the app's Processes field) is what launch.sh starts without NUM_PROCESSES."""
    for kind, count in (("single", 2), ("ddp", 3)):
        cfg = train_run(demo_model, demo_adapter, tmp_path, kind)
        cfg.train.processes = count
        run_dir = export_run(cfg, tmp_path / f"run-{kind}")
        assert RunConfig.load(run_dir / "run.toml").train.processes == count
        proc = _launch(run_dir, {})
        assert proc.returncode == 0, proc.stderr[-2000:]
        args, _ = _launcher_view(shlex.split(proc.stdout), monkeypatch)
        assert args.multi_gpu and args.nproc_per_node == str(count)
        proc = _launch(run_dir, {"NUM_PROCESSES": "1" if kind == "single" else "4"})
        args, _ = _launcher_view(shlex.split(proc.stdout), monkeypatch)
        assert args.num_processes == (1 if kind == "single" else 4)
        assert f"{count} processes ([train] processes in run.toml)" in (run_dir / "README.md").read_text()
    cfg = train_run(demo_model, demo_adapter, tmp_path, "ddp")
    cfg.train.processes = -1
    with pytest.raises(InputError, match="processes must be a whole number >= 0"):
        cfg.train.validate()


def test_fsdp_run_config_is_what_fsdp_qlora_needs_and_wraps_the_real_blocks(demo_model, sharded_adapter, tmp_path,
                                                                             monkeypatch):  # fmt: skip
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.dataclasses import get_module_class_from_name
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    cfg = train_run(demo_model, sharded_adapter, tmp_path, "fsdp")
    cfg.train.offload_params = True
    run_dir = export_run(cfg, tmp_path / "run")
    run = RunConfig.load(run_dir / "run.toml")
    assert (run.train.launch, run.quantization.quant_storage, run.model.dtype) == ("fsdp", "bfloat16", "bfloat16")
    proc = _launch(run_dir, LAYOUT)
    if torch.cuda.is_available():
        assert proc.returncode == 0, proc.stderr[-2000:]
        argv = shlex.split(proc.stdout)
    else:  # accelerate shards on GPUs only: the check refuses, in one line, before it starts CPU processes
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "has none" in lines[0] and 'launch = "ddp"' in lines[0], lines[0]
        argv = ["launch", *_echoed_arguments(run_dir, LAYOUT)]
    args, defaults = _launcher_view(argv, monkeypatch)
    assert args.use_fsdp and os.environ["ACCELERATE_USE_FSDP"] == "true"
    assert (args.nproc_per_node, args.nnodes, args.node_rank, _rank0(args)) == ("2", "2", 1, "10.1.2.3:29555")
    # rank 0 reads the weights, the others build on meta and receive them: accelerate builds that
    # plugin on a GPU only, so here those two come from the environment and the rest from the plugin
    env = os.environ
    assert (env["FSDP_CPU_RAM_EFFICIENT_LOADING"], env["FSDP_SYNC_MODULE_STATES"]) == ("true", "true")
    plugin = FullyShardedDataParallelPlugin(cpu_ram_efficient_loading=False, sync_module_states=False)
    assert plugin.fsdp_version == 1 and plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT and not plugin.use_orig_params
    assert plugin.cpu_offload.offload_params  # [train] offload_params
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    record = AdapterRecord.load(run_dir / "adapter")
    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.bfloat16,
                                                 quantization_config=record.quantization.bnb())  # fmt: skip
    cls = get_module_class_from_name(model, plugin.transformer_cls_names_to_wrap[0])
    assert cls is not None and cls is type(find_decoder_blocks(model).blocks[0])
    assert "bnb_4bit_quant_storage = bfloat16" in (run_dir / "README.md").read_text()


def test_deepspeed_run_config_is_zero3_qlora(demo_model, sharded_adapter, tmp_path, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    run_dir = export_run(train_run(demo_model, sharded_adapter, tmp_path, "deepspeed"), tmp_path / "run")
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["bf16"] == {"enabled": "auto"}  # the Trainer fills it: bf16 on a bf16 GPU
    launcher = (run_dir / "launch.sh").read_text()
    assert '--deepspeed_config_file "$HERE/ds_config.json"' in launcher
    if not HAS_DEEPSPEED:  # the check refuses before accelerate launch, in one line
        proc = _launch(run_dir, LAYOUT)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].endswith("pip install deepspeed"), proc.stderr
        argv = ["launch", *_echoed_arguments(run_dir, LAYOUT)]
    else:
        proc = _launch(run_dir, LAYOUT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        argv = shlex.split(proc.stdout)
    args, _ = _launcher_view(argv, monkeypatch)
    assert args.use_deepspeed and os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(run_dir / "ds_config.json")
    assert (args.nproc_per_node, args.nnodes, args.node_rank, _rank0(args)) == ("2", "2", 1, "10.1.2.3:29555")
    plugin = DeepSpeedPlugin()  # from the environment; its config checks reject conflicting settings
    assert plugin.zero_stage == 3 and plugin.zero3_init_flag and plugin.zero3_save_16bit_model
    assert plugin.hf_ds_config.is_zero3()


def _echoed_arguments(run_dir: Path, env: dict[str, str]) -> list[str]:
    """The accelerate arguments launch.sh builds, with its check skipped (DeepSpeed is not
    installed here, or there is no GPU to shard over, and the check rightly refuses): the script
    after the check line, run as is."""
    text = (run_dir / "launch.sh").read_text()
    script = text.replace('"$PYTHON" -m quailora_core.train "$HERE/run.toml" --check "$@"\n', "")
    assert script != text
    (run_dir / "launch-nocheck.sh").write_text(script)
    proc = _launch_script(run_dir / "launch-nocheck.sh", env)
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)[1:]


def _launch_script(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, "ACCELERATE": "echo", **env}
    return subprocess.run(["bash", str(script)], env=full, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------- the training process
def test_a_sharded_run_keeps_every_parameter_in_the_storage_dtype(demo_model, sharded_adapter):
    """FSDP flattens a block's parameters into one tensor of one dtype: peft's usual preparation
    upcasts the norms to float32 beside the bfloat16-stored 4-bit weights; the sharded kinds'
    does not, and the LoRA pairs still train."""
    from peft import PeftModel

    from quailora_core.model.base import load_quantized_base
    from quailora_core.train.run_kinds import optimizer_name, prepare_for_training

    record = AdapterRecord.load(sharded_adapter)
    usual = prepare_for_training(load_quantized_base(str(demo_model), record), "ddp", gradient_checkpointing=False)
    assert torch.float32 in {p.dtype for p in usual.parameters()}  # what would break FSDP's flattening
    model = prepare_for_training(load_quantized_base(str(demo_model), record), "fsdp", gradient_checkpointing=True)
    blocks = find_decoder_blocks(model).blocks
    assert {p.dtype for p in blocks.parameters()} == {torch.bfloat16}  # 4-bit weights stored as bf16, norms bf16
    assert not any(p.requires_grad for p in model.parameters()) and model.is_gradient_checkpointing
    peft = PeftModel.from_pretrained(model, str(sharded_adapter), is_trainable=True)
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert optimizer_name("fsdp", cuda=True) == "adamw_torch" and optimizer_name("single", cuda=True) == "paged_adamw_8bit"
