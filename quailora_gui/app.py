"""`quailora-gui [run.toml] [--demo]`: start QuAILoRA Studio.

With a run file, the form opens it; with `--demo`, the demo model (shipped with the
package, no download) and the built-in sample text are preselected. Before Qt starts,
`qt_platform.start_problem` checks that a window can be opened here.
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
    from PySide6.QtWidgets import QApplication

    window.show()
    return QApplication.instance().exec()


if __name__ == "__main__":
    raise SystemExit(main())
