"""Calibration data: load text from a file, a folder, a hub dataset or `demo`, and pack it.

Sources (`load_texts`, `preview`):

* `demo`: the text shipped with the package (`resources/sample-text/calibration.txt`, one
  document per paragraph) followed by stdlib docstrings (`corpus.pretraining_corpus`) up
  to `DEMO_CHARS` characters in all, so that the default 128 x 512 tokens fit.
* a local `.txt` / `.md` file: one document per blank-line-separated paragraph;
* a local `.jsonl` / `.json` / `.csv` / `.tsv` / `.parquet` file: one document per row of
  `text_column`;
* a local folder: every `*.txt` and `*.md` below it (recursively, sorted, hidden ones
  skipped), one document per paragraph;
* anything else that looks like `owner/name` (or `name`) and is not a local path: a
  Hugging Face Hub dataset, `load_dataset(id, dataset_config, split=split)`; split
  slicing such as `train[:2000]` works and keeps big datasets small.

Files are read with `datasets.load_dataset` (text / json / csv / parquet builders), whose
Arrow cache goes to `cache_root() / "datasets"` (`~/.cache/quailora`, or `$QUAILORA_CACHE`),
never into the working directory. Every problem with the input is an `InputError` with a
hint, raised by cheap checks before anything is loaded.

`pack` turns texts into `samples x seq_len` token blocks (seeded, reproducible) plus
disjoint held-out blocks; `preview` shows the first rows and size of a source quickly
(it reads only the head of big files).
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import quailora_resources

from quailora_core.config import DEMO_CALIBRATION, CalibrationConfig
from quailora_core.errors import InputError, MissingColumnError
from quailora_core.sources import references as hub

if TYPE_CHECKING:
    import torch

DEFAULT_TEXT = quailora_resources.path(quailora_resources.SAMPLE_TEXT)
DEMO_CHARS = 600_000  # default text + docstrings: ~150k+ tokens with any tokenizer

TEXT_SUFFIXES = (".txt", ".md")
FORMATS = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".csv": "csv",
           ".tsv": "csv", ".parquet": "parquet"}  # fmt: skip
SUPPORTED = ", ".join(FORMATS)
EXACT_LIMIT = 32 << 20  # preview counts exactly up to 32 MiB, estimates beyond
PREVIEW_CHARS = 300
TOKENIZE_LIMIT = 1_000_000  # pack tokenizes at most max(this, 8 x needed) tokens
_TRUE = ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------- paths
def cache_root() -> Path:
    """QuAILoRA's cache folder: `$QUAILORA_CACHE`, else `$XDG_CACHE_HOME/quailora` (~/.cache)."""
    env = os.environ.get("QUAILORA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "quailora"


def _datasets_cache() -> str:
    path = cache_root() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def looks_like_hub_id(source: str) -> bool:
    """`owner/name` or `name` without path syntax or a data file suffix (see hub.py)."""
    return hub.looks_like_hub_id(source, hub.DATA_FILE_SUFFIXES)


# ---------------------------------------------------------------------------- demo text
@functools.lru_cache(maxsize=1)
def _demo_texts() -> tuple[str, ...]:
    from quailora_core.sources.corpus import pretraining_corpus

    own = _paragraphs(DEFAULT_TEXT.read_text(encoding="utf-8"))
    room = DEMO_CHARS - sum(map(len, own))
    return tuple(own + pretraining_corpus(max_chars=room))


def default_text() -> str:
    """The embedded default calibration text (what the GUI offers a new user)."""
    return DEFAULT_TEXT.read_text(encoding="utf-8")


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, stripped, empty ones dropped (as datasets' text builder)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


# ---------------------------------------------------------------------------- checks
def _check_not_binary(path: Path) -> None:
    """Refuse a file whose first 8 KiB contain NUL bytes or are not UTF-8."""
    with path.open("rb") as f:
        head = f.read(8192)
    hint = "Give a plain-text file saved as UTF-8, or a .jsonl/.csv/.parquet file with a text column."
    if b"\x00" in head:
        raise InputError(f"{str(path)!r} is a binary file, not text (it contains NUL bytes).", hint)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        raise InputError(
            f"{str(path)!r} is not UTF-8 text (it is binary or in another encoding).",
            "Save it as UTF-8, or give a .jsonl/.csv/.parquet file with a text column.",
        ) from None


def _check_nonempty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise InputError(f"{str(path)!r} is empty.", "Give a file that contains calibration text.")


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


def _not_string(source: str, column: str, dtype: Any) -> InputError:
    return InputError(
        f"Column {column!r} of {source!r} holds {dtype}, not text.",
        "Choose a column of plain strings (--text-column); flatten chat messages into one text column.",
    )


def _is_string_type(dtype: Any) -> bool:
    import pyarrow as pa

    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or is_view(dtype)


def _folder_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in TEXT_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not files:
        raise InputError(
            f"Folder {str(folder)!r} contains no .txt or .md files.",
            "Put plain-text files in it, or give a single .jsonl/.csv/.parquet file.",
        )
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


@dataclass
class _Local:
    """A local source after the cheap checks: what it is and which files it covers."""

    kind: str  # text | folder | json | csv | parquet
    path: Path
    files: list[Path]
    delimiter: str = ","


def _classify(source: str) -> _Local | None:
    """Check a local source cheaply; None means "a hub dataset id". Raises InputError."""
    if not source or not source.strip():
        raise InputError("No calibration data given.", "Use --calibration PATH, a hub dataset id, or demo.")
    path = Path(source).expanduser()
    if path.is_dir():
        files = _folder_files(path)
        for f in files:
            _check_not_binary(f)
        return _Local("folder", path, files)
    if path.is_file():
        suffix = path.suffix.lower()
        kind = FORMATS.get(suffix)
        if kind is None:
            raise InputError(
                f"{source!r} has an unsupported file type ({suffix or 'no extension'}).",
                f"Use one of {SUPPORTED}, a folder of .txt/.md files, or a hub dataset id.",
            )
        _check_nonempty(path)
        if kind != "parquet":
            _check_not_binary(path)
        return _Local(kind, path, [path], "\t" if suffix == ".tsv" else ",")
    if looks_like_hub_id(source):
        return None
    raise InputError(
        f"Calibration file or folder {source!r} does not exist.",
        "Check the path; a hub dataset is written owner/name.",
    )


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


# ---------------------------------------------------------------------------- loading
@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or info logs from datasets while we load (restored afterwards)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
        datasets.logging.set_verbosity(level)


def _env_offline() -> bool:
    return hub.offline(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _offline_error(source: str) -> InputError:
    return InputError(
        f"Cannot reach the Hugging Face Hub (offline) to fetch dataset {source!r}.",
        "Use a local file (.txt, .jsonl, .csv, .parquet) or folder, or demo.",
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the Hub, so that no network fails fast instead of after retries."""
    if any(
        os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")
    ):
        return True  # the proxy decides; let datasets try
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except Exception:
        endpoint = urlparse("https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_hub(source: str, dataset_config: str | None, split: str, streaming: bool = False):
    """`load_dataset(source, dataset_config, split=split)` with every failure made an InputError."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    lib_offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
    if _env_offline() and not lib_offline:
        # The variable was set after datasets was imported: datasets would still go online.
        raise _offline_error(source)
    if not lib_offline and not _hub_reachable():
        raise _offline_error(source)
    try:
        with _quiet_datasets():
            return datasets.load_dataset(
                source, dataset_config, split=split, cache_dir=_datasets_cache(), streaming=streaming
            )
    except DatasetNotFoundError:
        raise InputError(
            f"Dataset {source!r} was not found on the Hugging Face Hub, and no local file or folder "
            "of that name exists.",
            "Check the spelling (owner/name); for a gated or private dataset log in with `hf auth login`.",
        ) from None
    except (ConnectionError, TimeoutError) as exc:
        if lib_offline or "offline" in str(exc).lower() or "couldn't reach" in str(exc).lower():
            raise _offline_error(source) from None
        raise InputError(
            f"Could not download dataset {source!r}: {exc}", "Check the network or use a local file."
        ) from None
    except FileNotFoundError:
        raise InputError(
            f"Dataset {source!r} was not found on the Hugging Face Hub, and no local file or folder "
            "of that name exists.",
            "Check the spelling (owner/name), or give a local file.",
        ) from None
    except ValueError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"Dataset {source!r} could not be loaded with config {dataset_config!r} and split {split!r}: {message}",
            "Set the dataset config and split the dataset card lists (e.g. wikitext-2-raw-v1, train).",
        ) from None
    except Exception as exc:  # gated or private repo, HTTP errors, a broken dataset script ...
        raise _hub_failed(source, exc) from None


def _hub_failed(source: str, exc: BaseException) -> InputError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(
        f"Dataset {source!r} could not be loaded from the Hugging Face Hub: {message}",
        "For a gated or private dataset log in with `hf auth login`; otherwise use a local file.",
    )


def _strings(ds, source: str, column: str) -> list[str]:
    """The non-empty strings of one column of a loaded datasets.Dataset (checked)."""
    from datasets import Value

    if column not in ds.column_names:
        raise _missing_column(source, column, ds.column_names)
    feature = ds.features[column]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string", "string_view")):
        raise _not_string(source, column, feature)
    return [t for t in ds[column] if t and t.strip()]


def load_texts(
    source: str, text_column: str = "text", dataset_config: str | None = None, split: str = "train"
) -> list[str]:
    """All documents of a calibration source, in order (see the module docstring for sources).

    Local files ignore `dataset_config` and `split`. Raises InputError for a missing,
    empty, binary or unsupported file, a missing or non-text column, and a hub dataset
    that is unreachable or unknown.
    """
    if source == DEMO_CALIBRATION:
        return list(_demo_texts())
    local = _classify(source)
    if local is None:
        ds = _load_hub(source, dataset_config, split)
        texts = _strings(ds, source, text_column)
        if not texts:
            raise _no_text(source)
        return texts
    import datasets

    if local.kind in ("text", "folder"):
        if not any(_has_text(f) for f in local.files):
            raise _no_text(source)
        column = "text"
        kwargs: dict[str, Any] = {"sample_by": "paragraph", "encoding": "utf-8-sig"}  # BOM dropped
        builder = "text"
    else:
        _inspect_table(local, source, text_column, n_rows=1)  # cheap: column present and text
        column, builder = text_column, local.kind
        kwargs = {"delimiter": local.delimiter} if local.kind == "csv" else {}
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(
                builder,
                data_files=[str(f) for f in local.files],
                split="train",
                cache_dir=_datasets_cache(),
                **kwargs,
            )
    except InputError:
        raise
    except Exception as exc:  # a parser error on a file the cheap checks passed
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"{source!r} could not be read: {message}", f"Check that it is valid {local.kind}."
        ) from None
    texts = _strings(ds, source, column)
    if local.kind in ("text", "folder"):
        texts = [t.strip() for t in texts]
    if not texts:
        raise _no_text(source)
    return texts


# ---------------------------------------------------------------------------- packing
@dataclass
class CalibrationSet:
    """Packed calibration tokens.

    `input_ids` / `attention_mask`: (samples, seq_len) int64; the mask is 1 for real tokens
    and 0 for padding (only ever at the end of the single block of a text shorter than
    seq_len). `heldout_*`: (heldout, seq_len), disjoint from the calibration blocks, for
    measuring generalization; shape (0, seq_len) when there are none. `summary` is JSON-ready
    (it goes into quailora.json); `warnings` are sentences for the run log.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    heldout_input_ids: torch.Tensor
    heldout_attention_mask: torch.Tensor
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def heldout(self) -> int:
        return int(self.heldout_input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


def _tokenize(texts: Sequence[str], tokenizer, limit: int) -> tuple[list[int], int]:
    """Token ids of the texts joined by EOS (when the tokenizer has one), up to about `limit`.

    Returns (ids, number of documents used). No BOS or other special tokens are added.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    used = 0
    batch = 256
    for start in range(0, len(texts), batch):
        chunk = list(texts[start : start + batch])
        encoded = tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        for doc in encoded:
            used += 1
            if not doc:
                continue
            if ids and eos is not None:
                ids.append(eos)
            ids.extend(doc)
            if len(ids) >= limit:
                return ids, used
    return ids, used


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def pack(
    texts: Sequence[str], tokenizer, samples: int, seq_len: int, heldout_samples: int = 0, seed: int = 0
) -> CalibrationSet:
    """Tokenize, concatenate (EOS between documents), cut into seq_len blocks, shuffle the
    block order with `torch.Generator().manual_seed(seed)`, and take the first `samples`
    blocks for calibration and the next `heldout_samples` as held out.

    With fewer blocks than asked for, uses what there is (at least one calibration block,
    held out in proportion) and says so in `warnings`; a text shorter than one block becomes
    one block padded at the end (attention_mask 0 there). Empty text is an InputError.
    Tokenizes at most max(TOKENIZE_LIMIT, 8 x needed) tokens of a long corpus (its start).
    """
    import torch

    if samples < 1 or seq_len < 1 or heldout_samples < 0:
        raise InputError(
            f"Cannot pack {samples} samples of {seq_len} tokens with {heldout_samples} held out.",
            "Use at least 1 sample, a positive sequence length, and 0 or more held-out samples.",
        )
    needed = (samples + heldout_samples) * seq_len
    ids, used = _tokenize(texts, tokenizer, max(TOKENIZE_LIMIT, 8 * needed))
    if not ids:
        raise InputError(
            "The calibration text is empty after tokenization.", "Give a source that contains text."
        )
    warnings: list[str] = []
    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        n_cal, n_held = 1, 0
        tokens = torch.full((1, seq_len), _pad_id(tokenizer), dtype=torch.long)
        tokens[0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask = torch.zeros((1, seq_len), dtype=torch.long)
        mask[0, : len(ids)] = 1
        cal_ids, cal_mask = tokens, mask
        held_ids = held_mask = torch.zeros((0, seq_len), dtype=torch.long)
        warnings.append(
            f"the calibration text has only {len(ids)} tokens, less than one block of {seq_len}; "
            f"using 1 calibration block padded with {seq_len - len(ids)} pad tokens (masked out) and none held out"
        )
    else:
        if n_blocks >= samples + heldout_samples:
            n_cal, n_held = samples, heldout_samples
        else:
            n_held = 0
            if heldout_samples and n_blocks >= 2:
                n_held = max(1, round(n_blocks * heldout_samples / (samples + heldout_samples)))
                n_held = min(n_held, heldout_samples, n_blocks - 1)
            n_cal = min(samples, n_blocks - n_held)
            warnings.append(
                f"only {n_blocks} blocks of {seq_len} tokens available; using {n_cal} for calibration "
                f"and {n_held} held out (asked for {samples} and {heldout_samples})"
            )
        blocks = torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)
        order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed))
        cal_ids = blocks[order[:n_cal]].clone()
        held_ids = blocks[order[n_cal : n_cal + n_held]].clone()
        cal_mask, held_mask = torch.ones_like(cal_ids), torch.ones_like(held_ids)
    summary = {
        "n_documents": len(texts),
        "n_documents_tokenized": used,
        "n_tokens_total": len(ids),
        "n_tokens_used": int(cal_mask.sum()) + int(held_mask.sum()),
        "n_blocks_available": n_blocks,
        "samples": n_cal,
        "heldout": n_held,
        "seq_len": seq_len,
        "seed": seed,
        "padded": n_blocks == 0,
    }
    return CalibrationSet(cal_ids, cal_mask, held_ids, held_mask, summary, warnings)


