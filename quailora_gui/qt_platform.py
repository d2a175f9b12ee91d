"""Can Qt open a window here? Checked before Qt starts, so that the user gets the one
command that fixes it instead of a crash.

On Linux, when Qt cannot load its X11 platform plugin (`xcb`) it aborts the process with
a message that names `libxcb-cursor0` even when another library is the one missing
(seen on Debian 12 with `libxcb-icccm4` and `libxcb-keysyms1` absent). So before the
`QApplication` is made, `start_problem()` asks the dynamic linker (`ldd`) which shared
libraries the PySide6 wheel's `libqxcb.so` cannot find, adds the `libxcb-cursor.so.0`
that Qt loads at run time, and turns the missing ones into the install command of the
machine's package manager. It also notices that there is no display at all.

Plain Python: this module must not import Qt (it runs when Qt cannot).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# The libraries of the xcb plugin that a minimal Linux install may lack, by the package
# that provides each on Debian/Ubuntu (apt) and Fedora/RHEL (dnf). A library not listed
# is named as it is.
PACKAGES: dict[str, tuple[str, str]] = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb"),
    "libxcb-xinput.so.0": ("libxcb-xinput0", "libxcb"),
    "libxcb.so.1": ("libxcb1", "libxcb"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb"),
    "libX11.so.6": ("libx11-6", "libX11"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl"),
    "libGL.so.1": ("libgl1", "libglvnd-glx"),
    "libOpenGL.so.0": ("libopengl0", "libglvnd-opengl"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2"),
}
RUNTIME_LIBRARIES = ("libxcb-cursor.so.0",)  # dlopen()ed by the xcb plugin since Qt 6.5
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


def missing_from_ldd(ldd_output: str) -> list[str]:
    """The libraries `ldd` reports as `not found`, each once, in order."""
    return list(dict.fromkeys(_NOT_FOUND.findall(ldd_output)))


def install_command(libraries: Sequence[str], manager: str | None) -> str:
    """The command that installs the packages providing `libraries` ("apt-get" or "dnf"),
    or, for another package manager, the libraries to install."""
    unknown = [lib for lib in libraries if lib not in PACKAGES or manager not in ("apt-get", "dnf")]
    if len(unknown) == len(libraries):
        return "install the system packages that provide " + ", ".join(libraries)
    column = 0 if manager == "apt-get" else 1
    packages = dict.fromkeys(PACKAGES[lib][column] for lib in libraries if lib not in unknown)
    command = f"sudo {manager} install {' '.join(packages)}"
    return command + (f", and the packages that provide {', '.join(unknown)}" if unknown else "")


def _package_manager() -> str | None:
    return next((m for m in ("apt-get", "dnf") if shutil.which(m)), None)


def xcb_plugin() -> Path | None:
    """The PySide6 wheel's X11 platform plugin, or None when it is not found."""
    spec = importlib.util.find_spec("PySide6")  # finds without importing Qt
    if spec is None or not spec.submodule_search_locations:
        return None
    plugin = Path(next(iter(spec.submodule_search_locations))) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    return plugin if plugin.is_file() else None


def missing_xcb_libraries(plugin: Path | None = None) -> list[str]:
    """Shared libraries the xcb plugin needs that this machine lacks ([] when all are
    there, or when `ldd` is not available to tell)."""
    plugin = plugin or xcb_plugin()
    ldd = shutil.which("ldd")
    if plugin is None or ldd is None:
        return []
    try:
        out = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    missing = missing_from_ldd(out)
    for lib in RUNTIME_LIBRARIES:
        try:
            ctypes.CDLL(lib)
        except OSError:
            missing.append(lib)
    return list(dict.fromkeys(missing))


def start_problem(environ: Mapping[str, str] | None = None, platform: str | None = None) -> str | None:
    """Why Qt would fail to open a window here, with the fix, as one line; None when it
    should work (or when this cannot be told: other platforms, plugins we do not check)."""
    env = os.environ if environ is None else environ
    if not (platform or sys.platform).startswith("linux"):
        return None
    qpa = env.get("QT_QPA_PLATFORM", "").split(":", 1)[0].strip()
    if qpa not in ("", "xcb"):
        return None  # offscreen, wayland, vnc...: Qt reports those itself
    if qpa == "" and env.get("WAYLAND_DISPLAY") and not env.get("DISPLAY"):
        return None  # Qt picks its Wayland plugin
    if not env.get("DISPLAY"):
        return (
            "No display to open the window on (DISPLAY is not set): start QuAILoRA Studio in a desktop "
            "session, or on a virtual screen with `xvfb-run quailora-gui` (Debian/Ubuntu: sudo apt-get install xvfb)."
        )
    missing = missing_xcb_libraries()
    if missing:
        return (
            f"Qt cannot load its X11 plugin (missing here: {', '.join(missing)}). "
            f"Fix: {install_command(missing, _package_manager())}"
        )
    return None
