"""Text into token blocks: one tokenizer pass and one block cutter for every packer.

`pack` (calibration and `quailora eval`: seeded `samples x seq_len` blocks plus held-out
ones), `pack_all` (training: every block, in order) and the demo model builder all cut
the same stream: documents tokenized without special tokens and joined by EOS, cut into
`seq_len` blocks, a text shorter than one block padded at the end (attention mask 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quailora_core.config import CalibrationConfig
from quailora_core.errors import InputError
from quailora_core.sources.text import load_texts

if TYPE_CHECKING:
    import torch

TOKENIZE_LIMIT = 1_000_000  # pack tokenizes at most max(this, 8 x needed) tokens


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


def tokenize(texts: Sequence[str], tokenizer, limit: int = 1 << 62, eos_after_each: bool = False) -> tuple[list[int], int]:
    """Token ids of the texts joined by EOS (when the tokenizer has one), up to about `limit`;
    `eos_after_each` also ends the last document with one (how the demo model was pretrained).

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
            if eos_after_each:
                ids.extend(doc)
                ids.append(eos)
                continue
            if not doc:
                continue
            if ids and eos is not None:
                ids.append(eos)
            ids.extend(doc)
            if len(ids) >= limit:
                return ids, used
    return ids, used


def cut_blocks(ids: list[int], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (blocks, seq_len) int64: every full block in order
    (the remainder dropped), or, for fewer than seq_len tokens, one block padded at the end."""
    import torch

    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        tokens = torch.full((1, seq_len), pad_id, dtype=torch.long)
        tokens[0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask = torch.zeros((1, seq_len), dtype=torch.long)
        mask[0, : len(ids)] = 1
        return tokens, mask
    blocks = torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)
    return blocks, torch.ones_like(blocks)


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
    ids, used = tokenize(texts, tokenizer, max(TOKENIZE_LIMIT, 8 * needed))
    if not ids:
        raise InputError(
            "The calibration text is empty after tokenization.", "Give a source that contains text."
        )
    warnings: list[str] = []
    n_blocks = len(ids) // seq_len
    blocks, mask = cut_blocks(ids, seq_len, _pad_id(tokenizer))
    if n_blocks == 0:
        n_cal, n_held = 1, 0
        cal_ids, cal_mask = blocks, mask
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


def pack_all(texts: Sequence[str], tokenizer, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every full `seq_len` block of the texts (EOS between documents, as `pack`), in order:
    for training (`cut_blocks`). Empty text is an InputError."""
    ids, _ = tokenize(texts, tokenizer)
    if not ids:
        raise InputError("The training text is empty after tokenization.", "Give a source that contains text.")
    return cut_blocks(ids, seq_len, _pad_id(tokenizer))
