"""The app's quit paths, on the real program in a child process (issue 14): Ctrl-C in the
terminal that started it closes it, and a SIGTERM while a training child runs stops that
child (it lives in its own process group) and waits for it instead of leaving it orphaned.

The app says `ready` on stdout once its window is shown (QUAILORA_GUI_PRINT_READY) and, with
QUAILORA_GUI_TRAIN_RUN, trains an exported run folder at start and says `training PID`.
Every wait polls with a generous limit; nothing depends on how fast this machine is.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from quailora_core.train.layout import OUTPUT_DIR, RUN_RECORD
from quailora_gui.app import READY_ENV, TRAIN_ENV

START_TIMEOUT = 180  # seconds: the app imports Qt and the engine's light modules on a busy machine
EXIT_TIMEOUT = 120  # the training child checkpoints at its step end (or is killed after 15 s)


class App:
    """`python -m quailora_gui --demo` with private settings, output folder and HOME."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        environment = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(home), READY_ENV: "1",
                       "QUAILORA_GUI_OUTPUT_ROOT": str(tmp_path / "outputs"),
                       "QUAILORA_GUI_SETTINGS": str(tmp_path / "settings" / "quailora-gui.ini"), **env}  # fmt: skip
        self.proc = subprocess.Popen([sys.executable, "-m", "quailora_gui", "--demo"], env=environment,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, prefix: str) -> str:
        while True:
            try:
                line = self.lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"the app never said {prefix!r}; it said:\n" + "\n".join(self.seen)) from None
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def exit_code(self) -> int:
        try:
            return self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the app did not exit after the signal") from None


def gone(pid: int) -> bool:
    """Whether no process has this pid any more (an exited child is reaped by the app, or by
    init once the app is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_ctrl_c_in_the_terminal_closes_the_app(tmp_path):
    app = App(tmp_path)
    try:
        app.wait_for("ready")
        app.proc.send_signal(signal.SIGINT)
        assert app.exit_code() == 0
    finally:
        if app.proc.poll() is None:
            app.proc.kill()


@pytest.fixture
def run_folder(demo_adapter, tmp_path) -> Path:
    """An exported run of the demo adapter that trains for far longer than the test waits."""
    from quailora_core.train.export import export_run
    from quailora_core.train.settings import config_from_adapter

    config = config_from_adapter(str(demo_adapter))
    t = config.train
    t.data, t.max_steps, t.seq_len, t.batch_size = "demo", 100_000, 32, 1
    t.eval_interval = t.save_interval = 100_000
    t.validation_fraction = 0.0  # no validation pass before the first step
    return export_run(config, tmp_path / "run")


def test_sigterm_stops_the_training_child_and_waits_for_it(tmp_path, run_folder):
    app = App(tmp_path, **{TRAIN_ENV: str(run_folder), "OMP_NUM_THREADS": "1"})
    pid = 0
    try:
        pid = int(app.wait_for("training ").split()[1])
        assert pid > 0 and os.getpgid(pid) == pid  # its own process group: a dying app would orphan it
        app.wait_for("ready")
        # the trainer writes its run record just before its first step: it is training now
        started = run_folder / OUTPUT_DIR / RUN_RECORD
        deadline = time.monotonic() + START_TIMEOUT
        while not started.is_file():
            assert time.monotonic() < deadline and app.proc.poll() is None and not gone(pid), "\n".join(app.seen)
            time.sleep(0.2)
        app.proc.send_signal(signal.SIGTERM)
        assert app.exit_code() == 0
        # the app waited for its child: nothing of the training is left running
        assert gone(pid), f"training process {pid} outlived the app"
        # stopped, not killed: it saved a checkpoint that Resume (or `quailora train --resume`) continues
        assert list((run_folder / OUTPUT_DIR).glob("checkpoint-*/trainer_state.json")), "\n".join(app.seen)
    finally:
        if app.proc.poll() is None:
            app.proc.kill()
        if pid and not gone(pid):
            os.killpg(pid, signal.SIGKILL)
