"""English text that exists on every machine: the Python standard library's own documentation.

The demo model, the demo calibration source and the tests need natural-language text
without a download. CPython ships plenty of it:

* **Pretraining domain** (`pretraining_corpus`, `stdlib_docstrings`): docstrings of a
  fixed, sorted list of general-purpose stdlib modules (`PRETRAIN_MODULES`: collections,
  pathlib, argparse, ...), module by module, then each public class and function defined
  there, then each class's methods. This is what the demo model is pretrained on.
* **Broad pretraining domain** (`broad_pretraining_corpus`, `source_docstrings`): the
  docstrings of the whole standard library and of large installed packages (numpy, pandas,
  torch, networkx, sympy, transformers), about 23 M characters, read from the source with
  `ast` (nothing is imported). For benchmark models that need far more text than the
  stdlib's API docs: the amount depends on the installed versions, so callers record it.
* **Fine-tuning domain** (`finetune_corpus`): the Python *language reference* topic texts
  that `pydoc` shows for `help("assert")` etc. (`pydoc_data.topics.topics`), cut into
  paragraphs. Long-form grammar and semantics prose instead of API docstrings: a genuine
  domain shift for fine-tuning / calibration experiments. If a Python build lacks
  `pydoc_data`, it falls back to docstrings of a disjoint module set (`FINETUNE_MODULES`:
  email, xml, http, unittest, ...).

Both are deterministic for a given Python version (fixed module lists, sorted names,
first occurrence wins when deduplicating). Nothing here downloads or writes anything.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

# General-purpose modules: the "pretraining" domain. Only modules that import quickly
# and without side effects on every platform (no tkinter, no turtle, no idlelib).
PRETRAIN_MODULES: tuple[str, ...] = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "bz2", "calendar",
    "cmd", "codecs", "collections", "concurrent.futures", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "enum", "filecmp",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "graphlib",
    "gzip", "hashlib", "heapq", "hmac", "imaplib", "inspect", "io", "ipaddress", "itertools",
    "json", "locale", "logging", "logging.handlers", "lzma", "mailbox", "math", "mimetypes",
    "multiprocessing", "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil",
    "platform", "plistlib", "pprint", "queue", "random", "re", "sched", "secrets", "selectors",
    "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "socketserver", "sqlite3",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "types", "typing", "urllib.parse",
    "urllib.request", "uuid", "warnings", "weakref", "zipfile", "zoneinfo",
)  # fmt: skip

# Disjoint set (mail, markup, web, testing): the fallback fine-tuning domain.
FINETUNE_MODULES: tuple[str, ...] = (
    "email", "email.charset", "email.generator", "email.header", "email.headerregistry",
    "email.message", "email.mime.text", "email.parser", "email.policy", "email.utils",
    "html", "html.parser", "http", "http.client", "http.cookiejar", "http.cookies",
    "http.server", "unittest", "unittest.mock", "wsgiref.handlers", "wsgiref.simple_server",
    "xml.dom.minidom", "xml.dom.pulldom", "xml.etree.ElementTree", "xml.sax",
    "xml.sax.handler", "xml.sax.saxutils", "xmlrpc.client", "xmlrpc.server",
)  # fmt: skip

MIN_DOC_CHARS = 120  # docstrings shorter than this ("Return self.") are skipped


def _module_docs(module_name: str) -> Iterator[str]:
    """Docstrings of one module: the module, its public classes/functions, their methods."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except Exception:  # a module missing from this build: skip it, stay deterministic elsewhere
        return
    yield inspect.getdoc(module) or ""
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        obj = vars(module)[name]
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        owner = getattr(obj, "__module__", None) or ""
        if not (owner in (module_name, "_" + module_name) or owner.startswith(module_name + ".")):
            continue  # re-exported from another module: documented there, if at all
        yield inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                if attr.startswith("_") and attr != "__init__":
                    continue
                member = vars(obj)[attr]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isroutine(member) or isinstance(member, property):
                    yield inspect.getdoc(member) or ""


