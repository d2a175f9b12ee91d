"""`quailora export-run`: a self-contained run folder that trains from any working directory."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_config

from quailora_core.cli import main
from quailora_core.config import RunConfig
from quailora_core.errors import InputError
from quailora_core.events import Finished, TrainStep, event_from_json
from quailora_core.train.export import export_run

PAIRS = [{"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}."} for i in range(12)]


@pytest.fixture(scope="module")
def adapter(demo_adapter) -> Path:
    return demo_adapter


def run_config(demo_model: Path, adapter: Path, tmp: Path) -> RunConfig:
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS), encoding="utf-8")
    cfg = make_config(demo_model, adapter)
    t = cfg.train
    t.data, t.seq_len, t.batch_size, t.max_steps, t.eval_interval, t.save_interval = str(data), 48, 2, 50, 1, 1
    t.validation_fraction = 0.25
    return cfg


def test_run_folder_is_complete_and_relative(demo_model, adapter, tmp_path):
    run_dir = export_run(run_config(demo_model, adapter, tmp_path), tmp_path / "run")
    assert sorted(p.name for p in run_dir.iterdir()) == ["README.md", "accelerate_config.yaml", "adapter", "data",
                                                         "launch.sh", "run.toml"]  # fmt: skip
    assert sorted(p.name for p in (run_dir / "adapter").iterdir()) == sorted(p.name for p in adapter.iterdir())
    assert (run_dir / "data" / "pairs.jsonl").read_text() == (tmp_path / "pairs.jsonl").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    run = RunConfig.load(run_dir / "run.toml", resolve=False)  # as written: relative to the folder
    assert (run.train.adapter, run.train.data, run.train.output) == ("adapter", "data/pairs.jsonl", "output")
    assert run.output == "adapter" and run.quantization.bits == 4 and run.model.dtype == "float32"
    read = RunConfig.load(run_dir / "run.toml")  # as every reader sees it: against the folder
    assert (read.train.adapter, read.train.data) == (str(run_dir / "adapter"), str(run_dir / "data/pairs.jsonl"))
    assert str(tmp_path) not in (run_dir / "run.toml").read_text().replace(str(demo_model), "")
    launcher = run_dir / "launch.sh"
    assert launcher.stat().st_mode & stat.S_IXUSR
    text = launcher.read_text()
    assert 'NUM_PROCESSES="${NUM_PROCESSES:-1}"' in text  # [train] processes 0: the single kind's one process
    assert 'launch --config_file "$HERE/accelerate_config.yaml" --num_processes "$NUM_PROCESSES"' in text
    assert '-m quailora_core.train "$HERE/run.toml" "$@"' in text.split("--check")[-1]
    assert '-m quailora_core.train "$HERE/run.toml" --check "$@"' in text.split('exec "$ACCELERATE"')[-2]  # first
    assert "NUM_PROCESSES" in text.split("set -euo")[0] and "--resume" in text  # explained in comments
    assert str(tmp_path) not in text
    assert subprocess.run(["bash", "-n", str(launcher)]).returncode == 0
    assert "launch.sh" in (run_dir / "README.md").read_text()


def test_moved_run_folder_trains_from_another_directory(demo_model, adapter, tmp_path):
    exported = export_run(run_config(demo_model, adapter, tmp_path), tmp_path / "exported")
    moved = tmp_path / "elsewhere" / "my-run"
    moved.parent.mkdir()
    shutil.move(str(exported), moved)  # nothing may point back at the export location
    (tmp_path / "pairs.jsonl").unlink()  # nor at the original data
    cwd = tmp_path / "somewhere-else"
    cwd.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "quailora_core.train", str(moved / "run.toml"), "--max-steps", "2", "--json"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Loading weights" not in proc.stderr  # no progress bars in what the app's log shows
    events = [event_from_json(line) for line in proc.stdout.splitlines()]
    assert [e.step for e in events if isinstance(e, TrainStep)] == [1, 2]
    assert isinstance(events[-1], Finished) and events[-1].output_dir == str(moved / "output")
    assert events[-1].summary["data"]["format"] == "prompt_response"
    assert (moved / "output" / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (moved / "output").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert list(cwd.iterdir()) == []  # nothing written in the working directory


def test_launch_sh_turns_a_bad_setting_into_one_line_and_exit_2(demo_model, adapter, tmp_path):
    """launch.sh checks the run in a plain process before `accelerate launch`, which would turn
    the same refusal into its own traceback and exit 1."""
    run_dir = export_run(run_config(demo_model, adapter, tmp_path), tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    for flags, expect in ((["--lr", "-1"], "learning_rate must be a positive number"),
                          (["--data", str(tmp_path / "missing.txt")], "does not exist")):  # fmt: skip
        proc = subprocess.run(["bash", str(run_dir / "launch.sh"), *flags], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0].lower(), proc.stderr
        assert "Traceback" not in proc.stderr and not (run_dir / "output").exists()
    proc = subprocess.run([sys.executable, "-m", "quailora_core.train", str(run_dir / "run.toml"), "--check"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stderr.startswith("checked: "), proc.stderr
    assert not (run_dir / "output").exists()  # a check writes nothing


def test_export_refuses_bad_input_before_writing(demo_model, adapter, tmp_path, capsys):
    cfg = run_config(demo_model, adapter, tmp_path)
    cfg.train.adapter = str(tmp_path / "no-adapter")
    with pytest.raises(InputError, match="does not exist"):
        export_run(cfg, tmp_path / "r1")
    cfg = run_config(demo_model, adapter, tmp_path)
    cfg.train.data = str(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="does not exist"):
        export_run(cfg, tmp_path / "r2")
    cfg.train.data = ""
    with pytest.raises(InputError, match="No training data"):
        export_run(cfg, tmp_path / "r3")
    (tmp_path / "r4").mkdir()
    (tmp_path / "r4" / "keep.txt").write_text("mine")
    cfg = run_config(demo_model, adapter, tmp_path)
    cfg.save(tmp_path / "run.toml")
    code = main(["export-run", "--config", str(tmp_path / "run.toml"), "--output", str(tmp_path / "r4")])
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "r4").iterdir()] == ["keep.txt"]
    assert not any((tmp_path / n).exists() for n in ("r1", "r2", "r3"))
    code = main(["export-run", "--config", str(tmp_path / "run.toml"), "--output", str(tmp_path / "r5"),
                 "--max-steps", "7"])  # fmt: skip
    assert code == 0 and RunConfig.load(tmp_path / "r5" / "run.toml").train.max_steps == 7


def test_exported_run_opens_from_another_directory_in_init_and_export_run(
    demo_model, adapter, tmp_path, monkeypatch, capsys
):
    """The run folder's relative paths are relative to the run file for `init --config` and
    `export-run --config` too, never to the working directory."""
    run_dir = export_run(run_config(demo_model, adapter, tmp_path), tmp_path / "run")
    cwd = tmp_path / "somewhere-else"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # export-run: the adapter and data the run file names are found in its folder
    assert main(["export-run", "--config", str(run_dir / "run.toml"), "--output", "copy"]) == 0
    copy = cwd / "copy"
    assert (copy / "adapter" / "adapter_model.safetensors").is_file()
    assert (copy / "data" / "pairs.jsonl").read_text() == (run_dir / "data" / "pairs.jsonl").read_text()
    # init --config: the run file's output ("adapter") is the run folder's adapter
    before = (run_dir / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    code = main(["init", "--config", str(run_dir / "run.toml"), "--overwrite", "--samples", "4", "--seq-len", "32",
                 "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    finished = event_from_json(out.splitlines()[-1])
    assert isinstance(finished, Finished) and finished.output_dir == str(run_dir / "adapter")
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns != before
    assert sorted(p.name for p in cwd.iterdir()) == ["copy"]  # nothing else in the working directory
