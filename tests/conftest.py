"""Shared pytest fixtures (every test runs offline, on CPU, with nothing from the user's cache).

- `quailora_cache` (session, autouse): points `$QUAILORA_CACHE` at a session temp folder,
  so no test reads or writes `~/.cache/quailora` (datasets' Arrow cache).
- `demo_model` (session): the shipped demo model's folder (`resources/demo-model`, checked
  against the hashes the package expects); the same bytes on every machine, so tests may
  rely on its figures. No test relies on a property of a model trained during the run.
- `one_torch_thread` (session, autouse): tests run on one torch thread.
- `demo_adapter` (session): a rank-8 NF4 QuAILoRA adapter for the demo model.
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
def demo_model() -> Path:
    from quailora_core.demo import ensure_demo_model

    return ensure_demo_model()


@pytest.fixture
def text_file(tmp_path) -> Path:
    from quailora_core.sources.corpus import pretraining_corpus

    path = tmp_path / "calibration.txt"
    path.write_text("\n\n".join(pretraining_corpus(20_000)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Every test on one torch thread: the tests use tiny matrices, and two threads on a busy
    two-core machine made a training step ~100x slower (5 s instead of 40 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_adapter(demo_model, tmp_path_factory) -> Path:
    """A QuAILoRA adapter (rank 8, NF4) for the demo model, made once per session."""
    from helpers import make_config

    from quailora_core.init.pipeline import run_init

    out = tmp_path_factory.mktemp("demo-adapter") / "adapter"
    run_init(make_config(demo_model, out))
    return out