def _clean(doc: str) -> str:
    """Normalize whitespace at line ends and collapse runs of blank lines."""
    lines = [line.rstrip() for line in doc.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _collect(docs: Iterable[str], max_chars: int | None, min_chars: int = MIN_DOC_CHARS) -> list[str]:
    """Deduplicate (first occurrence wins), skip short ones, stop once max_chars is reached."""
    out: list[str] = []
    seen: set[str] = set()
    total = 0
    for doc in docs:
        doc = _clean(doc)
        if len(doc) < min_chars or doc in seen:
            continue
        seen.add(doc)
        out.append(doc)
        total += len(doc)
        if max_chars is not None and total >= max_chars:
            break
    return out


def stdlib_docstrings(max_chars: int | None = None, modules: Iterable[str] = PRETRAIN_MODULES) -> list[str]:
    """Docstrings of the given stdlib modules, one document per entry, in a fixed order.

    Skips docstrings under `MIN_DOC_CHARS` characters and duplicates; stops after the
    entry that reaches `max_chars` characters in total (None: no limit).
    """
    return _collect((doc for name in modules for doc in _module_docs(name)), max_chars)


def pretraining_corpus(max_chars: int | None = None) -> list[str]:
    """The pretraining domain: docstrings of `PRETRAIN_MODULES` (API documentation prose)."""
    return stdlib_docstrings(max_chars, PRETRAIN_MODULES)


def finetune_corpus(max_chars: int | None = None) -> list[str]:
    """The fine-tuning domain: the Python language reference texts, one paragraph per entry.

    Taken from `pydoc_data.topics` (the `help("topic")` texts shipped with CPython);
    falls back to docstrings of `FINETUNE_MODULES` when this Python build lacks it.
    Disjoint from `pretraining_corpus` either way.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        pretrain = set(pretraining_corpus())
        docs = (doc for name in FINETUNE_MODULES for doc in _module_docs(name) if _clean(doc) not in pretrain)
        return _collect(docs, max_chars)
    paragraphs = (
        para for key in sorted(topics) for para in re.split(r"\n\s*\n", topics[key]) if para.strip()
    )
    return _collect(paragraphs, max_chars, min_chars=80)


# Packages whose docstrings make up the broad pretraining domain, in this order. All are
# installed with this project (directly or as dependencies of torch / datasets); "stdlib"
# is the whole standard library. Missing ones are skipped.
BROAD_PACKAGES: tuple[str, ...] = ("stdlib", "numpy", "pandas", "torch", "networkx", "sympy", "transformers")

# Parts of the standard library that are not general API documentation, or that hold the
# fine-tuning domain (pydoc_data), or that are not importable everywhere anyway.
_STDLIB_SKIP = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
    "lib2to3", "pydoc_data", "ensurepip", "__pycache__",
})  # fmt: skip


def _package_files(package: str) -> list[Path]:
    """The sorted .py files of an installed package ("stdlib": the standard library)."""
    if package == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        skip = _STDLIB_SKIP
    else:
        spec = importlib.util.find_spec(package)  # a top-level name: finds, does not import
        if spec is None or not spec.submodule_search_locations:
            return []
        root = Path(next(iter(spec.submodule_search_locations)))
        skip = frozenset({"test", "tests", "testing", "__pycache__"})
    return sorted(f for f in root.rglob("*.py") if not skip.intersection(f.relative_to(root).parts[:-1]))


def _file_docs(path: Path) -> Iterator[str]:
    """Module, class and function docstrings of one source file, in source order."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield ast.get_docstring(node) or ""


def source_docstrings(packages: Iterable[str] = BROAD_PACKAGES, max_chars: int | None = None) -> list[str]:
    """Docstrings parsed from the source of the given installed packages (never imported).

    Deterministic for given installed versions: files in sorted order, first occurrence of
    a docstring wins, docstrings under `MIN_DOC_CHARS` skipped; stops after the entry that
    reaches `max_chars` characters in total (None: no limit).
    """
    return _collect(
        (doc for pkg in packages for f in _package_files(pkg) for doc in _file_docs(f)), max_chars
    )


def broad_pretraining_corpus(max_chars: int | None = None) -> list[str]:
    """The broad pretraining domain: docstrings of the stdlib and of `BROAD_PACKAGES`.

    Disjoint from `finetune_corpus` (the language reference lives in pydoc_data, skipped).
    """
    return source_docstrings(BROAD_PACKAGES, max_chars)
