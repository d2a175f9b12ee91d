"""The job queue: a shared file that survives restarts and concurrent writers, sweeps, a runner
that takes jobs in order and stops a cancelled one, and `quailora queue` on the demo model."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_config

from quailora_core.cli import main
from quailora_core.errors import InputError
from quailora_core.events import CancelToken, JobUpdate, LayerResult, TrainStep
from quailora_core.jobs import JobQueue, init_job, run_queue, sweep_jobs, train_job
from quailora_core.jobs.job import Job

TINY = ["--samples", "4", "--seq-len", "32", "--heldout", "1", "--rank", "4", "--method", "exact", "--device", "cpu",
        "--verify", "off"]  # fmt: skip


def tiny_config(demo_model, output):
    cfg = make_config(demo_model, output)
    cfg.calibration.samples, cfg.calibration.seq_len, cfg.calibration.heldout_samples = 4, 32, 1
    cfg.init.method, cfg.init.verify, cfg.lora.rank, cfg.lora.targets = "exact", "off", 4, ["q_proj"]
    return cfg


@pytest.fixture
def queue(tmp_path) -> JobQueue:
    return JobQueue(tmp_path / "queue.json")


def job(tmp_path, name: str) -> Job:
    """A queued job without the model: the file operations do not look inside the config."""
    return Job("init", {"output": str(tmp_path / name)}, name, output=str(tmp_path / name))


def _append(path: str, prefix: str, count: int) -> None:
    q = JobQueue(path)
    for i in range(count):
        with q.edit() as state:
            state.jobs.append(Job("init", {}, f"{prefix}{i}", output=f"/out/{prefix}{i}"))


# ---------------------------------------------------------------------------- the file
def test_jobs_are_kept_in_order_and_survive_a_new_reader(queue, demo_model, tmp_path):
    a = queue.add([init_job(tiny_config(demo_model, tmp_path / "a"), "first")])[0]
    b = queue.add([init_job(tiny_config(demo_model, tmp_path / "b"))])[0]
    again = JobQueue(queue.path)  # another process, or the app after a restart
    assert [(j.id, j.label, j.state) for j in again.jobs()] == [(a.id, "first", "queued"), (b.id, b.label, "queued")]
    assert b.label == "b (r4 exact 4-bit)" and b.output == str(tmp_path / "b")
    assert again.jobs()[1].config["lora"]["rank"] == 4

    again.move(b.id, 0)
    assert [j.id for j in queue.jobs()] == [b.id, a.id]
    queue.move(b.id[:4], 99)  # a prefix names a job; a position past the end is the end
    assert [j.id for j in queue.jobs()] == [a.id, b.id]


def test_bad_jobs_are_refused_before_the_file_is_touched(queue, demo_model, tmp_path):
    bad = tiny_config(demo_model, tmp_path / "a")
    bad.lora.rank = 0
    with pytest.raises(InputError, match="rank"):
        init_job(bad)
    good = init_job(tiny_config(demo_model, tmp_path / "a"))
    broken = Job("init", {**good.config, "lora": {"rank": 0}}, output=str(tmp_path / "c"))
    with pytest.raises(InputError, match="rank"):
        queue.add([good, broken])  # one bad job adds none of them
    assert not queue.path.exists()
    queue.add([good])
    with pytest.raises(InputError, match="already writes"):  # two queued runs, one folder
        queue.add([init_job(tiny_config(demo_model, tmp_path / "a"))])
    assert len(queue.jobs()) == 1


def test_cancel_pause_clear_retry_remove(queue, tmp_path):
    a, b, c = job(tmp_path, "a"), job(tmp_path, "b"), job(tmp_path, "c")
    with queue.edit() as state:
        state.jobs += [a, b, c]
    assert queue.cancel(a.id).state == "cancelled"
    with pytest.raises(InputError, match="already ended"):
        queue.cancel(a.id)
    assert queue.retry(a.id).state == "queued" and queue.find(a.id).message == ""
    assert [j.id for j in queue.jobs()] == [b.id, c.id, a.id]  # queued again, at the end
    queue.set_paused(True)
    assert queue.read().paused and queue.claim_next(os.getpid()) is None  # paused: nothing is taken
    queue.set_paused(False)
    assert queue.claim_next(os.getpid()).id == b.id and queue.find(b.id).state == "running"
    assert queue.cancel(b.id).state == "cancelling"  # the running job: its runner stops it
    with pytest.raises(InputError, match="running"):
        queue.remove(b.id)
    queue.finish(b.id, "cancelled", "stopped")
    assert queue.clear() == 1 and [j.id for j in queue.jobs()] == [c.id, a.id]
    assert queue.remove(c.id).id == c.id and [j.id for j in queue.jobs()] == [a.id]
    with pytest.raises(InputError, match="No job"):
        queue.cancel("ffffffff")


def test_two_processes_appending_at_once_lose_no_job(queue):
    ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    workers = [ctx.Process(target=_append, args=(str(queue.path), p, 40)) for p in ("x", "y")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    labels = sorted(j.label for j in queue.jobs())
    assert labels == sorted([f"x{i}" for i in range(40)] + [f"y{i}" for i in range(40)])
    assert not [p for p in queue.path.parent.iterdir() if ".tmp-" in p.name]


def test_a_job_whose_runner_died_reads_as_interrupted_and_can_be_retried(queue, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a runner that was killed: its pid is gone
    with queue.edit() as state:
        state.jobs.append(job(tmp_path, "a"))
        state.runner = gone.pid
    assert queue.claim_next(gone.pid).state == "running"
    stale = queue.find(queue.jobs()[0].id)
    assert stale.state == "failed" and "Interrupted" in stale.message and queue.read().runner is None
    assert JobQueue(queue.path).retry(stale.id).state == "queued"  # and the next runner takes it again
    queue.attach_runner(os.getpid())  # the dead runner no longer holds the queue
    queue.detach_runner(os.getpid())
    # after a restart a pid is reused: a live process with the recorded pid but another start is not the runner
    assert queue.claim_next(os.getpid()).state == "running" and queue.jobs()[0].state == "running"
    with queue.edit() as state:
        state.jobs[0].pid_started = "1" if sys.platform.startswith("linux") else state.jobs[0].pid_started
    if sys.platform.startswith("linux"):
        assert queue.jobs()[0].state == "failed"
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        with queue.edit() as state:
            state.runner = live.pid
        with pytest.raises(InputError, match="already running"):
            queue.attach_runner(99)
    finally:
        live.communicate(b"")


# ---------------------------------------------------------------------------- sweeps
def test_a_sweep_is_one_job_per_combination_each_in_its_own_free_folder(demo_model, tmp_path):
    base = tiny_config(demo_model, tmp_path / "sweep")
    base.lora.rank, base.lora.alpha = 8, 16.0
    (tmp_path / "sweep-r4-exact-4bit").mkdir()
    (tmp_path / "sweep-r4-exact-4bit" / "adapter_config.json").write_text("{}")  # an earlier run's folder
    taken = {str(tmp_path / "sweep-r16-loftq-8bit")}  # a queued job's folder
    jobs = sweep_jobs(base, [4, 16], ["exact", "loftq"], [4, 8], taken)
    combos = [(j.config["lora"]["rank"], j.config["init"]["method"], j.config["quantization"]["bits"]) for j in jobs]
    assert combos == [(r, m, b) for r in (4, 16) for m in ("exact", "loftq") for b in (4, 8)]
    outputs = [Path(j.output).name for j in jobs]
    assert len(set(outputs)) == 8 and outputs[0] == "sweep-r4-exact-4bit-2" and outputs[1] == "sweep-r4-exact-8bit"
    assert "sweep-r16-loftq-8bit-2" in outputs
    assert [j.config["lora"]["alpha"] for j in jobs[::4]] == [8.0, 32.0]  # alpha / rank kept at 2
    with pytest.raises(InputError, match="method"):
        sweep_jobs(base, methods=["nope"])


# ---------------------------------------------------------------------------- the runner
def test_the_runner_takes_jobs_in_order_and_a_cancel_stops_the_running_one(queue, demo_model, tmp_path):
    jobs = [init_job(tiny_config(demo_model, tmp_path / n)) for n in ("a", "b", "c")]
    queue.add(jobs)
    queue.move(jobs[2].id, 0)  # c first
    seen: list[tuple[str, str]] = []

    def on_event(event):
        if isinstance(event, JobUpdate):
            seen.append((event.job_id, event.state))
        if isinstance(event, LayerResult) and seen[-1] == (jobs[0].id, "running") and event.index == 0:
            JobQueue(queue.path).cancel(jobs[0].id)  # from "another process", while a is running

    run = run_queue(queue.path, on_event)
    a, b, c = (j.id for j in jobs)
    assert seen == [(c, "running"), (c, "done"), (a, "running"), (a, "cancelled"), (b, "running"), (b, "done")]
    assert run.done == [c, b] and run.cancelled == [a] and run.stopped == "empty"
    assert [j.state for j in queue.jobs()] == ["done", "cancelled", "done"]
    assert (tmp_path / "c" / "adapter_config.json").is_file() and not (tmp_path / "a").exists()
    assert queue.read().runner is None


def test_cancelling_the_runner_cancels_its_job_and_leaves_the_rest_queued(queue, demo_model, tmp_path):
    jobs = queue.add([init_job(tiny_config(demo_model, tmp_path / n)) for n in ("a", "b")])
    token = CancelToken()
    run = run_queue(queue.path, lambda e: isinstance(e, LayerResult) and token.cancel(), token)  # Ctrl-C
    assert run.cancelled == [jobs[0].id] and run.stopped == "cancelled"
    assert [j.state for j in queue.jobs()] == ["cancelled", "queued"] and not (tmp_path / "a").exists()


def test_a_paused_queue_finishes_the_running_job_then_stops(queue, demo_model, tmp_path):
    jobs = queue.add([init_job(tiny_config(demo_model, tmp_path / n)) for n in ("a", "b")])

    def on_event(event):
        if isinstance(event, JobUpdate) and event.state == "running":
            queue.set_paused(True)

    run = run_queue(queue.path, on_event)
    assert run.done == [jobs[0].id] and run.stopped == "paused"
    assert [j.state for j in queue.jobs()] == ["done", "queued"]


def test_a_training_job_runs_as_the_apps_child_command_and_a_cancel_stops_it(queue, demo_model, demo_adapter, tmp_path):
    """One child (it costs a process start): the cancel path, the one that needs the runner's
    signal to reach the trainer; a job that ends by itself is the init jobs' path."""
    text = tmp_path / "train.txt"
    text.write_text("The quick brown fox jumps over the lazy dog, and the dog sleeps in the sun. " * 40)
    cfg = make_config(demo_model, demo_adapter)
    t = cfg.train
    t.data, t.seq_len, t.batch_size, t.validation_fraction = str(text), 32, 2, 0.25
    t.output, t.max_steps, t.eval_interval, t.save_interval = str(tmp_path / "long"), 500, 500, 500
    long = train_job(cfg, "long")
    queue.add([long])
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, TrainStep) and event.total_steps == 500 and event.step == 1:
            JobQueue(queue.path).cancel(long.id)  # the app's Cancel job, while the child trains

    run = run_queue(queue.path, on_event)
    assert run.cancelled == [long.id], [j.message for j in queue.jobs()]
    assert [type(e).__name__ for e in events][0] == "JobUpdate" and "Stage" in [type(e).__name__ for e in events]
    steps = [e.step for e in events if isinstance(e, TrainStep) and e.total_steps == 500]
    assert steps and steps[-1] < 500 and "checkpoint" in queue.find(long.id).message
    assert [p.name for p in (tmp_path / "long").iterdir() if p.name.startswith("checkpoint-")]  # kept for --resume


