"""The steps of benchmarks/gpu_check.sh (one subcommand each) and its report.

Not meant to be run by hand: `gpu_check.sh` runs every step under its own `timeout`, in
its own process, records its exit status in `WORK/status.jsonl`, and finally runs `report`,
which merges the statuses with what each step wrote to `WORK/steps/<step>.json` into one
result file (`benchmarks/results/gpu_check[-tiny].json` and `.md`). A step that fails,
times out or is skipped still appears there, with its status and the tail of its log.

    preflight    versions, the GPU, free disk
    tests        python -m pytest -m cuda (the tests that need CUDA); pass / fail / skip counts
    train_init   a 1B-shaped random Llama (bf16) and `quailora init` on it
    train        `quailora train --json`: 30 steps; steps/s, peak GPU memory, final loss
    adapter_load the trained adapter on the 4-bit base as a user loads it (transformers +
                 BitsAndBytesConfig from quailora.json + peft); perplexity, finite logits
    eval         `quailora eval` on the trained adapter
    fsdp         FSDP-QLoRA through the exported run folder: `quailora init` with the 4-bit weights
                 stored as bfloat16 (and its self-check), `export-run --launch fsdp`, then its
                 launch.sh with NUM_PROCESSES = 2 (1 on a one-GPU machine): 10 steps, then the
                 trained adapter loaded back in one process (as adapter_load)
    deepspeed    the same with `--launch deepspeed` (ZeRO-3), when DeepSpeed is installed
    report       the result file

(The engine step is `gpu_llama8b.py --blocks 4 --json ...`, run by the shell script.)
Every step takes `--tiny` (tiny shapes, CPU is fine) so that the whole check can be tried
without a GPU; its figures are a smoke test of the script, not GPU figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import ROOT, machine  # noqa: E402
from gpu_llama8b import TINY  # noqa: E402

# The order of the steps in the result file; gpu_check.sh runs them in this order.
STEPS = ["preflight", "tests", "engine", "train_init", "train", "adapter_load", "eval", "fsdp", "deepspeed"]

# The reason gpu_check.sh gives a step this machine cannot run (no CUDA for FSDP, no DeepSpeed):
# skipped, but not a failure of the check.
NOT_HERE = "not on this machine: "

# A 1B-shaped Llama (Llama-3.2-1B's widths, 16 blocks, a 32000-word vocabulary, untied
# embeddings): ~1.1 B parameters, ~2.2 GB in bf16.
LLAMA_1B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=32000, rope_theta=500000.0, max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)  # fmt: skip
TINY_1B = TINY  # the CPU stand-in: the same tiny Llama as gpu_llama8b --tiny

# (GPU, tiny) settings of the training steps.
TRAIN = {
    False: dict(init_samples=32, init_seq_len=512, rank=16, steps=30, batch=4, seq_len=512, eval_samples=8),
    True: dict(init_samples=8, init_seq_len=64, rank=8, steps=30, batch=2, seq_len=64, eval_samples=4),
}


def _write(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")


def _quailora(*args: str) -> list[str]:
    """The `quailora` command of this Python (the package must be installed or importable)."""
    return [sys.executable, "-m", "quailora_core", *args]


def _events(cmd: list[str], log, env: dict[str, str] | None = None) -> tuple[int, list[tuple[float, dict]]]:
    """Run a `quailora ... --json` command (in `env`, else this environment); (exit code,
    [(seconds since start, event)]). Its stderr and any stdout line that is not JSON go to `log`."""
    t0 = time.perf_counter()
    events = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                log.write(line)
                continue
            if isinstance(event, dict) and "event" in event:
                events.append((time.perf_counter() - t0, event))
            log.write(line)
            log.flush()
    return proc.returncode, events


def _failed(events: list[tuple[float, dict]]) -> str | None:
    for _, e in events:
        if e["event"] == "Failed":
            return e.get("message", "failed")
    return None


# ---------------------------------------------------------------------------- preflight
def step_preflight(args) -> int:
    import bitsandbytes
    import peft
    import torch
    import transformers

    info = {"machine": machine(), "tiny": args.tiny}
    info["versions"] = {
        "torch": torch.__version__, "cuda_build": torch.version.cuda, "transformers": transformers.__version__,
        "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__,
    }  # fmt: skip
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name, "memory_gib": props.total_memory / 2**30, "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}", "bf16": torch.cuda.is_bf16_supported(),
        }  # fmt: skip
    info["workdir_free_gib"] = shutil.disk_usage(args.work).free / 2**30
    info["cpu_count"] = os.cpu_count()
    _write(args.out, info)
    print(json.dumps(info, indent=1, default=str))
    return 0


# ---------------------------------------------------------------------------- tests
def junit_counts(path: str | Path) -> dict:
    """passed / failed / errors / skipped / total from a pytest --junitxml file, and the
    names of the tests that failed or errored."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "total": 0, "failures": []}
    for suite in suites:
        for case in suite.iter("testcase"):
            counts["total"] += 1
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            if case.find("failure") is not None:
                counts["failed"] += 1
                counts["failures"].append(name)
            elif case.find("error") is not None:
                counts["errors"] += 1
                counts["failures"].append(name)
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    return counts


