"""What an install holds: every code package, and the shipped resources (the demo model, the
sample text, the icons, the style sheet, the desktop entry), in the checkout and in a wheel
installed into a fresh virtual environment."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import quailora_resources

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport the package depends on there
    import tomli as tomllib

from quailora_core import demo

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_package_is_installed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("quailora_core", "quailora_gui")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk <= set(setuptools["packages"]), sorted(on_disk - set(setuptools["packages"]))
    assert setuptools["package-dir"] == {demo.RESOURCES_PACKAGE: "resources"}


def test_the_installed_resources_are_the_top_level_folder():
    assert demo.resources_dir() == ROOT / "resources"  # an editable install maps the folder itself
    assert demo.demo_model_path() == ROOT / "resources" / "demo-model"


# ------------------------------------------------------------------ the desktop entry
DESKTOP_KEYS = {
    "Type": "Application",
    "Name": "QuAILoRA Studio",
    "Exec": "quailora-gui %f",
    "Icon": "quailora-gui",
    "Terminal": "false",
    "Categories": "Development;Science;",
}


def read_desktop_entry(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # desktop entry keys are case-sensitive
    parser.read_string(text)
    assert parser.sections() == ["Desktop Entry"]
    return dict(parser["Desktop Entry"])


def test_the_desktop_entry_starts_the_app():
    path = quailora_resources.path(quailora_resources.DESKTOP_ENTRY)
    assert path == ROOT / "resources" / "quailora-gui.desktop"
    entry = read_desktop_entry(path.read_text(encoding="utf-8"))
    assert {key: entry.get(key) for key in DESKTOP_KEYS} == DESKTOP_KEYS
    assert entry["Comment"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert entry["Exec"].split()[0] in scripts and entry["TryExec"] in scripts
    validate = shutil.which("desktop-file-validate")  # desktop-file-utils, where installed
    if validate:
        done = subprocess.run([validate, str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------ a wheel, installed fresh
RESOURCE_FILES = [
    quailora_resources.SAMPLE_TEXT,
    quailora_resources.ICON,
    "icons/chevron-down.svg",
    "icons/chevron-up.svg",
    quailora_resources.STYLE_SHEET,
    quailora_resources.DESKTOP_ENTRY,
    *(f"{quailora_resources.DEMO_MODEL}/{p.name}" for p in (ROOT / "resources" / "demo-model").iterdir()),
]

# Run by the fresh environment's Python: what the installed copy finds. Prints one JSON line.
INSTALLED_PROBE = r"""
import json, re, sys
import quailora_resources, quailora_core, quailora_gui
from quailora_core import demo
from quailora_core.sources import default_text
from PySide6.QtCore import QSize
from PySide6.QtWidgets import QApplication
from quailora_gui.views import common

app = QApplication([])
icon = common.app_icon()
pixmaps = {}
for side in (16, 64, 256):
    image = icon.pixmap(QSize(side, side)).toImage()
    step = max(1, side // 32)
    ink = sum(image.pixelColor(x, y).alpha() > 0
              for x in range(0, image.width(), step) for y in range(0, image.height(), step))
    pixmaps[side] = [image.width(), image.height(), ink]
style = common.style_sheet()
app.setStyleSheet(style)
print(json.dumps({
    "files": {m.__name__: m.__file__ for m in (quailora_resources, quailora_core, quailora_gui, common, demo)},
    "default_text_module": default_text.__module__,
    "editable_finders": [m for m in sys.modules if "__editable__" in m],
    "resources": str(quailora_resources.ROOT),
    "icon_null": icon.isNull(),
    "icon_sizes": [[s.width(), s.height()] for s in icon.availableSizes()],
    "pixmaps": pixmaps,
    "style": style,
    "style_urls": re.findall(r"url\(([^)]*)\)", style),
    "sample_path": str(quailora_resources.path(quailora_resources.SAMPLE_TEXT)),
    "sample": quailora_resources.path(quailora_resources.SAMPLE_TEXT).read_text(encoding="utf-8"),
    "default_text": default_text(),
    "demo_model": str(demo.ensure_demo_model()),
    "desktop_entry": str(quailora_resources.path(quailora_resources.DESKTOP_ENTRY)),
}))
"""


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel of a copy of the source tree (setuptools writes build/ and *.egg-info beside
    the sources, so not into the checkout); offline, no build isolation."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    folders = {p.split(".")[0] for p in setuptools["packages"]} - set(setuptools["package-dir"])
    folders |= set(setuptools["package-dir"].values())
    for folder in folders:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    done = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = wheels.glob("quailora-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> tuple[Path, Path]:
    """A new virtual environment with the wheel installed (its Python, its site-packages).
    The dependencies (torch, PySide6, ...) come from this environment's site-packages through
    a .pth line; .pth files are not read from folders a .pth adds, so the editable install's
    finder there stays out."""
    venv = tmp_path / "fresh-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--python", str(python)]
    done = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    site = Path(
        subprocess.run(
            [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    host = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    host |= {str(Path(importlib.util.find_spec(m).origin).parents[1]) for m in ("torch", "PySide6")}
    (site / "zz-host-dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(host)), encoding="utf-8")
    return python, site


def test_a_wheel_holds_the_resources_and_works_installed_fresh(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        wheel_entry = zf.read(f"{demo.RESOURCES_PACKAGE}/{quailora_resources.DESKTOP_ENTRY}").decode("utf-8")
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = zf.read(entry_points).decode("utf-8")
    missing = [f for f in RESOURCE_FILES if f"{demo.RESOURCES_PACKAGE}/{f}" not in names]
    assert not missing, missing
    assert f"{demo.RESOURCES_PACKAGE}/__init__.py" in names
    assert wheel_entry == quailora_resources.path(quailora_resources.DESKTOP_ENTRY).read_text(
        encoding="utf-8"
    )
    assert "quailora-gui = quailora_gui.app:main" in entry_points

    python, site = _fresh_venv(tmp_path, wheel)
    scripts = python.parent
    assert (scripts / ("quailora-gui.exe" if os.name == "nt" else "quailora-gui")).exists()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(python), "-I", "-c", INSTALLED_PROBE],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the checkout, whose folders would shadow the installed copy
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])

    # the installed copy, not the checkout (nor the editable install's finder)
    for module, file in found["files"].items():
        assert Path(file).is_relative_to(site), (module, file)
    assert found["editable_finders"] == []
    resources = Path(found["resources"])
    assert resources == site / demo.RESOURCES_PACKAGE
    for name in RESOURCE_FILES:
        assert (resources / name).read_bytes() == quailora_resources.path(name).read_bytes(), name

    # the app's icon: an SVG (so Qt lists no fixed sizes) that renders at every size asked
    assert not found["icon_null"]
    for side, (width, height, ink) in found["pixmaps"].items():
        assert (width, height) == (int(side), int(side)) and ink > 0, (side, width, height, ink)

    # the style sheet: @RES@ replaced by the installed resources folder, every url() there
    assert found["style"].strip() and "@RES@" not in found["style"]
    assert found["style_urls"]
    for url in found["style_urls"]:
        assert Path(url).is_file() and Path(url).is_relative_to(resources), url
    assert (resources / "icons" / "chevron-down.svg").is_file()

    # the sample text, through the resources package and through the core
    assert Path(found["sample_path"]) == resources / quailora_resources.SAMPLE_TEXT
    assert found["sample"].strip()
    assert found["default_text"] == found["sample"]
    assert Path(found["demo_model"]) == resources / quailora_resources.DEMO_MODEL
    assert Path(found["desktop_entry"]).is_file()
