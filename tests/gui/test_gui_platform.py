"""When Qt cannot open a window, the app says what is missing and the command that fixes
it (one line, exit 1), before Qt can abort with its misleading hint."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from quailora_gui.qt_platform import install_command, missing_from_ldd, missing_xcb_libraries, start_problem

# What ldd printed for PySide6 6.12's libqxcb.so on a Debian 12 machine without two of
# the libraries (Qt itself blamed libxcb-cursor0 there, which was installed).
LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007f5363daf000)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/plugins/platforms/../../lib/libQt6XcbQpa.so.6 (0x00007f5363ce1000)
\tlibGL.so.1 => /lib/x86_64-linux-gnu/libGL.so.1 (0x00007f5363c51000)
\tlibxcb-cursor.so.0 => /lib/x86_64-linux-gnu/libxcb-cursor.so.0 (0x00007f5363bf7000)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-util.so.1 => /lib/x86_64-linux-gnu/libxcb-util.so.1 (0x00007f5363bef000)
\tlibxcb-keysyms.so.1 => not found
\tlibxcb-icccm.so.4 => not found
"""


def test_missing_libraries_become_the_install_command_of_the_package_manager():
    missing = missing_from_ldd(LDD_OUTPUT)
    assert missing == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    assert install_command(missing, "apt-get") == "sudo apt-get install libxcb-icccm4 libxcb-keysyms1"
    assert install_command(missing, "dnf") == "sudo dnf install xcb-util-wm xcb-util-keysyms"
    assert install_command(["libxcb-icccm.so.4", "libodd.so.2"], "apt-get") == (
        "sudo apt-get install libxcb-icccm4, and the packages that provide libodd.so.2"
    )
    assert install_command(missing, None) == (
        "install the system packages that provide libxcb-icccm.so.4, libxcb-keysyms.so.1"
    )


def test_only_the_x11_plugin_on_linux_is_checked():
    assert start_problem({"DISPLAY": ":0"}, platform="darwin") is None
    assert start_problem({"QT_QPA_PLATFORM": "offscreen"}, platform="linux") is None
    assert start_problem({"WAYLAND_DISPLAY": "wayland-0"}, platform="linux") is None
    no_display = start_problem({}, platform="linux")
    assert no_display and "DISPLAY is not set" in no_display and "xvfb-run quailora-gui" in no_display
    assert start_problem({"QT_QPA_PLATFORM": "xcb"}, platform="linux") == no_display


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the X11 plugin exists on Linux only")
def test_the_real_plugin_is_checked_and_the_message_matches_it():
    missing = missing_xcb_libraries()  # whatever this machine lacks: [] on a full desktop
    problem = start_problem({"DISPLAY": ":0"})
    if missing:
        assert problem and all(lib in problem for lib in missing) and "Fix:" in problem
    else:
        assert problem is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY matters on Linux only")
def test_the_app_without_a_display_exits_with_one_line_instead_of_aborting(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["QUAILORA_GUI_SETTINGS"] = str(tmp_path / "settings.ini")
    proc = subprocess.run(
        [sys.executable, "-m", "quailora_gui"], env=env, capture_output=True, text=True, timeout=120
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: No display") and "xvfb-run" in lines[0]