def step_tests(args) -> int:
    junit = Path(args.work) / "cuda-tests.xml"
    # the GUI tests (none needs CUDA) are left out so that a machine without Qt's system
    # libraries still collects; pytest-qt is not loaded for the same reason
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-p", "no:pytest-qt",
           "--ignore=tests/gui", f"--junitxml={junit}", "tests"]  # fmt: skip
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    out = {"command": " ".join(cmd[1:]), "pytest_exit_code": rc, "seconds": time.perf_counter() - t0}
    if junit.is_file():
        out.update(junit_counts(junit))
    _write(args.out, out)
    print(json.dumps(out, indent=1))
    if rc == 0 and not args.tiny and out.get("passed", 0) == 0:
        print("no CUDA test passed on a CUDA machine", file=sys.stderr)
        return 1
    return rc


# ---------------------------------------------------------------------------- training
def step_train_init(args) -> int:
    """A 1B-shaped random Llama in bf16 (built on the GPU, saved), random-word texts, and
    `quailora init` on it (the self-check is off here: the engine step runs it)."""
    import torch
    from gpu_llama8b import build_model, random_text

    cuda = torch.cuda.is_available()
    shape, s = (TINY_1B if args.tiny else LLAMA_1B), TRAIN[args.tiny]
    work = Path(args.work) / "train"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats = build_model(work / "model", shape, torch.device("cuda" if cuda else "cpu"), torch.bfloat16)
    vocab, seq = shape["vocab_size"], s["seq_len"]
    random_text(work / "calibration.txt", vocab, s["init_samples"] * s["init_seq_len"] + 4096, seed=1)
    # enough 'documents' for steps x batch training examples plus a 10 % validation split
    random_text(work / "train.txt", vocab, int(s["steps"] * s["batch"] * seq * 1.2), seed=2)
    random_text(work / "eval.txt", vocab, (s["eval_samples"] + 2) * seq, seed=3)
    build_s = time.perf_counter() - t0
    cmd = _quailora(
        "init", "--model", str(work / "model"), "--calibration", str(work / "calibration.txt"),
        "--samples", str(s["init_samples"]), "--seq-len", str(s["init_seq_len"]), "--heldout", "0",
        "--rank", str(s["rank"]), "--alpha", str(s["rank"]), "--dtype", "bfloat16", "--device", "auto",
        "--verify", "off", "--output", str(work / "adapter"), "--overwrite", "--json",
    )  # fmt: skip
    t1 = time.perf_counter()
    rc, events = _events(cmd, sys.stderr)
    out = {
        "shape": shape, "model": stats, "build_and_texts_seconds": build_s, "init_seconds": time.perf_counter() - t1,
        "init_command": " ".join(cmd[2:]), "init_exit_code": rc, "adapter": str(work / "adapter"),
    }  # fmt: skip
    finished = [e for _, e in events if e["event"] == "Finished"]
    if finished:
        summary = finished[-1].get("summary", {})
        out["init_summary"] = {k: summary.get(k) for k in (
            "layers", "mean_cal_err_before", "mean_cal_err_after", "wall_seconds", "device", "verify")}  # fmt: skip
    out["layers"] = sum(1 for _, e in events if e["event"] == "LayerResult")
    out["error"] = _failed(events)
    _write(args.out, out)
    print(json.dumps(out, indent=1, default=str))
    return rc if rc else (0 if finished else 1)


