"""Training data for `quailora train`: plain text (packed into blocks) or prompt/response
rows (`prompt`/`response` fields, or chat `messages`), told apart from the fields unless
the run says which (`data_format`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quailora_core.config import DEMO_CALIBRATION, TRAIN_FORMATS
from quailora_core.errors import InputError
from quailora_core.sources.references import _classify, looks_like_dataset_id
from quailora_core.sources.tables import _missing_column, _no_text
from quailora_core.sources.text import (
    _datasets_cache,
    _load_hub,
    _quiet_datasets,
    _strings,
    load_texts,
)

# ---------------------------------------------------------------------------- training data


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


def check_training_source(source: str, field: str = "train.data") -> None:
    """The cheap check of a training (`train.data`) or validation (`train.validation_data`)
    source, before anything is read: `demo`, a hub dataset id, or an existing local file or
    folder of a kind that can be read. Raises InputError naming `field`. The app checks each
    path as it is typed with it; `export_run` asks it before copying anything."""
    what = "Validation data" if field.endswith("validation_data") else "Training data"
    if source == DEMO_CALIBRATION:
        return
    if not source or not source.strip():
        raise InputError(f"No {what.lower()} given.", "Give a file or folder, a hub dataset id, or demo.", field=field)
    if not Path(source).expanduser().exists():
        if looks_like_dataset_id(source):
            return
        raise InputError(f"{what} file or folder {source!r} does not exist.", "Check the path.", field=field)
    try:
        _classify(source)
    except InputError as exc:
        raise InputError(exc.message, exc.hint, field=field) from None


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
    if not Path(source).expanduser().exists() and not looks_like_dataset_id(source):
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
