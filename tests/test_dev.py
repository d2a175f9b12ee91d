"""dev.py, the set-up-and-run script of the README's "Start here": its command line and its
decision to skip a reinstall. Offline and fast: nothing here creates an environment or runs pip."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "dev.py"


def dev(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DEV), *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture(scope="module")
def dev_module():
    spec = importlib.util.spec_from_file_location("quailora_dev_script", DEV)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_names_the_commands():
    done = dev("--help")
    assert done.returncode == 0, done.stderr
    for command in ("app", "test", "lint", "setup"):
        assert f"python3 dev.py {command}" in done.stdout
    assert "QUAILORA_VENV" in done.stdout


def test_an_unknown_command_is_one_line_and_exit_status_2():
    done = dev("tset")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "unknown command 'tset'" in done.stderr
    assert dev().returncode == 2  # no command: the usage, on stderr


def test_a_folder_that_is_not_a_venv_is_refused_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    done = dev("test", env={**os.environ, "QUAILORA_VENV": str(tmp_path)})
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "is not a virtual environment" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_old_pythons_can_parse_it_and_get_the_version_message():
    # Python 3.6-3.9 must reach the "needs Python 3.10+" line rather than a SyntaxError.
    ast.parse(DEV.read_text(encoding="utf-8"), feature_version=(3, 6))


def test_the_install_is_skipped_only_for_this_checkout_and_this_pyproject(dev_module, tmp_path):
    probe = {"editable": True, "quailora_url": ROOT.as_uri(), "torch": True, "version": [3, 11, 0]}
    assert not dev_module.install_is_current(str(tmp_path), probe)  # no stamp yet
    dev_module.write_stamp(str(tmp_path), dev_module.wanted_stamp())
    assert dev_module.install_is_current(str(tmp_path), probe)
    assert not dev_module.install_is_current(str(tmp_path), {**probe, "editable": False})
    assert not dev_module.install_is_current(str(tmp_path), {**probe, "quailora_url": tmp_path.as_uri()})
    stamp = tmp_path / dev_module.STAMP_NAME
    changed = {**json.loads(stamp.read_text(encoding="utf-8")), "pyproject_sha256": "0" * 64}
    stamp.write_text(json.dumps(changed), encoding="utf-8")  # pyproject.toml edited since
    assert not dev_module.install_is_current(str(tmp_path), probe)


def test_the_readme_and_ci_use_it():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start_here = readme.split("## Start here", 1)[1].split("\n## ", 1)[0]
    assert "```bash\npython3 dev.py app\npython3 dev.py test\n```" in start_here
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "export QUAILORA_VENV=" in ci and "\npython3 dev.py test\n" in ci


def test_an_old_pip_is_upgraded_first(dev_module):
    assert dev_module.pip_version("21.2.3") < dev_module.MIN_PIP <= dev_module.pip_version("23.2.1")
    assert dev_module.pip_version("24.1b1") == (24, 1)
    assert dev_module.pip_version(None) == (0, 0)  # no pip at all