def train_summary(events: list[tuple[float, dict]], metrics: dict | None) -> dict:
    """steps/s (between the first and the last training step's events, so loading, the
    first step's warm-up and the final save are left out), the peak GPU memory the steps
    report, the final loss and what metrics.json says the run used."""
    steps = [(t, e) for t, e in events if e["event"] == "TrainStep"]
    out: dict = {"steps_reported": len(steps)}
    if len(steps) >= 2:
        (t_a, a), (t_b, b) = steps[0], steps[-1]
        out["steps_per_second"] = (b["step"] - a["step"]) / (t_b - t_a) if t_b > t_a else None
    memory = [e["gpu_memory_gb"] for _, e in steps if e.get("gpu_memory_gb") is not None]
    out["peak_gpu_allocated_gib"] = max(memory) if memory else None
    if steps:
        out["final_loss"] = steps[-1][1]["loss"]
        out["final_loss_finite"] = math.isfinite(steps[-1][1]["loss"])
        out["first_loss"] = steps[0][1]["loss"]
        out["tokens_per_second_last"] = steps[-1][1].get("tokens_per_second")
    if metrics:
        out["metrics"] = {k: metrics.get(k) for k in (
            "global_step", "device", "precision", "optim", "train_loss", "eval_loss", "perplexity",
            "first_eval_loss", "train_runtime", "wall_seconds", "tokens_seen")}  # fmt: skip
        if metrics.get("train_runtime"):
            out["steps_per_second_trainer"] = metrics["global_step"] / metrics["train_runtime"]
    return out


