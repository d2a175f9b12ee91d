"""What an install holds: every code package, and the shipped resources (the demo model)."""

from __future__ import annotations

from pathlib import Path

import tomllib

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
