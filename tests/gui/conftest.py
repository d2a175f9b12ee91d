"""Fixtures for the GUI tests: offscreen Qt, private settings, tiny local models.

`text_file` (calibration text) comes from tests/conftest.py.

Qt runs on the offscreen platform (with a 1920 x 1200 screen, see offscreen-screen.json)
and QSettings points at a file in each test's temp folder ($QUAILORA_GUI_SETTINGS), so no
test touches the user's settings or needs a display.
"""

from __future__ import annotations

import os

_SCREEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "offscreen-screen.json")
# CI sets QT_QPA_PLATFORM=offscreen; give that platform the same known screen size.
if os.environ.get("QT_QPA_PLATFORM", "offscreen") == "offscreen":
    os.environ["QT_QPA_PLATFORM"] = f"offscreen:configfile={_SCREEN}"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY_VOCAB = 320


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    from quailora_core.sources.corpus import finetune_corpus

    return finetune_corpus(60_000)


def _save_llama(path: Path, texts: list[str], hidden: int, intermediate: int, blocks: int) -> Path:
    import torch
    import transformers as tf

    from quailora_core.demo import train_tokenizer

    tokenizer = train_tokenizer(texts, TINY_VOCAB)
    cfg = tf.LlamaConfig(
        vocab_size=max(TINY_VOCAB, len(tokenizer)),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=blocks,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, corpus_texts) -> Path:
    """A 2-block Llama (hidden 64, MLP 128) with random weights and a trained byte-level BPE
    tokenizer, saved like any Hugging Face model folder: 14 linear layers to initialize."""
    return _save_llama(tmp_path_factory.mktemp("tiny-llama") / "model", corpus_texts, 64, 128, 2)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, corpus_texts) -> Path:
    """A 2-block Llama (hidden 192, MLP 384): a run that lasts a few seconds on a CPU."""
    return _save_llama(tmp_path_factory.mktemp("small-llama") / "model", corpus_texts, 192, 384, 2)


@pytest.fixture(autouse=True)
def private_settings(tmp_path, monkeypatch) -> Path:
    """Every test gets its own settings file and output root."""
    settings = tmp_path / "settings" / "quailora-gui.ini"
    settings.parent.mkdir()
    monkeypatch.setenv("QUAILORA_GUI_SETTINGS", str(settings))
    monkeypatch.setenv("QUAILORA_GUI_OUTPUT_ROOT", str(tmp_path / "outputs"))
    from PySide6.QtCore import QSettings

    # belt and braces: any QSettings built the default way lands in the temp folder too
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(settings.parent))
    QSettings.setPath(QSettings.Format.NativeFormat, QSettings.Scope.UserScope, str(settings.parent))
    return settings


@pytest.fixture
def make_window(qtbot):
    """Factory of main windows that are shut down (threads stopped) after the test."""
    from quailora_gui.app import create_app
    from quailora_gui.views.main_window import MainWindow

    create_app()
    windows = []

    def make(**kwargs):
        window = MainWindow(**kwargs)
        # pytest-qt closes the window after a failed test, training perhaps still running:
        # nobody answers "Stop the training?" there (a modal question would hang the suite)
        window._ask_on_close = False
        qtbot.addWidget(window)
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.shutdown()
        window.close()


@pytest.fixture
def window(make_window):
    return make_window()
