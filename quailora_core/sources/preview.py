"""What a data source holds, cheaply: the app's data panel (first rows, size, columns).

Reads the head of a file (or the first rows of a streamed hub dataset), never the whole
source; counts are exact for files up to `tables.EXACT_LIMIT` and estimates beyond.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from quailora_core.config import DEMO_CALIBRATION
from quailora_core.errors import InputError
from quailora_core.sources import tables
from quailora_core.sources.references import _classify
from quailora_core.sources.tables import _inspect_table, _missing_column, _no_text, _not_string
from quailora_core.sources.text import _demo_texts, _hub_failed, _load_hub, _paragraphs

PREVIEW_CHARS = 300


# ---------------------------------------------------------------------------- preview
@dataclass
class DataPreview:
    """What a source holds, cheaply: for the app's data panel.

    `rows`: the first documents, each cut to about 300 characters. `n_rows`: total
    documents (paragraphs for text), None when not known cheaply. `n_chars`: total
    characters of text; exact when `exact`, else an upper bound (the file size in bytes,
    for files over 32 MiB). `estimated_tokens`: n_chars / 4, a rule of thumb for English
    with a typical LLM tokenizer, not a count.
    """

    source: str
    kind: str  # demo | text | folder | json | csv | parquet | hub
    rows: list[str]
    columns: list[str]
    text_column: str
    n_rows: int | None
    n_chars: int | None
    estimated_tokens: int | None
    exact: bool = True
    n_files: int = 1


def _cut(text: str, limit: int = PREVIEW_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _read_text_head(path: Path, limit: int) -> str:
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        return f.read(limit)


def preview(
    source: str,
    text_column: str = "text",
    dataset_config: str | None = None,
    split: str = "train",
    n_rows: int = 5,
) -> DataPreview:
    """The first `n_rows` documents and the size of a source, reading as little as possible.

    Raises the same InputErrors as `load_texts` (a hub dataset is streamed: its first rows
    only, sizes unknown).
    """
    if source == DEMO_CALIBRATION:
        texts = _demo_texts()
        n = sum(map(len, texts))
        return DataPreview(
            source, "demo", [_cut(t) for t in texts[:n_rows]], ["text"], "text", len(texts), n, n // 4
        )
    local = _classify(source)
    if local is None:
        ds = _load_hub(source, dataset_config, split, streaming=True)
        columns = list(ds.column_names or [])
        rows: list[str] = []
        try:
            for row in ds:
                if text_column not in row:
                    raise _missing_column(source, text_column, list(row))
                value = row[text_column]
                if not isinstance(value, str) and value is not None:
                    raise _not_string(source, text_column, type(value).__name__)
                if value and value.strip():
                    rows.append(_cut(value))
                if len(rows) >= n_rows:
                    break
        except InputError:
            raise
        except Exception as exc:  # streaming fetches rows lazily: network errors surface here
            raise _hub_failed(source, exc) from None
        total = None
        with contextlib.suppress(Exception):
            total = ds.info.splits[split.split("[")[0]].num_examples
        return DataPreview(
            source, "hub", rows, columns or [text_column], text_column, total, None, None, False
        )
    if local.kind in ("text", "folder"):
        total_size = sum(f.stat().st_size for f in local.files)
        exact = total_size <= tables.EXACT_LIMIT
        rows, n_docs, n_chars = [], 0, 0
        for f in local.files:
            text = _read_text_head(f, -1 if exact else 1 << 20)
            paras = _paragraphs(text)
            rows.extend(_cut(p) for p in paras[: max(0, n_rows - len(rows))])
            n_docs += len(paras)
            n_chars += sum(map(len, paras))
            if not exact and len(rows) >= n_rows:
                break
        if exact and n_chars == 0:
            raise _no_text(source)
        if not exact:
            n_docs, n_chars = None, total_size
        est = (n_chars or 0) // 4
        return DataPreview(
            source, local.kind, rows, ["text"], "text", n_docs, n_chars, est, exact, len(local.files)
        )
    head = _inspect_table(local, source, text_column, n_rows)
    if head.exact and not head.n_chars:
        raise _no_text(source)
    return DataPreview(
        source,
        local.kind,
        [_cut(r) for r in head.rows],
        head.columns,
        text_column,
        head.n_rows,
        head.n_chars,
        (head.n_chars or 0) // 4,
        head.exact,
    )
