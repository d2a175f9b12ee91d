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

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import quailora_resources

from quailora_core.config import DEMO_CALIBRATION
from quailora_core.errors import InputError
from quailora_core.files import cache_root
from quailora_core.sources.references import _classify, _env_offline, _hub_reachable, _offline_error
from quailora_core.sources.tables import _has_text, _inspect_table, _missing_column, _no_text, _not_string

if TYPE_CHECKING:
    pass

DEFAULT_TEXT = quailora_resources.path(quailora_resources.SAMPLE_TEXT)
DEMO_CHARS = 600_000  # default text + docstrings: ~150k+ tokens with any tokenizer

_TRUE = ("1", "true", "yes", "on")


def _datasets_cache() -> str:
    path = cache_root() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


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


