"""benchmarks/gpu_check.sh, the prepared GPU check, in pieces.

Its whole tiny mode (`gpu_check.sh --tiny`) takes about 1.5 minutes on two busy CPU cores,
too long for the suite, so the tests here run the script on a selection of steps (the
engine step end to end, at tiny shapes), its refusals, and the report's merging and the
engine's extrapolation on made-up inputs. Run the full tiny mode by hand:
`benchmarks/gpu_check.sh --tiny` (docs/benchmarks.md, "GPU check").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_llama8b  # noqa: E402

needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and timeout")  # fmt: skip


def run_script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("QUAILORA_GPU_CHECK_TINY", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@needs_bash
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_and_without_tiny_it_stops_at_once_with_exit_code_2(tmp_path):
    done = run_script("--out-dir", str(tmp_path / "out"), "--workdir", str(tmp_path / "work"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0] and "--tiny" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


@needs_bash
def test_a_bad_option_is_refused():
    done = run_script("--no-such-option")
    assert done.returncode == 2 and "unknown option --no-such-option" in done.stderr


@needs_bash
def test_tiny_engine_step_end_to_end_and_every_step_in_the_result_file(tmp_path):
    out = tmp_path / "out"
    done = run_script("--tiny", "--steps", "preflight,engine", "--out-dir", str(out),
                      "--workdir", str(tmp_path / "work"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr  # every selected step passed
    assert not (out / "gpu_check.json").exists()  # the tiny mode never overwrites the GPU figures
    report = json.loads((out / "gpu_check-tiny.json").read_text())
    assert [s["step"] for s in report["steps"]] == gpu_check.STEPS
    status = {s["step"]: s for s in report["steps"]}
    assert all(s["status"] in ("ok", "failed", "timeout", "skipped") for s in report["steps"])
    assert status["preflight"]["status"] == "ok" and status["engine"]["status"] == "ok", done.stdout
    for name in ("tests", "train_init", "train", "adapter_load", "eval"):
        assert status[name]["status"] == "skipped" and status[name]["reason"] == "not selected (--steps)"
    assert report["all_ok"] is False and "NOT GPU figures" in report["mode"]  # not every step ran
    engine = status["engine"]["result"]
    est = engine["full_model_estimate"]
    assert est["built_blocks"] == 2 and est["full_blocks"] == 8 and engine["layers"] == 14
    assert len(engine["phases"]["block_seconds"]) == 2 and est["wall_seconds"] > 0
    assert report["summary"]["engine"]["seconds_per_block"] == est["seconds_per_block"]
    assert status["preflight"]["result"]["versions"]["torch"] == torch.__version__
    md = (out / "gpu_check-tiny.md").read_text()
    assert "NOT GPU figures" in md and all(f"| {name} |" in md for name in gpu_check.STEPS)
    assert not (tmp_path / "work" / "engine" / "model").exists()  # the 8B-shaped model does not stay on disk


@needs_bash
def test_no_time_left_skips_every_step_and_still_writes_the_result(tmp_path):
    done = run_script("--tiny", "--budget", "0", "--out-dir", str(tmp_path), "--workdir", str(tmp_path / "w"))
    assert done.returncode == 1
    report = json.loads((tmp_path / "gpu_check-tiny.json").read_text())
    assert {s["status"] for s in report["steps"]} == {"skipped"}
    reasons = {s["step"]: s["reason"] for s in report["steps"]}
    assert reasons["preflight"] == reasons["train_init"] == "no time left in the 0 s budget"
    # a step whose input step did not run is skipped, not failed
    assert reasons["train"] == "needs train_init, which is skipped"
    assert reasons["eval"] == "needs train, which is skipped"


@needs_bash
def test_sharded_runs_are_skipped_without_cuda_and_do_not_fail_the_check(tmp_path):
    """FSDP / DeepSpeed with bitsandbytes need CUDA: the tiny mode records them as not runnable
    here, and such a skip (like DeepSpeed not installed on a GPU machine) fails nothing."""
    done = run_script("--tiny", "--steps", "fsdp,deepspeed", "--out-dir", str(tmp_path), "--workdir",
                      str(tmp_path / "w"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "gpu_check-tiny.json").read_text())
    status = {s["step"]: s for s in report["steps"]}
    for kind in ("fsdp", "deepspeed"):
        assert status[kind]["status"] == "skipped" and status[kind]["reason"].startswith(gpu_check.NOT_HERE)
        assert "CUDA" in status[kind]["reason"]
    assert status["train"]["reason"] == "not selected (--steps)" and report["all_ok"] is False


def test_report_keeps_failures_with_their_log_and_marks_steps_never_recorded(tmp_path):
    (tmp_path / "steps").mkdir()
    (tmp_path / "logs").mkdir()
    lines = [
        {"step": "preflight", "status": "ok", "rc": 0, "seconds": 1.0, "timeout_s": 30, "budget_s": 30, "reason": ""},
        {"step": "tests", "status": "failed", "rc": 1, "seconds": 9.0, "timeout_s": 75, "budget_s": 75, "reason": ""},
        {"step": "engine", "status": "timeout", "rc": 124, "seconds": 190.0, "timeout_s": 190, "budget_s": 190,
         "reason": ""},
    ]  # fmt: skip
    (tmp_path / "status.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "logs" / "tests.log").write_text("collected 6 items\nFAILED tests/test_cuda.py::x - boom\n")
    (tmp_path / "steps" / "tests.json").write_text(json.dumps({"passed": 5, "failed": 1, "total": 6}))
    report = gpu_check.build_report(tmp_path, tiny=False, total_seconds=200.0, budget_s=420)
    status = {s["step"]: s for s in report["steps"]}
    assert [s["step"] for s in report["steps"]] == gpu_check.STEPS
    assert status["tests"]["log_tail"][-1].endswith("boom") and "log_tail" not in status["preflight"]
    assert status["engine"]["status"] == "timeout" and status["eval"]["status"] == "not run"
    assert report["summary"]["cuda_tests"]["failed"] == 1 and report["all_ok"] is False
    md = gpu_check.report_md(report)
    assert "| engine | timeout |" in md and "boom" in md and "NOT GPU" not in md


def test_junit_counts(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_cuda" name="a"/>'
        '<testcase classname="tests.test_cuda" name="b"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_cuda" name="c"><skipped message="needs CUDA"/></testcase>'
        '<testcase classname="tests.test_cuda" name="d"><error message="e"/></testcase>'
        "</testsuite></testsuites>"
    )
    counts = gpu_check.junit_counts(xml)
    assert {k: counts[k] for k in ("passed", "failed", "skipped", "errors", "total")} == {
        "passed": 1, "failed": 1, "skipped": 1, "errors": 1, "total": 4}  # fmt: skip
    assert counts["failures"] == ["tests.test_cuda::b", "tests.test_cuda::d"]


def test_train_summary_from_events_and_metrics():
    events = [(1.0, {"event": "Stage", "name": "load"})] + [
        (10.0 + 0.5 * i, {"event": "TrainStep", "step": i, "loss": 10.0 - i / 10, "gpu_memory_gb": 3.0 + i / 100,
                          "tokens_per_second": 4000.0}) for i in range(1, 31)
    ]  # fmt: skip
    metrics = {"global_step": 30, "device": "cuda", "precision": "bf16", "optim": "paged_adamw_8bit",
               "train_runtime": 20.0}  # fmt: skip
    s = gpu_check.train_summary(events, metrics)
    assert s["steps_per_second"] == pytest.approx(2.0)  # 29 steps in 14.5 s between the first and the last
    assert s["peak_gpu_allocated_gib"] == pytest.approx(3.3)
    assert s["final_loss"] == pytest.approx(7.0) and s["final_loss_finite"] is True
    assert s["metrics"]["optim"] == "paged_adamw_8bit" and s["steps_per_second_trainer"] == pytest.approx(1.5)


def test_engine_extrapolation_from_a_few_blocks():
    timeline = {
        "before_seconds": 10.0, "block_seconds": [9.0, 5.0, 5.0, 5.0], "tail_seconds": 20.0,
        "before_peak": 3e9, "block_peaks": [6e9, 6e9, 6e9, 6e9], "tail_peak": 4e9,
    }  # fmt: skip
    est = gpu_llama8b.extrapolate(timeline, 4, 32, param_ratio=4.0, q_block_bytes=0.1e9)
    assert est["seconds_per_block"] == 5.0  # the first block's warm-up is kept apart
    assert est["wall_seconds"] == pytest.approx(30 * 4.0 + 9.0 + 31 * 5.0)
    assert est["gpu_peak_bytes"] == pytest.approx(max(6e9, 4e9 + 28 * 0.1e9))
    growing = dict(timeline, block_peaks=[6e9, 6.1e9, 6.2e9, 6.3e9])
    est = gpu_llama8b.extrapolate(growing, 4, 32, param_ratio=4.0, q_block_bytes=0.1e9)
    assert est["gpu_block_peak_growth_bytes"] == pytest.approx(0.1e9)
    assert est["gpu_peak_bytes"] == pytest.approx(6.3e9 + 28 * 0.1e9)
    cpu = dict(timeline, before_peak=None, block_peaks=None, tail_peak=None)
    assert gpu_llama8b.extrapolate(cpu, 4, 32, 4.0, 0.1e9)["gpu_peak_bytes"] is None
    with pytest.raises(ValueError):
        gpu_llama8b.extrapolate(timeline, 3, 32, 4.0, 0.1e9)


def test_shape_arithmetic_matches_a_built_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {**gpu_llama8b.TINY, "num_hidden_layers": 2}
    model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False))
    assert gpu_llama8b.llama_parameters(shape, 2) == sum(p.numel() for p in model.parameters())
    block = model.model.layers[0]
    linear = sorted(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    assert sorted(gpu_llama8b.block_linear_numels(shape)) == linear
    eight_b = gpu_llama8b.llama_parameters(gpu_llama8b.LLAMA3_8B, 32)
    assert 8.0e9 < eight_b < 8.1e9  # Llama-3-8B: 8.03 B
    assert 0.11e9 < gpu_llama8b.quantized_block_bytes(gpu_llama8b.LLAMA3_8B) < 0.12e9


def test_the_sharded_steps_check_of_the_written_adapter(demo_adapter, text_file, tmp_path):
    """What the fsdp / deepspeed steps check on the adapter rank 0 wrote, here on the demo
    adapter (the runs themselves need CUDA): loaded back in one process it runs, and it holds
    the initial adapter's tensors with lora_B moved: the initial weights saved again, or one
    rank's shard, would not pass."""
    from safetensors.torch import load_file, save_file

    result, ok = gpu_check.load_and_score(demo_adapter, text_file, 2, 16)
    assert ok and result["logits_finite"] and result["lora_b_matches_file"] and result["lora_tensors"] > 0
    assert not gpu_check._lora_b_moved(demo_adapter, demo_adapter)  # nothing trained
    weights = load_file(str(demo_adapter / "adapter_model.safetensors"))
    first_b = next(k for k in sorted(weights) if "lora_B" in k)
    for name, tensors, moved in (("trained", {**weights, first_b: weights[first_b] + 1}, True),
                                 ("shard", {**weights, first_b: weights[first_b][:1] + 1}, False),
                                 ("lost", {k: v + 1 for k, v in weights.items() if k != first_b}, False)):  # fmt: skip
        folder = tmp_path / name
        folder.mkdir()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        assert gpu_check._lora_b_moved(demo_adapter, folder) is moved, name