def step_train(args) -> int:
    s = TRAIN[args.tiny]
    work = Path(args.work) / "train"
    output = work / "trained"
    cmd = _quailora(
        "train", "--adapter", str(work / "adapter"), "--data", str(work / "train.txt"),
        "--max-steps", str(s["steps"]), "--batch-size", str(s["batch"]), "--seq-len", str(s["seq_len"]),
        "--eval-interval", str(s["steps"]), "--save-interval", str(s["steps"]), "--log-interval", "1",
        "--validation-fraction", "0.1", "--output", str(output), "--json",
    )  # fmt: skip
    rc, events = _events(cmd, sys.stderr)
    metrics_file = output / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    out = {"command": " ".join(cmd[2:]), "exit_code": rc, "trained_adapter": str(output / "adapter"),
           **train_summary(events, metrics), "error": _failed(events)}  # fmt: skip
    _write(args.out, out)
    print(json.dumps(out, indent=1, default=str))
    if rc:
        return rc
    if metrics is None or not out.get("final_loss_finite"):
        print("training finished without metrics.json or with a non-finite loss", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------- sharded runs
SHARDED = dict(init_samples=8, init_seq_len=256, rank=16, steps=10, batch=2, seq_len=512)


def step_sharded(args) -> int:
    """A sharded QLoRA run (`--kind fsdp` or `deepspeed`) of train_init's 1B-shaped model, as a
    user starts one: an adapter computed with bnb_4bit_quant_storage = bfloat16 (self-checked),
    the run folder of `export-run --launch KIND`, and its launch.sh on 2 GPUs (1 when the machine
    has one: the wrapping, the flattened bf16 storage and the sharded checkpoint still run)."""
    import torch

    kind, s = args.kind, SHARDED
    gpus = torch.cuda.device_count()
    nproc = max(1, min(2, gpus))
    src, work = Path(args.work) / "train", Path(args.work) / kind
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"kind": kind, "gpus": gpus, "num_processes": nproc}
    init = _quailora(
        "init", "--model", str(src / "model"), "--calibration", str(src / "calibration.txt"),
        "--samples", str(s["init_samples"]), "--seq-len", str(s["init_seq_len"]), "--heldout", "0",
        "--rank", str(s["rank"]), "--alpha", str(s["rank"]), "--dtype", "bfloat16", "--quant-storage", "bfloat16",
        "--device", "auto", "--verify", "sample", "--output", str(work / "adapter"), "--overwrite", "--json",
    )  # fmt: skip
    t0 = time.perf_counter()
    rc, events = _events(init, sys.stderr)
    out.update(init_exit_code=rc, init_seconds=time.perf_counter() - t0, init_error=_failed(events))
    if rc:
        _write(args.out, out)
        return rc
    record = json.loads((work / "adapter" / "quailora.json").read_text(encoding="utf-8"))
    out["quant_storage"] = record["quantization"].get("quant_storage")
    out["self_check_passed"] = record.get("verification", {}).get("passed")
    run = work / "run"
    export = _quailora(
        "export-run", "--adapter", str(work / "adapter"), "--data", str(src / "train.txt"), "--launch", kind,
        "--max-steps", str(s["steps"]), "--batch-size", str(s["batch"]), "--seq-len", str(s["seq_len"]),
        "--eval-interval", str(s["steps"]), "--save-interval", str(s["steps"]), "--log-interval", "1",
        "--validation-fraction", "0.1", "--output", str(run), "--overwrite", "--json",
    )  # fmt: skip
    rc, events = _events(export, sys.stderr)
    out.update(export_exit_code=rc, export_error=_failed(events))
    if rc:
        _write(args.out, out)
        return rc
    bindir = Path(sys.executable).parent
    env = {**os.environ, "NUM_PROCESSES": str(nproc), "PYTHON": sys.executable,
           "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    for name in ("NUM_MACHINES", "MACHINE_RANK", "MAIN_PROCESS_IP", "MAIN_PROCESS_PORT"):
        env.pop(name, None)
    launch = ["bash", str(run / "launch.sh"), "--json"]
    t0 = time.perf_counter()
    rc, events = _events(launch, sys.stderr, env)
    metrics_file = run / "output" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    out.update(launch_exit_code=rc, launch_seconds=time.perf_counter() - t0, **train_summary(events, metrics),
               error=_failed(events),
               trained_adapter=(run / "output" / "adapter" / "adapter_model.safetensors").is_file(),
               checkpoints=sorted(p.name for p in (run / "output").glob("checkpoint-*")))  # fmt: skip
    loaded_ok = False
    if not rc and out["trained_adapter"]:
        # the adapter rank 0 wrote from the gathered shards, loaded back in one process as a
        # user would: the initial adapter's tensors (names, shapes), moved by training, and it runs
        trained = run / "output" / "adapter"
        out.update(adapter_moved_by_training=_lora_b_moved(work / "adapter", trained))
        out["loaded"], loaded_ok = load_and_score(trained, src / "eval.txt", 4, s["seq_len"])
    _write(args.out, out)
    print(json.dumps(out, indent=1, default=str))
    if rc:
        return rc
    if not (out["trained_adapter"] and out.get("final_loss_finite") and out["self_check_passed"] and loaded_ok
            and out.get("adapter_moved_by_training")):  # fmt: skip
        print("the sharded run ended without a trained adapter that loads and runs, a finite loss or a passed "
              "self-check", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _lora_b_moved(initial: Path, trained: Path) -> bool:
    """Whether the trained adapter's files hold the initial one's tensors (the same names and
    shapes) with some lora_B changed: a save of the initial weights, or of one rank's shard, fails."""
    from safetensors.torch import load_file

    a = load_file(str(initial / "adapter_model.safetensors"))
    b = load_file(str(trained / "adapter_model.safetensors"))
    if {k: v.shape for k, v in a.items()} != {k: v.shape for k, v in b.items()}:
        return False
    return any(not a[k].equal(b[k]) for k in a if "lora_B" in k)


# ---------------------------------------------------------------------------- the adapter loaded back
def step_adapter_load(args) -> int:
    """Load the trained adapter as a user would, from its files alone: the base with
    transformers and the BitsAndBytesConfig stored in the adapter's quailora.json, then
    peft's PeftModel.from_pretrained; perplexity of held-out random words with and without
    the adapter, and whether every logit is finite."""
    s = TRAIN[args.tiny]
    work = Path(args.work) / "train"
    result, ok = load_and_score(work / "trained" / "adapter", work / "eval.txt", s["eval_samples"], s["seq_len"])
    _write(args.out, result)
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


def load_and_score(adapter: Path, eval_text: Path, n: int, seq: int) -> tuple[dict, bool]:
    """A trained adapter loaded back from its files alone (see step_adapter_load), its losses
    on `n` x `seq` tokens of `eval_text` with and without it; ok when every logit is finite, the
    file's lora_B is the model's and the base layers are bitsandbytes'."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    record = json.loads((adapter / "quailora.json").read_text(encoding="utf-8"))
    base_path = record["base_model"]["path"]
    q = record["quantization"]
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    bnb = BitsAndBytesConfig.from_dict(dict(q["bnb_config"]))
    base = AutoModelForCausalLM.from_pretrained(
        base_path, quantization_config=bnb, dtype=getattr(torch, q["load_dtype"]),
        **({"device_map": {"": 0}} if cuda else {}),
    )  # fmt: skip
    if not cuda:
        # CPU only (tiny mode): bitsandbytes' CPU repacking of 4-bit weights fails for widths that
        # are not a multiple of its block; quailora's own loader turns it off the same way
        from quailora_core.model.base import disable_cpu_packing

        disable_cpu_packing(base)
    model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    load_s = time.perf_counter() - t0
    # the adapter really is the trained one: a lora_B tensor on the model equals the file's
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    name = next(k for k in saved if "lora_B" in k)
    layer = model.base_model.model.get_submodule(name.split(".lora_B")[0].removeprefix("base_model.model."))
    matches = torch.equal(layer.lora_B["default"].weight.detach().cpu().to(saved[name].dtype), saved[name])
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    ids = tokenizer(eval_text.read_text(encoding="utf-8"))["input_ids"]
    x = torch.tensor(ids[: n * seq]).reshape(n, seq).to(model.device)
    finite, losses = True, {}
    t1 = time.perf_counter()
    with torch.no_grad():
        for label in ("with_adapter", "base_only"):
            total = 0.0
            for i in range(0, n, 4):
                if label == "base_only":
                    with model.disable_adapter():
                        out = model(input_ids=x[i : i + 4], labels=x[i : i + 4])
                else:
                    out = model(input_ids=x[i : i + 4], labels=x[i : i + 4])
                finite = finite and bool(torch.isfinite(out.logits).all())
                total += float(out.loss) * x[i : i + 4].shape[0]
            losses[label] = total / n
    result = {
        "adapter": str(adapter), "base": base_path, "bnb_config_from": "quailora.json quantization.bnb_config",
        "quantization": f"{q['bits']}-bit {q.get('quant_type', '')}".strip(), "load_dtype": q["load_dtype"],
        "device": str(model.device), "base_layer_type": type(layer.base_layer).__name__,
        "lora_tensors": len(saved), "lora_b_matches_file": matches, "tokens": n * seq,
        "loss_with_adapter": losses["with_adapter"], "loss_base_only": losses["base_only"],
        "perplexity_with_adapter": math.exp(min(losses["with_adapter"], 700)),
        "perplexity_base_only": math.exp(min(losses["base_only"], 700)),
        "logits_finite": finite, "load_seconds": load_s, "forward_seconds": time.perf_counter() - t1,
        "peak_gpu_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }  # fmt: skip
    ok = finite and matches and math.isfinite(losses["with_adapter"]) and result["base_layer_type"] in (
        "Linear4bit", "Linear8bitLt")  # fmt: skip
    return result, ok


def step_eval(args) -> int:
    s = TRAIN[args.tiny]
    work = Path(args.work) / "train"
    cmd = _quailora(
        "eval", "--adapter", str(work / "trained" / "adapter"), "--data", str(work / "eval.txt"),
        "--samples", str(s["eval_samples"]), "--seq-len", str(s["seq_len"]), "--batch-size", "4",
        "--device", "auto", "--json",
    )  # fmt: skip
    t0 = time.perf_counter()
    rc, events = _events(cmd, sys.stderr)
    finished = [e for _, e in events if e["event"] == "Finished"]
    out = {"command": " ".join(cmd[2:]), "exit_code": rc, "seconds": time.perf_counter() - t0,
           "error": _failed(events)}  # fmt: skip
    if finished:
        r = finished[-1].get("summary", {})
        out["report"] = {k: r.get(k) for k in (
            "device", "quantization", "samples", "seq_len", "tokens", "fp_perplexity", "quantized_perplexity",
            "adapter_perplexity", "gap_measurable", "gap_recovered", "seconds")}  # fmt: skip
        finite = all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k])
                     for k in ("fp_loss", "quantized_loss", "adapter_loss"))  # fmt: skip
        out["losses_finite"] = finite
    _write(args.out, out)
    print(json.dumps(out, indent=1, default=str))
    if rc:
        return rc
    return 0 if finished and out.get("losses_finite") else 1


# ---------------------------------------------------------------------------- report
def _tail(path: Path, lines: int = 25) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line[-300:] for line in text.replace("\r", "\n").splitlines() if line.strip()][-lines:]


def build_report(work: Path, tiny: bool, total_seconds: float | None = None, budget_s: int | None = None) -> dict:
    """Every step of STEPS with its status (from WORK/status.jsonl; 'not run' when the shell
    script recorded nothing for it), its figures (WORK/steps/<step>.json) and, unless it
    passed, the tail of its log."""
    statuses: dict[str, dict] = {}
    status_file = work / "status.jsonl"
    if status_file.is_file():
        for line in status_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                statuses[entry["step"]] = entry
    steps = []
    for name in STEPS:
        entry = {"step": name, **statuses.get(name, {"status": "not run"})}
        figures = work / "steps" / f"{name}.json"
        if figures.is_file():
            try:
                entry["result"] = json.loads(figures.read_text(encoding="utf-8"))
            except ValueError as exc:
                entry["result_error"] = f"unreadable {figures.name}: {exc}"
        if entry["status"] != "ok":
            entry["log_tail"] = _tail(work / "logs" / f"{name}.log")
        steps.append(entry)
    return {
        "benchmark": "gpu_check" + ("-tiny" if tiny else ""),
        "mode": "tiny (CPU smoke test of the script: NOT GPU figures)" if tiny else "GPU",
        "machine": machine(),
        "total_seconds": total_seconds,
        "budget_seconds": budget_s,
        "all_ok": all(s["status"] == "ok" or str(s.get("reason", "")).startswith(NOT_HERE) for s in steps),
        "steps": steps,
        "summary": summarize(steps),
    }


def _get(d: dict | None, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def summarize(steps: list[dict]) -> dict:
    """The headline figures of each step, where it got that far."""
    r = {s["step"]: s.get("result") for s in steps}
    est = _get(r["engine"], "full_model_estimate") or {}
    peak = est.get("gpu_peak_bytes")
    return {
        "cuda_tests": {k: _get(r["tests"], k) for k in ("passed", "failed", "errors", "skipped", "total")},
        "engine": {
            "built_blocks": est.get("built_blocks"), "full_blocks": est.get("full_blocks"),
            "seconds_per_block": est.get("seconds_per_block"),
            "measured_wall_seconds": _get(r["engine"], "wall_seconds"),
            "measured_peak_gpu_gib": _get(r["engine"], "peak_gpu_allocated_gib"),
            "full_model_wall_minutes_estimate": est["wall_seconds"] / 60 if est.get("wall_seconds") else None,
            "full_model_peak_gpu_gb_estimate": peak / 1e9 if peak else None,
            "goals": _get(r["engine"], "goals"),
        },  # fmt: skip
        "train": {
            "steps_per_second": _get(r["train"], "steps_per_second"),
            "peak_gpu_allocated_gib": _get(r["train"], "peak_gpu_allocated_gib"),
            "final_loss": _get(r["train"], "final_loss"),
            "final_loss_finite": _get(r["train"], "final_loss_finite"),
            "used": {k: _get(r["train"], "metrics", k) for k in ("device", "precision", "optim")},
        },  # fmt: skip
        "adapter_load": {k: _get(r["adapter_load"], k) for k in (
            "perplexity_with_adapter", "perplexity_base_only", "logits_finite", "lora_b_matches_file",
            "base_layer_type", "peak_gpu_allocated_gib")},  # fmt: skip
        "eval": _get(r["eval"], "report"),
        **{kind: _sharded_summary(r.get(kind)) for kind in ("fsdp", "deepspeed")},
    }


def _sharded_summary(step: dict | None) -> dict:
    summary = {k: _get(step, k) for k in (
        "num_processes", "quant_storage", "self_check_passed", "steps_reported", "final_loss", "final_loss_finite",
        "peak_gpu_allocated_gib", "trained_adapter", "adapter_moved_by_training")}  # fmt: skip
    summary["loaded"] = {k: _get(step, "loaded", k) for k in (
        "perplexity_with_adapter", "logits_finite", "lora_b_matches_file", "lora_tensors")}  # fmt: skip
    return summary


def _fmt(x, spec: str = ".3g") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def report_md(report: dict) -> str:
    s, tiny = report["summary"], report["benchmark"].endswith("-tiny")
    m = report["machine"]
    lines = [f"# GPU check{' (tiny mode)' if tiny else ''}", ""]
    if tiny:
        lines += ["**Tiny mode: a CPU smoke test of benchmarks/gpu_check.sh with tiny shapes. These are NOT GPU "
                  "figures.**", ""]  # fmt: skip
    lines += [f"{m['date']}; GPU: {m['gpu'] or 'none'}; {m['cpu']} ({m['cpu_count']} cores); torch {m['torch']}; "
              f"total {_fmt(report['total_seconds'], '.0f')} s of a {_fmt(report['budget_seconds'])} s budget.", "",
              "| step | status | seconds | step budget (s) |", "|---|---|---:|---:|"]  # fmt: skip
    for st in report["steps"]:
        status = st["status"] + (f" ({st['reason']})" if st.get("reason") else "")
        lines.append(f"| {st['step']} | {status} | {_fmt(st.get('seconds'), '.1f')} | {_fmt(st.get('budget_s'))} |")
    t, e, tr, a = s["cuda_tests"], s["engine"], s["train"], s["adapter_load"]
    lines += [
        "",
        f"- CUDA tests (`pytest -m cuda`): {_fmt(t['passed'])} passed, {_fmt(t['failed'])} failed, "
        f"{_fmt(t['errors'])} errors, {_fmt(t['skipped'])} skipped of {_fmt(t['total'])}",
        f"- engine, {_fmt(e['built_blocks'])} of {_fmt(e['full_blocks'])} blocks: {_fmt(e['seconds_per_block'])} s "
        f"per block, measured wall {_fmt(e['measured_wall_seconds'])} s and peak GPU "
        f"{_fmt(e['measured_peak_gpu_gib'])} GiB; whole model (estimate): "
        f"{_fmt(e['full_model_wall_minutes_estimate'])} min (goal < 10), "
        f"{_fmt(e['full_model_peak_gpu_gb_estimate'])} GB (goal < 12)",
        f"- training (30 steps): {_fmt(tr['steps_per_second'])} steps/s, peak GPU {_fmt(tr['peak_gpu_allocated_gib'])}"
        f" GiB, final loss {_fmt(tr['final_loss'], '.4f')} (finite: {_fmt(tr['final_loss_finite'])}); used "
        f"{_fmt(tr['used']['device'])}, {_fmt(tr['used']['precision'])}, {_fmt(tr['used']['optim'])}",
        f"- adapter loaded back ({_fmt(a['base_layer_type'])} base + peft): perplexity {_fmt(a['perplexity_with_adapter'])}"
        f" (base only {_fmt(a['perplexity_base_only'])}), logits finite: {_fmt(a['logits_finite'])}, trained "
        f"weights loaded: {_fmt(a['lora_b_matches_file'])}",
    ]  # fmt: skip
    for kind in ("fsdp", "deepspeed"):
        k = s[kind]
        if k["num_processes"] is not None:
            lines.append(f"- {kind} (launch.sh, {_fmt(k['num_processes'])} processes, quant storage "
                         f"{_fmt(k['quant_storage'])}, self-check passed: {_fmt(k['self_check_passed'])}): "
                         f"{_fmt(k['steps_reported'])} step events, final loss {_fmt(k['final_loss'], '.4f')} "
                         f"(finite: {_fmt(k['final_loss_finite'])}), trained adapter: {_fmt(k['trained_adapter'])}, "
                         f"moved by training: {_fmt(k['adapter_moved_by_training'])}; loaded back in one process: "
                         f"{_fmt(k['loaded']['lora_tensors'])} LoRA tensors, perplexity "
                         f"{_fmt(k['loaded']['perplexity_with_adapter'])}, logits finite: "
                         f"{_fmt(k['loaded']['logits_finite'])}")
    ev = s["eval"]
    if ev:
        lines.append(f"- `quailora eval`: perplexity fp {_fmt(ev.get('fp_perplexity'))}, quantized "
                     f"{_fmt(ev.get('quantized_perplexity'))}, + adapter {_fmt(ev.get('adapter_perplexity'))} "
                     f"on {_fmt(ev.get('device'))}")  # fmt: skip
    lines += ["", "Random weights and random-word text: only cost and mechanics are meaningful, not the losses.", ""]
    for st in report["steps"]:
        if st.get("log_tail") and st["status"] != "skipped":
            lines += [f"## {st['step']}: {st['status']} (end of its log)", "", "```", *st["log_tail"], "```", ""]
    return "\n".join(lines)


def step_report(args) -> int:
    work = Path(args.work)
    report = build_report(work, args.tiny, args.total_seconds, args.budget)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check" + ("-tiny" if args.tiny else "")
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    (out_dir / f"{stem}.md").write_text(report_md(report), encoding="utf-8")
    print(f"wrote {out_dir / stem}.json and .md")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["preflight", "tests", "train_init", "train", "adapter_load", "eval", "sharded",
                                    "report"])  # fmt: skip
    p.add_argument("--kind", choices=["fsdp", "deepspeed"], default="fsdp", help="sharded: the run kind")
    p.add_argument("--work", required=True, help="the check's work folder")
    p.add_argument("--out", help="where the step writes its figures (JSON)")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"), help="report: where it goes")
    p.add_argument("--total-seconds", type=float, default=None)
    p.add_argument("--budget", type=int, default=None)
    args = p.parse_args(argv)
    if args.step != "report" and not args.out:
        p.error("--out is required")
    return globals()[f"step_{args.step}"](args)


if __name__ == "__main__":
    sys.exit(main())
