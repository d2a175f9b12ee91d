"""Calibration data: every source format loads, every bad input is a clear InputError,
packing is seeded and keeps held-out blocks apart, preview is cheap; plus the corpus."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch

from quailora_core.config import CalibrationConfig
from quailora_core.errors import InputError
from quailora_core.sources import corpus, tables
from quailora_core.sources import references as hub
from quailora_core.sources import text as data
from quailora_core.sources.packing import load_calibration, pack
from quailora_core.sources.preview import DataPreview, preview
from quailora_core.sources.text import load_texts

DOCS = [
    "The first document talks about bread, flour and water.",
    "A second one is about rivers and the towns built beside them.",
    "Number three explains how a hash table finds a key quickly.",
]


@pytest.fixture(scope="module")
def tokenizer():
    from quailora_core.demo import train_tokenizer

    return train_tokenizer(corpus.pretraining_corpus(60_000), 400)


@pytest.fixture(scope="module")
def long_texts() -> list[str]:
    return corpus.finetune_corpus(40_000)


def _write(tmp_path: Path, kind: str) -> Path:
    """A tiny file (or folder) of DOCS in the given format, with an extra non-text column."""
    rows = [{"id": i, "text": t} for i, t in enumerate(DOCS)]
    if kind in ("txt", "md"):
        path = tmp_path / f"docs.{kind}"
        path.write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    elif kind == "jsonl":
        path = tmp_path / "docs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif kind == "json":
        path = tmp_path / "docs.json"
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif kind in ("csv", "tsv"):
        path = tmp_path / f"docs.{kind}"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["id", "text"], delimiter="\t" if kind == "tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif kind == "parquet":
        from datasets import Dataset

        path = tmp_path / "docs.parquet"
        Dataset.from_list(rows).to_parquet(str(path))
    else:  # folder: nested, sorted by relative path, hidden folders and other suffixes skipped
        path = tmp_path / "folder"
        (path / "b").mkdir(parents=True)
        (path / ".git").mkdir()
        (path / "a.txt").write_text(DOCS[0] + "\n\n" + DOCS[1], encoding="utf-8")
        (path / "b" / "c.md").write_text(DOCS[2], encoding="utf-8")
        (path / ".git" / "d.txt").write_text("hidden", encoding="utf-8")
        (path / "e.log").write_text("not text", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- formats
@pytest.mark.parametrize("kind", ["txt", "md", "jsonl", "json", "csv", "tsv", "parquet", "folder"])
def test_each_format_loads_one_document_per_paragraph_or_row(tmp_path, kind):
    path = _write(tmp_path, kind)
    assert load_texts(str(path)) == DOCS
    p = preview(str(path), n_rows=2)
    assert p.rows == DOCS[:2]
    assert p.n_rows == 3 and p.n_chars == sum(map(len, DOCS)) and p.exact
    assert p.estimated_tokens == p.n_chars // 4
    assert p.columns == (["text"] if kind in ("txt", "md", "folder") else ["id", "text"])


def test_datasets_cache_goes_to_quailora_cache_not_the_repo(tmp_path, quailora_cache):
    load_texts(str(_write(tmp_path, "jsonl")))
    assert any((quailora_cache / "datasets").iterdir())
    assert set(p.name for p in tmp_path.iterdir()) == {"docs.jsonl"}


def test_other_text_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"body": t, "label": 1}) + "\n" for t in DOCS), encoding="utf-8")
    assert load_texts(str(path), text_column="body") == DOCS


def test_empty_rows_are_dropped(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": DOCS[0]}, {"text": ""}, {"text": "   "}, {"text": None}, {"text": DOCS[1]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert load_texts(str(path)) == DOCS[:2]


def test_multiline_csv_values_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text"], ["line one\nline two"], ["para one\n\npara two"]])
    assert load_texts(str(path)) == ["line one\nline two", "para one\n\npara two"]
    assert preview(str(path)).n_rows == 2
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffFirst paragraph.\r\n\r\nSecond one.\r\n".encode())
    assert load_texts(str(bom)) == ["First paragraph.", "Second one."]
    assert preview(str(bom)).rows == ["First paragraph.", "Second one."]


def test_demo_source_is_the_default_text_plus_docstrings():
    texts = load_texts("demo")
    default = data.default_text()
    assert 15_000 <= len(default.encode()) <= 25_000
    assert texts[0] == default.split("\n\n")[0].strip()
    assert sum(map(len, texts)) >= 400_000  # enough for 128 x 512 tokens with any tokenizer
    assert texts == load_texts("demo")
    p = preview("demo")
    assert p.kind == "demo" and p.n_rows == len(texts) and len(p.rows) == 5


def test_text_file_fixture_loads(text_file):
    texts = load_texts(str(text_file))
    assert len(texts) > 10 and all(t == t.strip() and t for t in texts)


# ---------------------------------------------------------------------------- bad input
def _refused(source: str, *words: str, **kwargs) -> InputError:
    """Both load_texts and preview refuse with an InputError that mentions all `words`."""
    for fn in (load_texts, preview):
        with pytest.raises(InputError) as info:
            fn(source, **kwargs)
        text = info.value.one_line().lower()
        assert all(w.lower() in text for w in words), text
        assert info.value.hint
    return info.value


def test_missing_file_and_folder(tmp_path):
    _refused(str(tmp_path / "nope.txt"), "does not exist")
    _refused(str(tmp_path / "nope"), "does not exist")
    _refused("./data/nope", "does not exist")
    _refused("a/b/c", "does not exist")


def test_empty_and_blank_files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n\n\t\n")
    (tmp_path / "empty.jsonl").write_text("")
    _refused(str(tmp_path / "empty.txt"), "empty")
    _refused(str(tmp_path / "blank.txt"), "no text")
    _refused(str(tmp_path / "empty.jsonl"), "empty")


def test_binary_and_non_utf8_files(tmp_path):
    (tmp_path / "model.txt").write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)) * 4)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1"))
    _refused(str(tmp_path / "model.txt"), "binary")
    _refused(str(tmp_path / "latin1.txt"), "utf-8")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine")
    (folder / "bad.md").write_bytes(b"\x00\x01\x02")
    _refused(str(folder), "binary", "bad.md")


def test_missing_column_lists_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nwhy?,because\n")
    error = _refused(str(path), "no column 'text'", "'question', 'answer'")
    assert "--text-column" in error.hint
    assert error.columns == ["question", "answer"]  # as data too: the app offers them to choose from
    _refused(str(_write(tmp_path, "parquet")), "no column 'body'", "'id', 'text'", text_column="body")
    _refused(str(_write(tmp_path, "jsonl")), "no column 'body'", "'id', 'text'", text_column="body")


def test_non_string_column(tmp_path):
    _refused(str(_write(tmp_path, "csv")), "'id'", "not text", text_column="id")
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    _refused(str(chat), "not text", text_column="messages")


def test_unsupported_extension_and_empty_folder(tmp_path):
    (tmp_path / "paper.pdf").write_bytes(b"%PDF-1.7")
    (tmp_path / "empty").mkdir()
    error = _refused(str(tmp_path / "paper.pdf"), "unsupported", ".pdf")
    assert ".jsonl" in error.hint and ".parquet" in error.hint
    _refused(str(tmp_path / "empty"), "no .txt or .md")
    (tmp_path / "blanks").mkdir()
    (tmp_path / "blanks" / "a.txt").write_text("")
    (tmp_path / "blanks" / "b.md").write_text("\n\n")
    _refused(str(tmp_path / "blanks"), "no text")


@pytest.mark.parametrize("datasets_knows", [False, True])
def test_hub_id_while_offline(monkeypatch, datasets_knows):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # datasets reads the variable at import: cover both "it knows" and "set afterwards".
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets_knows)
    error = _refused(
        "someone/some-dataset", "cannot reach the hugging face hub (offline)", "someone/some-dataset"
    )
    assert "local file" in error.hint


def test_hub_without_network_or_unknown_dataset(monkeypatch):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(data, "_hub_reachable", lambda timeout=3.0: False)  # fails fast, no retries
    _refused("someone/some-dataset", "cannot reach the hugging face hub (offline)")

    def not_found(*args, **kwargs):
        raise DatasetNotFoundError("Dataset 'someone/typo' doesn't exist on the Hub")

    monkeypatch.setattr(data, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", not_found)  # nothing here touches the network
    error = _refused("someone/typo", "not found on the hugging face hub", "someone/typo")
    assert "owner/name" in error.hint


def test_hub_id_and_local_path_are_told_apart():
    for ref in ("wikitext", "Salesforce/wikitext", "allenai/c4", "HuggingFaceFW/fineweb-edu", "org/name.v2"):
        assert hub.looks_like_dataset_id(ref), ref
    for ref in ("data.txt", "owner/data.jsonl", "a/b/c", "./x", "/abs/x", "~/x", "..", "x y", "c:\\data"):
        assert not hub.looks_like_dataset_id(ref), ref


# ---------------------------------------------------------------------------- pack
def test_pack_shapes_disjoint_and_seeded(tokenizer, long_texts):
    a = pack(long_texts, tokenizer, samples=12, seq_len=64, heldout_samples=4, seed=3)
    assert a.input_ids.shape == a.attention_mask.shape == (12, 64)
    assert a.heldout_input_ids.shape == a.heldout_attention_mask.shape == (4, 64)
    assert a.input_ids.dtype == torch.long and bool(a.attention_mask.all()) and not a.warnings
    cal = {tuple(r.tolist()) for r in a.input_ids}
    held = {tuple(r.tolist()) for r in a.heldout_input_ids}
    assert len(cal) == 12 and len(held) == 4 and not cal & held
    s = a.summary
    assert (s["samples"], s["heldout"], s["seq_len"], s["seed"]) == (12, 4, 64, 3)
    assert s["n_documents"] == len(long_texts) and s["n_tokens_used"] == 16 * 64
    assert s["n_tokens_total"] >= s["n_blocks_available"] * 64 > s["n_tokens_used"]
    json.dumps(s)  # goes into quailora.json

    b = pack(long_texts, tokenizer, samples=12, seq_len=64, heldout_samples=4, seed=3)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.heldout_input_ids, b.heldout_input_ids)
    c = pack(long_texts, tokenizer, samples=12, seq_len=64, heldout_samples=4, seed=4)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_pack_puts_eos_between_documents_only(tokenizer):
    eos = tokenizer.eos_token_id
    one = tokenizer(DOCS[0], add_special_tokens=False)["input_ids"]
    two = tokenizer(DOCS[1], add_special_tokens=False)["input_ids"]
    n = len(one) + 1 + len(two)
    out = pack(DOCS[:2], tokenizer, samples=1, seq_len=n + 5)  # one padded block holds everything
    assert out.input_ids[0, :n].tolist() == [*one, eos, *two]
    assert tokenizer.bos_token_id not in out.input_ids[0, :n].tolist()


def test_pack_with_too_few_blocks_uses_what_there_is(tokenizer, long_texts):
    n_blocks = pack(long_texts, tokenizer, 1, 64).summary["n_blocks_available"]
    out = pack(long_texts, tokenizer, samples=n_blocks + 50, seq_len=64, heldout_samples=10, seed=0)
    assert out.samples + out.heldout == n_blocks and out.heldout >= 1 and out.samples >= 1
    assert out.warnings and f"only {n_blocks} blocks of 64 tokens" in out.warnings[0]
    assert f"using {out.samples} for calibration and {out.heldout} held out" in out.warnings[0]
    cal = {tuple(r.tolist()) for r in out.input_ids}
    assert not cal & {tuple(r.tolist()) for r in out.heldout_input_ids}


def test_pack_pads_a_text_shorter_than_one_block(tokenizer):
    n = len(tokenizer(DOCS[0], add_special_tokens=False)["input_ids"])
    out = pack([DOCS[0]], tokenizer, samples=8, seq_len=n + 10, heldout_samples=2)
    assert out.input_ids.shape == (1, n + 10) and out.heldout_input_ids.shape == (0, n + 10)
    assert out.attention_mask[0].tolist() == [1] * n + [0] * 10
    assert out.input_ids[0, n:].tolist() == [tokenizer.pad_token_id] * 10
    assert out.summary["padded"] and out.summary["n_tokens_used"] == n
    assert "padded" in out.warnings[0]


def test_pack_pad_id_without_pad_token():
    class Tok:
        eos_token_id = 7
        pad_token_id = None

        def __call__(self, texts, **kwargs):
            return {"input_ids": [[5, 6] for _ in texts]}

    out = pack(["x"], Tok(), samples=1, seq_len=4)
    assert out.input_ids.tolist() == [[5, 6, 7, 7]] and out.attention_mask.tolist() == [[1, 1, 0, 0]]
    Tok.eos_token_id = None
    assert pack(["x"], Tok(), samples=1, seq_len=4).input_ids.tolist() == [[5, 6, 0, 0]]


def test_pack_refuses_text_that_tokenizes_to_nothing(tokenizer):
    with pytest.raises(InputError, match="empty"):
        pack(["", ""], tokenizer, samples=4, seq_len=16)


def test_load_calibration_names_the_source(tokenizer, text_file):
    cal = CalibrationConfig(source=str(text_file), samples=4, seq_len=32, heldout_samples=2, seed=1)
    out = load_calibration(cal, tokenizer)
    assert out.input_ids.shape == (4, 32) and out.heldout == 2
    assert out.summary["source"] == str(text_file) and out.summary["samples"] == 4


# ---------------------------------------------------------------------------- preview
def test_preview_truncates_long_rows(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("word " * 400 + "\n\nshort\n", encoding="utf-8")
    p = preview(str(path))
    assert isinstance(p, DataPreview) and len(p.rows) == 2
    assert len(p.rows[0]) <= 300 and p.rows[0].endswith("…") and p.rows[1] == "short"


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "parquet"])
def test_preview_of_a_big_file_reads_only_the_head(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(tables, "EXACT_LIMIT", 10)  # every file counts as big
    path = _write(tmp_path, kind)
    p = preview(str(path), n_rows=2)
    assert p.rows == DOCS[:2] and not p.exact
    assert p.n_chars == path.stat().st_size and p.estimated_tokens == p.n_chars // 4
    if kind == "parquet":
        assert p.n_rows == 3  # parquet metadata knows the row count for free
    else:
        assert p.n_rows is None


def test_preview_of_10_mb_jsonl_is_quick(tmp_path):
    path = tmp_path / "big.jsonl"
    rows = corpus.finetune_corpus()
    with path.open("w", encoding="utf-8") as f:
        while f.tell() < 10 << 20:
            f.writelines(json.dumps({"text": r, "n": 1}) + "\n" for r in rows)
    start = time.process_time()  # CPU time: other processes loading the machine do not add to it
    p = preview(str(path))
    seconds = time.process_time() - start
    assert p.exact and p.n_rows > 20_000 and len(p.rows) == 5
    assert seconds < 2.0, seconds  # about 0.05 s of CPU on the reference machine


def test_every_data_format_counts_as_a_file_not_a_hub_id():
    assert set(hub.FORMATS) <= hub.DATA_FILE_SUFFIXES
    assert not hub.looks_like_dataset_id("notes.jsonl") and hub.looks_like_dataset_id("owner/dataset")


# ---------------------------------------------------------------------------- corpus
def test_corpus_is_deterministic_deduplicated_and_disjoint():
    pre = corpus.pretraining_corpus()
    assert pre == corpus.pretraining_corpus()
    assert len(pre) == len(set(pre)) > 500 and min(map(len, pre)) >= corpus.MIN_DOC_CHARS
    assert sum(map(len, pre)) > 300_000
    fine = corpus.finetune_corpus()
    assert len(fine) > 100 and not set(pre) & set(fine)
    capped = corpus.stdlib_docstrings(max_chars=5_000)
    assert capped == pre[: len(capped)] and 5_000 <= sum(map(len, capped)) < 5_000 + max(map(len, capped))


def test_source_docstrings_read_packages_without_importing_them():
    """The broad corpus parses source files: a package that is not imported stays unimported,
    the stdlib part skips pydoc_data (the fine-tuning domain), and the cap is honoured."""
    import subprocess
    import sys

    code = (
        "import sys; from quailora_core.sources import corpus; "
        "docs = corpus.source_docstrings(('stdlib', 'numpy'), max_chars=2_000_000); "
        "print(len(docs), sum(map(len, docs)), 'numpy' in sys.modules, 'antigravity' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    n_docs, n_chars = int(out[0]), int(out[1])
    assert n_docs > 1000 and 2_000_000 <= n_chars < 2_100_000
    assert out[2:] == ["False", "False"]  # found and parsed, never imported (antigravity opens a browser)
    docs = corpus.source_docstrings(("stdlib",), max_chars=300_000)
    assert docs == corpus.source_docstrings(("stdlib",), max_chars=300_000)
    assert len(docs) == len(set(docs)) and min(map(len, docs)) >= corpus.MIN_DOC_CHARS
    assert not set(docs) & set(corpus.finetune_corpus())
    assert corpus.source_docstrings(("no_such_package_here",)) == []
