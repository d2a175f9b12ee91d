"""Shared pytest fixtures (every test runs offline, on CPU, with nothing from the user's cache).

- `quailora_cache` (session, autouse): points `$QUAILORA_CACHE` at a session temp folder,
  so no test reads or writes `~/.cache/quailora` (datasets' Arrow cache, the demo model).
- `demo_model` (session): the demo model, built once per session into that cache (about
  35 s on two CPU cores); returns its folder (a `Path`).
- `text_file`: a small UTF-8 text file (stdlib docstrings, blank-line separated paragraphs,
  about 20 KB) in the test's `tmp_path`.

`HF_HUB_OFFLINE=1` is set (unless already set) before any Hugging Face library is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def quailora_cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("quailora-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUAILORA_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def demo_model(quailora_cache) -> Path:
    from quailora_core.demo import ensure_demo_model

    return ensure_demo_model()


@pytest.fixture
def text_file(tmp_path) -> Path:
    from quailora_core.corpus import pretraining_corpus

    path = tmp_path / "calibration.txt"
    path.write_text("\n\n".join(pretraining_corpus(20_000)) + "\n", encoding="utf-8")
    return path
