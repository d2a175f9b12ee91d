"""`quailora init`: every bad input is one clear line on stderr, exit code 2, nothing on disk."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import save_tiny

from quailora_core.cli import main


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    path = save_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")
    from transformers import AutoTokenizer  # noqa: F401  (tokenizer not needed for refusals)

    return path


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "cal.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["init", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(args, capsys, tmp_path, expect: str, output: Path | None = None):
    output = output or tmp_path / "never-written"
    existed = output.exists()
    code, _, err = run_cli([*args, "--output", str(output), "--device", "cpu"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()  # bad input is one line on stderr, nothing before it
    assert len(lines) == 1 and lines[0].startswith("error:") and expect.lower() in lines[0].lower(), err
    assert output.exists() == existed
    assert not [p for p in output.parent.iterdir() if ".partial-" in p.name]
    return lines[0]


def test_missing_model_path(capsys, tmp_path, text):
    refused(["--model", str(tmp_path / "nope"), "--calibration", str(text)], capsys, tmp_path, "does not exist")


def test_folder_that_is_not_a_model(capsys, tmp_path, text):
    (tmp_path / "empty").mkdir()
    refused(["--model", str(tmp_path / "empty"), "--calibration", str(text)], capsys, tmp_path, "no config.json")


def test_hub_model_id_while_offline(capsys, tmp_path, text, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refused(["--model", "someone/some-model", "--calibration", str(text)], capsys, tmp_path, "offline")


def test_hub_dataset_id_while_offline(capsys, tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refused(["--model", str(tiny_llama), "--calibration", "someone/some-dataset"], capsys, tmp_path, "offline")


@pytest.mark.parametrize(
    "name,content,expect",
    [
        ("missing.txt", None, "does not exist"),
        ("empty.txt", b"", "empty"),
        ("binary.txt", b"\x00\x01\x02\xff" * 100, "binary"),
        ("rows.jsonl", b'{"body": "some text here"}\n', "column"),
    ],
)
def test_bad_calibration_file(capsys, tmp_path, tiny_llama, name, content, expect):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    line = refused(["--model", str(tiny_llama), "--calibration", str(path)], capsys, tmp_path, expect)
    if name == "rows.jsonl":
        assert "body" in line  # names the columns the file has


@pytest.mark.parametrize(
    "extra,expect",
    [
        (["--rank", "0"], "rank must be at least 1"),
        (["--rank", "65"], "larger than the smallest target dimension"),
        (["--bits", "3"], "bits must be 4 or 8"),
        (["--method", "magic"], "unknown method"),
        (["--inputs", "psychic"], "unknown input source"),
        (["--targets", "wq,wk"], "no layer matches the targets"),
        (["--targets", "q_proj,wk"], "'wk' matches no layer"),
        (["--quant-type", "int4"], "unknown quantization type"),
    ],
)
def test_bad_settings(capsys, tmp_path, tiny_llama, text, extra, expect):
    refused(["--model", str(tiny_llama), "--calibration", str(text), *extra], capsys, tmp_path, expect)


def test_cuda_asked_for_but_absent(capsys, tmp_path, tiny_llama, text):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(
        ["--model", str(tiny_llama), "--calibration", str(text), "--device", "cuda", "--output", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2 and "no CUDA GPU" in err and not (tmp_path / "o").exists()


def test_non_empty_output_is_refused_unless_overwrite(capsys, tmp_path, demo_model, text):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused(["--model", str(demo_model), "--calibration", str(text)], capsys, tmp_path, "not empty", output=out)
    assert (out / "keep.txt").read_text() == "mine"
    args = ["--model", str(demo_model), "--calibration", str(text), "--samples", "4", "--seq-len", "32",
            "--heldout", "1", "--rank", "4", "--device", "cpu", "--output", str(out), "--overwrite"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert (out / "adapter_config.json").is_file() and not (out / "keep.txt").exists()
    assert "mean calibrated error" in stdout


def test_json_streams_events_and_config_round_trips(capsys, tmp_path, demo_model, text):
    run_file = tmp_path / "run.toml"
    args = ["--model", str(demo_model), "--calibration", str(text), "--samples", "4", "--seq-len", "32",
            "--heldout", "1", "--rank", "4", "--method", "exact", "--device", "cpu",
            "--output", str(tmp_path / "a"), "--save-config", str(run_file), "--json"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    events = [json.loads(line) for line in stdout.strip().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "Stage" and kinds[-1] == "Finished" and kinds.count("LayerResult") == 28
    # the saved run file repeats the run exactly
    code, stdout2, err = run_cli(["--config", str(run_file), "--output", str(tmp_path / "b"), "--json"], capsys)
    assert code == 0, err
    again = [json.loads(line) for line in stdout2.strip().splitlines()]
    first = [e["cal_err_after"] for e in events if e["event"] == "LayerResult"]
    second = [e["cal_err_after"] for e in again if e["event"] == "LayerResult"]
    assert first == pytest.approx(second, rel=1e-9)


def test_installed_command_exits_2_on_bad_input(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "quailora_core", "init", "--model", str(tmp_path / "missing"), "--output",
         str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Model folder")


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_output_folder_and_files_get_the_umask_modes(capsys, tmp_path, demo_model, text, umask, dir_mode, file_mode):
    # issue 14: the adapter folder came out 0700 and its weights 0600 under umask 022, so a
    # serving container running as another user could not read them
    out = tmp_path / "out"
    args = ["--model", str(demo_model), "--calibration", str(text), "--samples", "4", "--seq-len", "32",
            "--heldout", "1", "--rank", "4", "--device", "cpu", "--output", str(out)]
    old = os.umask(umask)
    try:
        code, _, err = run_cli(args, capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == dir_mode
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(file_mode)}, modes
    for folder in [p for p in out.rglob("*") if p.is_dir()]:
        assert stat.S_IMODE(folder.stat().st_mode) == dir_mode, folder


def test_a_forgotten_model_is_refused_not_replaced_by_the_demo(capsys, tmp_path, text):
    # issue 14: `quailora init` without --model silently initialized the demo model
    line = refused(["--calibration", str(text)], capsys, tmp_path, "no model given")
    assert "--model PATH_OR_HUB_ID" in line and "--model demo" in line
    run_file = tmp_path / "run.toml"  # a run file without a [model] path is the same mistake
    run_file.write_text(f'[calibration]\nsource = "{text}"\n', encoding="utf-8")
    refused(["--config", str(run_file)], capsys, tmp_path, "no model given")


# Each is refused before torch or transformers is imported: checked in a fresh process by
# what it has imported, not by a clock.
_LIGHT_REFUSALS = [
    (["init", "--model", "{tmp}/no-such-model", "--calibration", "demo"], "does not exist"),
    (["init", "--model", "demo", "--calibration", "{tmp}/missing.txt"], "does not exist"),
    (["init", "--model", "demo", "--rank", "0", "--json"], "rank must be at least 1"),
    (["init", "--calibration", "demo"], "No model given"),
    (["train", "{tmp}/no-run.toml"], "does not exist"),
    (["train", "--adapter", "{tmp}/no-adapter", "--data", "demo"], "does not exist"),
    (["eval", "--adapter", "{tmp}/no-adapter", "--data", "demo"], "does not exist"),
    (["export-run", "--adapter", "{tmp}/no-adapter", "--data", "demo", "--output", "{tmp}/run"], "does not exist"),
    (["merge", "--adapter", "{tmp}/no-adapter", "--output", "{tmp}/merged"], "does not exist"),
    # a run file whose adapter is missing
    (["train", "{tmp}/bad-run.toml"], "does not exist"),
    (["export-run", "--config", "{tmp}/bad-run.toml", "--output", "{tmp}/run"], "does not exist"),
]


@pytest.mark.parametrize(("argv", "expect"), _LIGHT_REFUSALS, ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None)
def test_a_bad_path_or_setting_is_refused_before_torch_is_imported(tmp_path, argv, expect):
    # issue 14: a typo in a path took ~10 s to be refused, the time torch and transformers take to import
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    (tmp_path / "bad-run.toml").write_text('[model]\npath = "demo"\n[train]\nadapter = "no-adapter"\ndata = "demo"\n')
    if argv[0] == "init":
        argv += ["--output", str(tmp_path / "out")]
    probe = ("import sys\nfrom quailora_core.cli import main\ncode = main(sys.argv[1:])\n"
             "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules)\n"
             "print('imported:', ','.join(heavy) or 'none', file=sys.stderr)\nsys.exit(code)\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)  # fmt: skip
    *lines, imported = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], proc.stderr
    assert imported == "imported: none", imported
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists() and not (tmp_path / "merged").exists()
