"""The layout's rules, checked on the source: no import cycles, Qt only in the app's views,
the command line on top, the engine never reaching into the app.

Every `import` counts, also those inside functions (a lazy import is still a dependency);
`if TYPE_CHECKING:` imports too. The graph is read with `ast`, not by importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"quailora_core": ROOT / "quailora_core", "quailora_gui": ROOT / "quailora_gui",
            "quailora_resources": ROOT / "resources"}  # fmt: skip
QT = ("PySide6", "pyqtgraph", "shiboken6")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "quailora_resources" and parts and parts[0] != "__init__" and rel.parts != ("__init__",):
                continue  # resources/ holds scripts (make_demo_model.py) beside the package's __init__
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports (a `from pkg import sub` of a submodule counts as sub)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _external(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_modules():
    # guards the test itself: a broken reader would find no edges and no cycles
    assert "quailora_core.init.pipeline" in MODULES and "quailora_gui.views.main_window" in MODULES
    assert "quailora_core.init.strategies" in GRAPH["quailora_core.init.pipeline"]
    assert "quailora_core.config" in GRAPH["quailora_core.cli.flags"]


def test_no_import_cycles():
    assert _cycles() == []


def test_qt_only_under_the_views_package():
    outside = {name for name, path in MODULES.items()
               if _external(path) & set(QT) and not name.startswith("quailora_gui.views")}  # fmt: skip
    # app.py builds the QApplication and qt_platform.py asks Qt whether a window can open
    assert outside <= {"quailora_gui.app", "quailora_gui.qt_platform"}, sorted(outside)
    assert not any(_external(MODULES[n]) & set(QT) for n in MODULES if n.startswith("quailora_gui.controllers"))


def test_the_engine_never_imports_the_app_or_the_command_line():
    for name in MODULES:
        if not name.startswith("quailora_core"):
            continue
        deps = GRAPH[name]
        assert not any(d.startswith("quailora_gui") for d in deps), name
        if not name.startswith("quailora_core.cli") and not name.endswith("__main__"):
            assert not any(d.startswith("quailora_core.cli") for d in deps), (name, sorted(deps))


def test_every_room_declares_what_it_is():
    for name, path in MODULES.items():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc and "(docstring to write)" not in doc, f"{name} has no docstring that says what it is for"


def test_every_rooms_public_names_resolve():
    import importlib

    rooms = [n for n, p in MODULES.items() if p.name == "__init__.py" and n.startswith("quailora_core")]
    assert {"quailora_core.init", "quailora_core.sources", "quailora_core.adapter"} <= set(rooms)
    for room in rooms:
        package = importlib.import_module(room)
        for name in getattr(package, "__all__", []):
            assert getattr(package, name) is not None, f"{room}.{name}"


def test_no_public_name_is_shadowed_by_a_submodule():
    # importing `room.x` sets the attribute `room.x` to the module: a function of that name
    # exported by the room would then be replaced by its own module
    for name, path in MODULES.items():
        if path.name != "__init__.py" or not name.startswith("quailora_core"):
            continue
        import importlib

        exported = set(getattr(importlib.import_module(name), "__all__", []))
        submodules = {p.stem for p in path.parent.glob("*.py")} | {p.name for p in path.parent.iterdir() if p.is_dir()}
        assert not exported & submodules, (name, sorted(exported & submodules))
