#!/usr/bin/env python3
"""Set up a development environment and run the app or the tests, on Linux, macOS or Windows.

    python3 dev.py app  [ARGS...]   set up, then `quailora-gui --demo ARGS...`
    python3 dev.py test [ARGS...]   set up, then `python -m pytest ARGS...`
    python3 dev.py lint [ARGS...]   set up, then `ruff check . ARGS...`
    python3 dev.py setup            set up only
    (the virtual environment: .venv beside dev.py, or the folder $QUAILORA_VENV names)

Set-up: create the virtual environment (`.venv` beside this file, or $QUAILORA_VENV) if it
does not exist; install torch==2.13.0 (the CPU build this project is tested with) only when
the environment has no torch, so a CUDA torch installed there first is kept; then
`pip install -e ".[dev]"`, skipped when the last one succeeded for this checkout and
pyproject.toml has not changed since (a stamp file inside the environment). Exits with the
command's exit status. Standard library only; runs with the Python it is started with.
"""

import hashlib
import json
import os
import re
import subprocess
import sys

MIN_PYTHON = (3, 10)
# Older pips cannot install this project editable from pyproject.toml alone (PEP 660: 21.3)
# or install into another environment (--python: 22.3, which tests/test_packaging.py uses).
MIN_PIP = (22, 3)
NEEDS = "Python 3.10+"
TORCH = "torch==2.13.0"
VENV_ENV = "QUAILORA_VENV"
STAMP_NAME = "quailora-dev-stamp.json"
COMMANDS = ("app", "test", "lint", "setup")
ROOT = os.path.dirname(os.path.abspath(__file__))

# Asked of the environment's Python in one run: its version, whether torch is installed
# (without importing it) and where the quailora package is installed from.
PROBE = """
import importlib.util, json, sys
from importlib import metadata
try:
    url = json.loads(metadata.distribution("quailora").read_text("direct_url.json") or "{}")
except Exception:
    url = {}
try:
    pip = metadata.version("pip")
except Exception:
    pip = None
print(json.dumps({
    "version": list(sys.version_info[:3]),
    "pip": pip,
    "torch": importlib.util.find_spec("torch") is not None,
    "quailora_url": url.get("url"),
    "editable": bool(url.get("dir_info", {}).get("editable")),
}))
"""


