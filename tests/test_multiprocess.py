"""Data-parallel training in two processes on the CPU: `accelerate launch --num_processes 2`
(torchrun, gloo), as an exported run's launch.sh starts it with NUM_PROCESSES=2.

MULTI-PROCESS END-TO-END TESTS (marker `multiprocess`; `-m "not multiprocess"` skips them):
each starts two training processes of the demo model (one CPU thread each). Every wait polls
with a long deadline, nothing depends on how fast the machine is: on an idle machine the
module takes well under two minutes, on a loaded one longer.

What they show, as a user sees it:
* a stop that reaches only rank 0 (the app or a user signals one process) stops both ranks at
  the same step, with one checkpoint; `--resume` continues the step count from it;
* Ctrl-C in launch.sh's terminal (SIGINT to its process group; torchrun's agent, which starts
  each rank in a session of its own, forwards it to them) is one clean stop with a checkpoint;
* the run ends with one trained adapter, the same on every rank (each rank's digest of its
  LoRA weights, compared with the saved file's), and one copy of every event and file.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import make_config
from safetensors.torch import load_file

from quailora_core.events import Failed, Finished, RankProgress, Stage, TrainStep, event_from_json
from quailora_core.train.export import export_run
from quailora_core.train.processes import weights_digest

pytestmark = pytest.mark.multiprocess

DEADLINE = 900  # seconds for any one launch: generous, a loaded machine is slow, not wrong
PAIRS = [{"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}."} for i in range(16)]
BIN = Path(sys.executable).parent
LAUNCHED: list[Launch] = []


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    """A failed test must not leave training processes behind."""
    yield
    while LAUNCHED:
        LAUNCHED.pop().kill()


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable,
            "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(DEADLINE),  # the launcher must not kill a slow, clean stop
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip


@pytest.fixture
def run_dir(demo_model, demo_adapter, tmp_path) -> Path:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS), encoding="utf-8")
    cfg = make_config(demo_model, demo_adapter)
    t = cfg.train
    t.data, t.seq_len, t.batch_size, t.max_steps = str(data), 32, 2, 200  # far more steps than a test waits for
    t.eval_interval, t.save_interval, t.validation_fraction, t.tracking = 1000, 1000, 0.25, "none"
    return export_run(cfg, tmp_path / "run")


class Launch:
    """One launcher in its own process group; its JSON events read as they come."""

    def __init__(self, command: list[str], cwd: Path, err: Path, **env: str) -> None:
        self.err_path = err
        self._err = err.open("w")
        self.proc = subprocess.Popen(command, cwd=cwd, env={**_env(), **env}, stdout=subprocess.PIPE, stderr=self._err,
                                     text=True, start_new_session=True)  # fmt: skip
        LAUNCHED.append(self)
        self.events: list = []
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _take(self, timeout: float) -> bool:
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            return True
        if line is None:
            return False
        self.lines.append(line)
        self.events.append(event_from_json(line))  # stdout holds JSON events only
        return True

    def wait_for_step(self, step: int) -> None:
        deadline = time.monotonic() + DEADLINE
        while not any(isinstance(e, TrainStep) and e.step >= step for e in self.events):
            assert time.monotonic() < deadline, f"no step {step} in time:\n{self.stderr()[-3000:]}"
            assert self._take(1.0), f"the launch ended before step {step}:\n{self.stderr()[-3000:]}"

    def kill(self) -> None:
        """End the launcher and its ranks (each rank is in a session of its own)."""
        for pid in self.rank_pids().values():
            os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def finish(self) -> int:
        try:
            rc = self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the launch did not end in {DEADLINE} s (a rank waiting forever?):\n{self.stderr()[-3000:]}")
        while self._take(5.0):
            pass
        self._err.close()
        return rc

    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.err_path.read_text(errors="replace")

    def rank_pids(self) -> dict[int, int]:
        """The training processes under the launcher, by their RANK."""
        ranks = {}
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return ranks
        for child in children:
            try:
                if "quailora_core.train" in " ".join(child.cmdline()) and "RANK" in child.environ():
                    ranks[int(child.environ()["RANK"])] = child.pid
            except psutil.NoSuchProcess:
                continue
        return ranks


def accelerate(run_dir: Path, *flags: str) -> list[str]:
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0",
            "-m", "quailora_core.train", str(run_dir / "run.toml"), "--json", *flags]  # fmt: skip


def cancelled_steps(stderr: str) -> list[int]:
    """The step each rank says it stopped at (every rank prints its own error line)."""
    return [int(m) for m in re.findall(r"error: Training was cancelled at step (\d+)", stderr)]


def one_of_each(events) -> None:
    """Rank 0 alone speaks: no event twice (rank 1's copies would repeat the load, the steps...)."""
    assert len([e for e in events if isinstance(e, Stage) and e.name == "load"]) == 1, events
    steps = [e.step for e in events if isinstance(e, TrainStep)]
    assert steps == sorted(set(steps)), steps


def every_rank_reports(events) -> None:
    """Each logged step also carries both processes' own figures (what the app's per-process
    table shows): gathered from the two ranks at that step, each its own measurement."""
    steps = [e.step for e in events if isinstance(e, TrainStep)]
    progress = [e for e in events if isinstance(e, RankProgress)]
    assert [e.step for e in progress] == steps, (steps, progress)
    for event in progress:
        assert [r.rank for r in event.ranks] == [0, 1] and {r.step for r in event.ranks} == {event.step}
        assert all(r.device == "cpu" and r.host and r.gpu_memory_gb is None for r in event.ranks)
        assert all(r.seconds_per_step > 0 and r.ram_gb > 0.05 for r in event.ranks), event


def test_a_stop_reaching_rank_0_only_stops_both_ranks_and_resume_continues(run_dir, tmp_path):
    launch = Launch(accelerate(run_dir), tmp_path, tmp_path / "first.err")
    launch.wait_for_step(2)
    ranks = launch.rank_pids()
    assert sorted(ranks) == [0, 1], ranks  # two training processes, really
    os.kill(ranks[0], signal.SIGTERM)  # rank 1 hears nothing: it must learn it from rank 0
    assert launch.finish() != 0
    err = launch.stderr()
    stopped = cancelled_steps(err)
    assert len(stopped) == 2 and stopped[0] == stopped[1], err[-3000:]  # both ranks, the same step
    step = stopped[0]
    out = run_dir / "output"
    assert sorted(p.name for p in out.iterdir()) == [f"checkpoint-{step}", "training_run.json"]  # no adapter yet
    state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
    assert state["global_step"] == step
    one_of_each(launch.events)
    every_rank_reports(launch.events)
    failed = [e for e in launch.events if isinstance(e, Failed)]
    assert len(failed) == 1 and f"step {step}" in failed[0].message  # one Failed line, from rank 0

    resumed = Launch(accelerate(run_dir, "--resume", "--max-steps", str(step + 2)), tmp_path, tmp_path / "resume.err")
    assert resumed.finish() == 0, resumed.stderr()[-3000:]
    events = resumed.events
    one_of_each(events)
    assert [e.step for e in events if isinstance(e, TrainStep)] == [step + 1, step + 2]  # the count goes on
    every_rank_reports(events)
    finished = [e for e in events if isinstance(e, Finished)]
    assert len(finished) == 1 and finished[0].output_dir == str(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == step + 2 and metrics["resumed_from"] == f"checkpoint-{step}"
    saved = weights_digest(load_file(str(out / "adapter" / "adapter_model.safetensors")))
    assert metrics["processes"] == 2 and metrics["adapter_digests"] == [saved, saved]  # every rank's = the file
    record = json.loads((out / "training_run.json").read_text())  # written once, by rank 0, when it started
    assert record["adapter"] == str(run_dir / "adapter")
    assert sorted(p.name for p in out.iterdir()) == ["adapter", f"checkpoint-{step}", f"checkpoint-{step + 2}",
                                                     "metrics.json", "training_run.json"]  # fmt: skip
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no half-written leftovers


def test_ctrl_c_to_launch_sh_with_two_processes_is_one_clean_stop(run_dir, tmp_path):
    """The terminal's Ctrl-C (SIGINT to the whole process group, as the app's SIGTERM is) through
    launch.sh, which must start two processes on a machine without GPUs (accelerate starts one
    unless told --multi_gpu). The launcher forwards the signal to each rank: one clean stop."""
    command = ["bash", str(run_dir / "launch.sh"), "--json"]
    launch = Launch(command, tmp_path, tmp_path / "launch.err", NUM_PROCESSES="2")
    launch.wait_for_step(1)
    assert sorted(launch.rank_pids()) == [0, 1]
    os.killpg(launch.proc.pid, signal.SIGINT)
    assert launch.finish() != 0
    err = launch.stderr()
    stopped = cancelled_steps(err)
    assert len(stopped) == 2 and stopped[0] == stopped[1], err[-3000:]
    assert "interrupted." not in err
    assert (run_dir / "output" / f"checkpoint-{stopped[0]}" / "trainer_state.json").is_file()
    one_of_each(launch.events)