# ---------------------------------------------------------------------------- the command line
def test_cli_add_list_and_run_once(tmp_path, demo_model, capsys):
    q = ["--queue", str(tmp_path / "q.json")]
    base = ["--model", str(demo_model), "--calibration", "demo", *TINY]
    assert main(["queue", "add", *q, *base, "--output", str(tmp_path / "a")]) == 0
    assert main(["queue", "add", *q, *base, "--output", str(tmp_path / "s"), "--sweep-ranks", "2,4",
                 "--sweep-methods", "exact,loftq"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["queue", "list", *q, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [Path(j["output"]).name for j in listed["jobs"]] == [
        "a", "s-r2-exact-4bit", "s-r2-loftq-4bit", "s-r4-exact-4bit", "s-r4-loftq-4bit"]  # fmt: skip
    assert main(["queue", "move", *q, listed["jobs"][3]["id"], "1"]) == 0
    assert main(["queue", "run", *q, "--once"]) == 0
    out = capsys.readouterr()
    assert "1 done, 0 failed, 0 cancelled; stopped: once" in out.out
    assert (tmp_path / "s-r4-exact-4bit" / "adapter_config.json").is_file() and not (tmp_path / "a").exists()
    main(["queue", "list", *q])
    lines = capsys.readouterr().out.splitlines()
    assert " done " in lines[1] and "s-r4-exact-4bit" in lines[1] and " queued " in lines[3]


@pytest.mark.parametrize("flags, expect", [
    (["--rank", "0"], "rank must be at least 1"),
    (["--sweep-bits", "3"], "4 or 8"),
    (["--sweep-ranks", "8,x"], "whole numbers"),
    (["--train", "run.toml", "--rank", "8"], "does not apply"),
])  # fmt: skip
def test_cli_bad_input_is_one_line_exit_2_and_nothing_queued(tmp_path, capsys, flags, expect):
    code = main(["queue", "add", "--queue", str(tmp_path / "q.json"), "--device", "cpu",
                 "--output", str(tmp_path / "o"), *flags])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and expect in err[0], err
    assert not (tmp_path / "q.json").exists() and not (tmp_path / "o").exists()
    assert main(["queue", "cancel", "--queue", str(tmp_path / "q.json"), "abc"]) == 2
