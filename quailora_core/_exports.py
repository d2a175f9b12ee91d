"""Public names of a room (subpackage), imported from their module on first use.

A room's `__init__` declares its public API the way peft's do, but lazily (PEP 562): the
app's controllers import light modules such as `quailora_core.train.layout` without
pulling in torch and transformers through the package's `__init__`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy(package: str, by_module: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: `by_module["pipeline"] = "run_init InitResult"`
    says that `package.run_init` and `package.InitResult` live in `package.pipeline`."""
    table = {name: module for module, names in by_module.items() for name in names.split()}

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{table[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__
