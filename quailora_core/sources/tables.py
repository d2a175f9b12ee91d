"""Cheap checks of a local table file (jsonl/json/csv/parquet) before `datasets` reads it.

pyarrow reads the first rows only: the text column is present and holds strings, the file
has rows. A missing column is a `MissingColumnError` carrying the columns the file has, so
the app can offer them. Files up to `EXACT_LIMIT` are counted exactly for the preview.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quailora_core.errors import ColumnError, InputError, MissingColumnError
from quailora_core.sources.references import _Local

EXACT_LIMIT = 32 << 20  # sizes are counted exactly up to 32 MiB, estimated beyond


# ---------------------------------------------------------------------------- checks
def _has_text(path: Path) -> bool:
    """Whether a text file holds anything but whitespace (usually decided by its first bytes)."""
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return True
    return False


def _no_text(source: str) -> InputError:
    return InputError(f"{source!r} contains no text.", "Give a file with at least a few paragraphs of text.")


def _missing_column(source: str, column: str, columns: Sequence[str]) -> MissingColumnError:
    have = ", ".join(repr(c) for c in columns) or "none"
    return MissingColumnError(
        f"{source!r} has no column {column!r}; its columns are {have}.",
        "Choose the column that holds the text (--text-column).",
        columns=[str(c) for c in columns],
    )


def _not_string(source: str, column: str, dtype: Any) -> ColumnError:
    return ColumnError(
        f"Column {column!r} of {source!r} holds {dtype}, not text.",
        "Choose a column of plain strings (--text-column); flatten chat messages into one text column.",
    )


def _is_string_type(dtype: Any) -> bool:
    import pyarrow as pa

    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or is_view(dtype)


# ---------------------------------------------------------------------------- tables (cheap)
@dataclass
class _TableHead:
    columns: list[str]
    rows: list[str]
    n_rows: int | None
    n_chars: int | None
    exact: bool


def _inspect_table(local: _Local, source: str, column: str, n_rows: int) -> _TableHead:
    """Columns, first rows, and (for files up to EXACT_LIMIT) exact sizes of a table file.

    Reads the file with pyarrow (the parser datasets itself uses); for bigger files only the
    head. Raises InputError for a missing or non-string column.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    path, big = local.path, local.path.stat().st_size > EXACT_LIMIT
    table: pa.Table | None = None
    columns: list[str]
    n_total: int | None = None
    try:
        if local.kind == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            columns, n_total = list(pf.schema_arrow.names), pf.metadata.num_rows
            if column in columns:
                if big:
                    batch = next(pf.iter_batches(batch_size=max(n_rows, 1000), columns=[column]), None)
                    table = pa.Table.from_batches([batch]) if batch is not None else None
                else:
                    table = pf.read(columns=[column])
                if table is None:
                    table = pa.table({column: pa.array([], pf.schema_arrow.field(column).type)})
        elif local.kind == "csv":
            import pyarrow.csv as pcsv

            # Text columns often hold line breaks inside quotes (pandas, which datasets uses, agrees).
            parse = pcsv.ParseOptions(delimiter=local.delimiter, newlines_in_values=True)
            if big:
                reader = pcsv.open_csv(path, parse_options=parse)
                try:
                    table = pa.Table.from_batches([reader.read_next_batch()])
                except StopIteration:
                    table = reader.schema.empty_table()
            else:
                read = pcsv.ReadOptions(block_size=max(1 << 20, path.stat().st_size + 1))
                table = pcsv.read_csv(path, read_options=read, parse_options=parse)
            columns = list(table.column_names)
        else:  # json
            table = _read_json_head(path, big, n_rows)
            columns = list(table.column_names)
    except InputError:
        raise
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise InputError(
            f"{source!r} could not be read as {local.kind}: {str(exc).splitlines()[0]}",
            "Check that the file is valid; JSON must be JSON lines or a list of objects.",
        ) from None
    if column not in columns:
        raise _missing_column(source, column, columns)
    assert table is not None
    col = table.column(column)
    if pa.types.is_null(col.type):
        raise _no_text(source)
    if not _is_string_type(col.type):
        raise _not_string(source, column, col.type)
    if n_total is None and not big:
        n_total = table.num_rows
    head = [s for s in col.slice(0, n_rows * 4 + 16).to_pylist() if s and s.strip()][:n_rows]
    if big:
        return _TableHead(columns, head, n_total, path.stat().st_size, False)
    n_chars = pc.sum(pc.utf8_length(col)).as_py() or 0
    return _TableHead(columns, head, n_total, n_chars, True)


def _read_json_head(path: Path, big: bool, n_rows: int):
    """JSON lines via pyarrow (head only when big); a top-level JSON list via the json module."""
    import pyarrow as pa
    import pyarrow.json as pjson

    with path.open("rb") as f:
        first = f.read(4096).lstrip()[:1]
    if first == b"[":
        records = json.loads(path.read_text(encoding="utf-8"))
        if not records or not all(isinstance(r, dict) for r in records):
            raise InputError(
                f"{str(path)!r} is not a list of JSON objects.", "Use JSON lines: one object per line."
            )
        return pa.Table.from_pylist(records)
    if first != b"{":
        raise InputError(f"{str(path)!r} is not JSON lines.", "Use JSON lines: one object per line.")
    if big:
        records = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    records.append(json.loads(line))
                if len(records) >= max(n_rows, 1000):
                    break
        return pa.Table.from_pylist(records)
    # One block for the whole file: a long line must not straddle two blocks.
    return pjson.read_json(
        path, read_options=pjson.ReadOptions(block_size=max(1 << 20, path.stat().st_size + 1))
    )