def load_calibration(cal: CalibrationConfig, tokenizer) -> CalibrationSet:
    """`load_texts` + `pack` for one CalibrationConfig; the summary also names the source."""
    texts = load_texts(cal.source, cal.text_column, cal.dataset_config, cal.split)
    data = pack(texts, tokenizer, cal.samples, cal.seq_len, cal.heldout_samples, cal.seed)
    data.summary = {"source": cal.source, "text_column": cal.text_column, **data.summary}
    return data


# ---------------------------------------------------------------------------- preview
@dataclass
class DataPreview:
    """What a source holds, cheaply: for the GUI's data panel and `quailora data`.

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
        exact = total_size <= EXACT_LIMIT
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


# ---------------------------------------------------------------------------- training data
TRAIN_FORMATS = ("auto", "text", "prompt_response")
_ROLES = ("system", "user", "assistant")


@dataclass
class TrainingData:
    """Fine-tuning examples of one source, before tokenization (see `load_training_data`).

    `kind` is `text` (documents in `texts`, packed into blocks, loss on every token) or
    `prompt_response` (conversations in `conversations`: lists of {"role", "content"} with at
    least one assistant turn; loss on the assistant turns only). A `prompt`/`response` row
    becomes a user turn and an assistant turn.
    """

    source: str
    kind: str
    texts: list[str] = field(default_factory=list)
    conversations: list[list[dict[str, str]]] = field(default_factory=list)
    fields: str = ""  # what the examples came from: text column, "prompt/response" or "messages"

    def __len__(self) -> int:
        return len(self.texts) if self.kind == "text" else len(self.conversations)


def _no_fields(source: str, columns: Sequence[str], text_column: str | None) -> InputError:
    have = ", ".join(repr(c) for c in columns) or "none"
    text = f", nor a {text_column!r} column of plain text" if text_column else ""
    return InputError(
        f"{source!r} has no \"prompt\" and \"response\" fields and no \"messages\" field{text}; "
        f"its fields are {have}.",
        'Give JSON lines like {"prompt": "...", "response": "..."} or {"messages": [{"role": "user", '
        '"content": "..."}, {"role": "assistant", "content": "..."}]}, or plain text.',
    )


def _conversation(row: dict[str, Any], use_messages: bool, source: str, index: int) -> list[dict[str, str]]:
    """One checked conversation from a row; InputError naming the row on the first problem."""
    where = f"row {index + 1} of {source!r}"
    if not use_messages:
        prompt, response = row.get("prompt"), row.get("response")
        for name, value in (("prompt", prompt), ("response", response)):
            if not isinstance(value, str):
                raise InputError(
                    f"The {name!r} of {where} is {type(value).__name__}, not text.",
                    "Every row needs a string prompt and a string response.",
                )
        if not response.strip():
            raise InputError(f"The response of {where} is empty.", "Remove the row or give it a response.")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    messages = row.get("messages")
    hint = 'messages must be a list of {"role": "system"|"user"|"assistant", "content": "..."} objects.'
    if not isinstance(messages, list) or not messages:
        raise InputError(f"The messages of {where} are not a non-empty list.", hint)
    out = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise InputError(f"A message in {where} has no text content.", hint)
        if message.get("role") not in _ROLES:
            raise InputError(f"A message in {where} has role {message.get('role')!r}.", hint)
        out.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise InputError(f"{where} has no assistant message to learn from.", hint)
    return out


def load_training_data(
    source: str,
    data_format: str = "auto",
    text_column: str = "text",
    dataset_config: str | None = None,
    split: str = "train",
) -> TrainingData:
    """The fine-tuning examples of `source`, with the format detected from its fields.

    * `demo`: the fine-tuning demo text (`corpus.finetune_corpus`, Python language reference).
    * `.txt` / `.md` / a folder: plain text (one document per paragraph).
    * `.jsonl` / `.json` / `.csv` / `.parquet` / a hub dataset: `prompt_response` when the rows
      have a `messages` field or both `prompt` and `response`; else plain text from
      `text_column`. `data_format` (`auto`, `text`, `prompt_response`) forces the choice.

    Raises InputError (naming the fields the source does have) when the needed fields are
    missing or a row is malformed. Reads the whole source (it is the training set).
    """
    if data_format not in TRAIN_FORMATS:
        raise InputError(f"Unknown data format {data_format!r}.", f"Use one of {', '.join(TRAIN_FORMATS)}.")
    if source == DEMO_CALIBRATION:
        if data_format == "prompt_response":
            raise InputError("The demo text is plain text, not prompt/response pairs.", "Use data_format auto.")
        from quailora_core.sources.corpus import finetune_corpus

        return TrainingData(source, "text", texts=finetune_corpus(), fields="text")
    if not source or not source.strip():
        raise InputError("No training data given.", "Set [train] data in the run file, or use --data PATH.")
    if not Path(source).expanduser().exists() and not looks_like_hub_id(source):
        raise InputError(f"Training data file or folder {source!r} does not exist.", "Check the path.")
    local = _classify(source)
    if local is not None and local.kind in ("text", "folder"):
        if data_format == "prompt_response":
            raise _no_fields(source, ["text"], None)
        return TrainingData(source, "text", texts=load_texts(source), fields="text")
    if local is None:
        ds = _load_hub(source, dataset_config, split)
    else:
        import datasets

        kwargs: dict[str, Any] = {"delimiter": local.delimiter} if local.kind == "csv" else {}
        try:
            with _quiet_datasets():
                ds = datasets.load_dataset(
                    local.kind, data_files=[str(f) for f in local.files], split="train",
                    cache_dir=_datasets_cache(), **kwargs,
                )  # fmt: skip
        except Exception as exc:  # a parser error on a file the cheap checks passed
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"{source!r} could not be read: {message}", f"Check that it is valid {local.kind}."
            ) from None
    columns = list(ds.column_names)
    has_pairs = "messages" in columns or {"prompt", "response"} <= set(columns)
    if data_format == "text" or (data_format == "auto" and not has_pairs):
        if text_column not in columns:
            raise _no_fields(source, columns, text_column) if data_format == "auto" else _missing_column(
                source, text_column, columns
            )
        texts = _strings(ds, source, text_column)
        if not texts:
            raise _no_text(source)
        return TrainingData(source, "text", texts=texts, fields=text_column)
    if not has_pairs:
        raise _no_fields(source, columns, None)
    use_messages = "messages" in columns
    conversations = [_conversation(row, use_messages, source, i) for i, row in enumerate(ds)]
    if not conversations:
        raise InputError(f"{source!r} has no rows.", "Give at least one example.")
    return TrainingData(
        source, "prompt_response", conversations=conversations,
        fields="messages" if use_messages else "prompt/response",
    )  # fmt: skip


def pack_all(texts: Sequence[str], tokenizer, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every full `seq_len` block of the texts (EOS between documents, as `pack`), in order.

    For training: the remainder after the last full block is dropped; a text shorter than one
    block becomes one block padded at the end (attention_mask 0 there). Returns
    (input_ids, attention_mask), each (blocks, seq_len) int64. Empty text is an InputError.
    """
    import torch

    ids, _ = _tokenize(texts, tokenizer, 1 << 62)
    if not ids:
        raise InputError("The training text is empty after tokenization.", "Give a source that contains text.")
    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        tokens = torch.full((1, seq_len), _pad_id(tokenizer), dtype=torch.long)
        tokens[0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask = torch.zeros((1, seq_len), dtype=torch.long)
        mask[0, : len(ids)] = 1
        return tokens, mask
    blocks = torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)
    return blocks, torch.ones_like(blocks)
