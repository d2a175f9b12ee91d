"""Training data as token examples: text packed into blocks, conversations rendered with
the tokenizer's chat template (or a plain prompt / response layout) with the loss on the
responses only, and the seeded validation split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quailora_core.errors import InputError
from quailora_core.sources.packing import pack_all
from quailora_core.sources.training_data import TrainingData

IGNORE_INDEX = -100


# ---------------------------------------------------------------------------- tokenization
def _bos(tokenizer) -> list[int]:
    """[BOS] when the tokenizer adds one by default (as its own encoding of a text would start)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def _segments(tokenizer, messages: list[dict[str, str]]) -> tuple[list[tuple[str, bool]], str]:
    """The conversation as text pieces, each marked trainable (assistant turns) or not.

    With a chat template: the template's rendering, cut where each assistant turn starts
    (the rendering of the turns before it with the generation prompt) and ends (the rendering
    up to and including it). Without one (or with a template whose renderings are not
    prefixes of each other): each message's content followed by a blank line, the prompt
    "prompt\\n\\nresponse" layout. Returns (pieces, layout): layout is "chat template",
    "plain" (no template) or "plain (template not prefix-consistent)".
    """
    layout = "plain"
    if getattr(tokenizer, "chat_template", None):
        render = tokenizer.apply_chat_template
        try:
            full = render(messages, tokenize=False)
        except Exception as exc:  # jinja errors, templates that raise on odd role orders
            raise InputError(
                f"The tokenizer's chat template cannot render a conversation: {str(exc).splitlines()[0]}",
                "Check the roles and their order in the data (e.g. user and assistant alternating).",
            ) from None
        pieces: list[tuple[str, bool]] = []
        pos = 0
        ok = isinstance(full, str)
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or not ok:
                continue
            try:
                start = render(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
                end = render(messages[: i + 1], tokenize=False)
            except Exception:
                ok = False
                break
            if not (full.startswith(start) and full.startswith(end) and pos <= len(start) <= len(end)):
                ok = False
                break
            pieces += [(full[pos : len(start)], False), (full[len(start) : len(end)], True)]
            pos = len(end)
        if ok:
            return [*pieces, (full[pos:], False)], "chat template"
        layout = "plain (template not prefix-consistent)"
    out = []
    for i, m in enumerate(messages):
        sep = "" if i == len(messages) - 1 else "\n\n"
        out.append((m["content"] + sep, m["role"] == "assistant"))
    return out, layout


def encode_conversation(tokenizer, messages: list[dict[str, str]], seq_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation, cut to seq_len; labels are -100 except on the
    assistant turns (and, without a chat template, the EOS after a final assistant turn)."""
    ids, labels, _ = _encode_full(tokenizer, messages)
    return ids[:seq_len], labels[:seq_len]


def _encode_full(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int], str]:
    segments, layout = _segments(tokenizer, messages)
    templated = layout == "chat template"
    ids: list[int] = [] if templated else list(_bos(tokenizer))
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    for text, trainable in segments:
        if not text:
            continue
        piece = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        ids += piece
        labels += piece if trainable else [IGNORE_INDEX] * len(piece)
    eos = getattr(tokenizer, "eos_token_id", None)
    if not templated and eos is not None and messages[-1]["role"] == "assistant":
        ids.append(eos)
        labels.append(eos)
    return ids, labels, layout


@dataclass
class _Examples:
    rows: list[dict[str, list[int]]]
    summary: dict[str, Any]


def encode(data: TrainingData, tokenizer, seq_len: int) -> _Examples:
    """Tokenized training examples: packed blocks for text, one example per conversation."""
    if data.kind == "text":
        ids, mask = pack_all(data.texts, tokenizer, seq_len)
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        rows = [
            {"input_ids": i, "attention_mask": m, "labels": lab}
            for i, m, lab in zip(ids.tolist(), mask.tolist(), labels.tolist(), strict=True)
        ]
        return _Examples(rows, {"documents": len(data.texts), "blocks": len(rows)})
    rows, dropped, truncated = [], 0, 0
    layouts: dict[str, int] = {}
    for messages in data.conversations:
        ids, labels, layout = _encode_full(tokenizer, messages)
        layouts[layout] = layouts.get(layout, 0) + 1
        truncated += len(ids) > seq_len
        ids, labels = ids[:seq_len], labels[:seq_len]
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    if not rows:
        raise InputError(
            f"No example of {data.source!r} has a response within the first {seq_len} tokens.",
            "Raise seq_len (--seq-len), or shorten the prompts.",
        )
    summary = {"examples": len(data.conversations), "dropped": dropped, "truncated": truncated, "layout": layouts}
    return _Examples(rows, summary)


def _split(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out round(fraction * n) rows (at least 1 when fraction > 0 and n >= 2), seeded."""
    import torch

    n = len(rows)
    n_val = min(n - 1, max(1, round(fraction * n))) if fraction > 0 and n >= 2 else 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


def _count(rows: list[dict[str, list[int]]]) -> tuple[int, int]:
    tokens = sum(sum(r["attention_mask"]) for r in rows)
    trained = sum(sum(1 for x in r["labels"][1:] if x != IGNORE_INDEX) for r in rows)
    return tokens, trained
