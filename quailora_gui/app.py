"""`quailora-gui [run.toml] [--demo]`: start QuAILoRA Studio.

With a run file, the form opens it; with `--demo`, the demo model (shipped with the
package, no download) and the built-in sample text are preselected. Before Qt starts,
`qt_platform.start_problem` checks that a window can be opened here. Ctrl-C and SIGTERM
close the window as File > Quit does (`install_quit_signals`). Programs that drive the app
(its tests) can ask it to say `ready` (READY_ENV) and to train a run folder at start (TRAIN_ENV).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="quailora-gui",
        description="QuAILoRA Studio: quantization-aware LoRA initialization with live per-layer charts.",
    )
    parser.add_argument(
        "run_file", nargs="?", help="a run.toml to open (written by File > Save run or the CLI)"
    )
    parser.add_argument(
        "--demo", action="store_true", help="preselect the demo model and the built-in sample text"
    )
    return parser.parse_args(list(argv) if argv is not None else None)


def create_app(argv: Sequence[str] | None = None) -> Any:
    """The QApplication (created once), with the app's names, icon, font and style sheet."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from PySide6.QtWidgets import QApplication

    from .views.common import APPLICATION, ORGANIZATION, app_icon, style_sheet

    app = QApplication.instance()
    if app is None:
        app = QApplication([sys.argv[0] if sys.argv else "quailora-gui", *(argv or [])][:1])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName(APPLICATION)
    app.setDesktopFileName("quailora-gui")
    app.setWindowIcon(app_icon())
    app.setStyle("Fusion")
    app.setStyleSheet(style_sheet())
    return app


def build_window(argv: Sequence[str] | None = None, engine: Callable[..., Any] | None = None) -> Any:
    """Parse the command line and return the (not yet shown) main window."""
    args = parse_args(argv)
    create_app()
    from .views.main_window import MainWindow

    window = MainWindow(engine=engine)
    if args.run_file:
        window.open_run(args.run_file)
    elif args.demo:
        window.use_demo()
    return window


# Environment variables for programs that drive the app (its tests, scripts):
# "1": print `ready` on stdout once the window is shown and the quit signals are handled
READY_ENV = "QUAILORA_GUI_PRINT_READY"
# an exported run folder (`quailora export-run`): train it at start as Launch would and print
# `training PID` (the quit paths' tests need a real training child, which otherwise takes
# an initialization run and clicks in the window)
TRAIN_ENV = "QUAILORA_GUI_TRAIN_RUN"


def install_quit_signals(window: Any) -> Any:
    """SIGINT (Ctrl-C in the terminal that started the app) and SIGTERM close the window the
    way File > Quit does (`MainWindow.close_on_signal`): a training child is stopped and
    waited for, never orphaned in its own process group.

    Python runs a signal handler only between bytecodes, and Qt's event loop is C++ code: the
    handler's wake-up byte (`signal.set_wakeup_fd`) makes a QSocketNotifier fire, and its slot
    hands control to Python, which then runs the handler. Returns the notifier (kept by the
    window: its parent)."""
    import signal
    import socket

    from PySide6.QtCore import QSocketNotifier

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno())
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    def on_wake() -> None:
        try:
            reader.recv(4096)
        except OSError:
            pass
        if received:
            name = signal.Signals(received[-1]).name
            received.clear()
            print(f"{name} received: closing QuAILoRA Studio (a training run is stopped first) ...", file=sys.stderr)
            window.close_on_signal(name)

    notifier = QSocketNotifier(reader.fileno(), QSocketNotifier.Type.Read, window)
    notifier.activated.connect(lambda *_: on_wake())
    notifier.sockets = (reader, writer)  # alive as long as the notifier
    return notifier


def _on_shown(window: Any) -> None:
    """What READY_ENV and TRAIN_ENV ask for, once the event loop runs."""
    run_dir = os.environ.get(TRAIN_ENV)
    if run_dir:
        window.training_control._start(run_dir, resume=False)
        print(f"training {window.train_process.pid}", flush=True)
    if os.environ.get(READY_ENV) == "1":
        print("ready", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    parse_args(argv)  # --help and usage errors before anything else
    from .qt_platform import start_problem

    problem = start_problem()
    if problem:  # Qt would abort with a misleading hint; say what is wrong and how to fix it
        print(f"error: {problem}", file=sys.stderr)
        return 1
    from quailora_core.library_noise import quiet_library_noise

    quiet_library_noise()  # the app is an entry point, like the command line
    window = build_window(argv)
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    install_quit_signals(window)
    window.show()
    QTimer.singleShot(0, lambda: _on_shown(window))
    return QApplication.instance().exec()


if __name__ == "__main__":
    raise SystemExit(main())