class Failure(Exception):
    """A one-line error for the user; `code` is the exit status."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def usage():
    summary, commands = __doc__.split("\n\n")[:2]
    return summary + "\n\n" + commands.rstrip() + "\n"


def venv_dir():
    return os.path.abspath(os.environ.get(VENV_ENV) or os.path.join(ROOT, ".venv"))


def venv_bin(venv, name):
    """An executable of the environment: Scripts\\name.exe on Windows, bin/name elsewhere."""
    if os.name == "nt":
        return os.path.join(venv, "Scripts", name + ".exe")
    return os.path.join(venv, "bin", name)


def pyproject_hash():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def wanted_stamp():
    return {"root": ROOT, "pyproject_sha256": pyproject_hash()}


def read_stamp(venv):
    try:
        with open(os.path.join(venv, STAMP_NAME), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_stamp(venv, stamp):
    with open(os.path.join(venv, STAMP_NAME), "w", encoding="utf-8") as f:
        json.dump(stamp, f, indent=1)


def file_url_is_root(url):
    """Whether a direct_url.json `url` (file:///...) names this checkout."""
    if not url or not url.startswith("file:"):
        return False
    from urllib.parse import unquote, urlparse
    from urllib.request import url2pathname

    path = url2pathname(unquote(urlparse(url).path))
    return os.path.normcase(os.path.realpath(path)) == os.path.normcase(os.path.realpath(ROOT))


def install_is_current(venv, probe):
    """The editable install of this checkout (and torch) is there and pyproject.toml is unchanged."""
    return (
        read_stamp(venv) == wanted_stamp()
        and probe["torch"]
        and probe["editable"]
        and file_url_is_root(probe["quailora_url"])
    )


def pip_version(text):
    """(major, minor) of a pip version string; (0, 0) when there is no pip or it is unreadable."""
    match = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def say(message):
    print("dev.py: " + message, file=sys.stderr, flush=True)


def run(argv, what):
    """Run a set-up step; a failure ends dev.py with the step's exit status."""
    say(what)
    code = subprocess.call(argv, cwd=ROOT)
    if code != 0:
        raise Failure(f"'{what}' failed (exit status {code})", code)


def create_venv(venv):
    say(f"creating the virtual environment {venv}")
    code = subprocess.call([sys.executable, "-m", "venv", venv])
    if code != 0:
        hint = " (on Debian/Ubuntu: sudo apt-get install python3-venv)" if sys.platform == "linux" else ""
        raise Failure(f"could not create the virtual environment {venv}{hint}", code)


def probe_venv(venv, python):
    try:
        # -I and a cwd outside the checkout: the checkout's own quailora.egg-info is not what is installed
        out = subprocess.run([python, "-I", "-c", PROBE], stdout=subprocess.PIPE, check=True, cwd=venv).stdout
        return json.loads(out.decode("utf-8"))
    except (OSError, subprocess.CalledProcessError, ValueError) as e:
        raise Failure(f"the virtual environment's Python ({python}) does not run: {e}") from None


def setup():
    """Make the environment ready; return its folder."""
    venv = venv_dir()
    python = venv_bin(venv, "python")
    if not os.path.exists(python):
        if os.path.exists(venv) and os.listdir(venv):
            missing = os.path.relpath(python, venv)
            raise Failure(f"{venv} is not a virtual environment (no {missing}): remove it or set {VENV_ENV}")
        create_venv(venv)
    probe = probe_venv(venv, python)
    if tuple(probe["version"][:2]) < MIN_PYTHON:
        made_with = ".".join(map(str, probe["version"]))
        raise Failure(f"{venv} has Python {made_with}; needs {NEEDS}: remove it and run dev.py again")
    if install_is_current(venv, probe):
        return venv
    if pip_version(probe["pip"]) < MIN_PIP:
        run([python, "-m", "pip", "install", "--upgrade", "pip"], "pip install --upgrade pip")
    if not probe["torch"]:
        run([python, "-m", "pip", "install", TORCH], "pip install " + TORCH)
    stamp_path = os.path.join(venv, STAMP_NAME)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)  # a failed install must not leave an old stamp behind
    run([python, "-m", "pip", "install", "-e", ".[dev]"], 'pip install -e ".[dev]"')
    write_stamp(venv, wanted_stamp())
    return venv


def launch(argv, cwd=None):
    """Run the command in place of dev.py (POSIX: exec, so signals reach it); its exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name != "nt":
        if cwd:
            os.chdir(cwd)
        try:
            os.execv(argv[0], argv)
        except OSError as e:
            raise Failure(f"could not start {argv[0]}: {e}") from None
    try:
        return subprocess.call(argv, cwd=cwd)
    except KeyboardInterrupt:
        return 130


def main(args):
    if not args:
        sys.stderr.write(usage())
        return 2
    if args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        raise Failure(f"unknown command {command!r} (choose from {', '.join(COMMANDS)}; see --help)", 2)
    if command == "setup" and rest:
        raise Failure("'setup' takes no arguments", 2)
    if sys.version_info < MIN_PYTHON:
        this = sys.version.split()[0]
        raise Failure(f"needs {NEEDS}, this is Python {this} ({sys.executable}): run dev.py with a newer one")
    venv = setup()
    python = venv_bin(venv, "python")
    if command == "setup":
        say(f"ready: {venv}")
        return 0
    if command == "app":
        return launch([venv_bin(venv, "quailora-gui"), "--demo"] + rest)
    if command == "test":
        return launch([python, "-m", "pytest"] + rest)
    return launch([python, "-m", "ruff", "check", "."] + rest, cwd=ROOT)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Failure as failure:
        say(f"error: {failure}")
        sys.exit(failure.code)
    except KeyboardInterrupt:
        sys.exit(130)
