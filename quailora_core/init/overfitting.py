"""The over-fitting guard: too few calibration tokens for a layer's input size.

The solve fits the correction to the Gram matrix H = XᵀX of the calibration inputs of
each layer; H has `in_features`² entries estimated from N tokens. With N not much larger
than `in_features` the correction fits those tokens and little else: on a 275 M-parameter
Llama (hidden 1024) with 16 x 256 = 4 096 tokens (4 per input) the calibrated error fell
74 % and the held-out error 11 %. Two checks say so with a fix:

- before the run (`token_shortfall`, in the form's estimate and the run's log): fewer than
  `TOKENS_PER_INPUT` tokens per input of the widest target;
- after it (`overfitting`): the held-out improvement is less than `HELDOUT_SHARE` of the
  calibrated one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from quailora_core.events import LayerResult
from quailora_core.init.metrics import summarize

# Below this many calibration tokens per input feature the held-out gain drops away (the
# demo model: 4 096 tokens for inputs of 352, 11.6 per input, keeps 99 % of its gain).
TOKENS_PER_INPUT = 8
HELDOUT_SHARE = 0.5  # held-out improvement below this share of the calibrated one: warn
_MEANINGFUL = 0.05  # only when the calibrated improvement itself is at least 5 %


def _fix(tokens: int, widest: int, seq_len: int) -> str:
    needed = TOKENS_PER_INPUT * widest
    samples = math.ceil(needed / max(seq_len, 1))
    return (f"use at least {needed:,} calibration tokens (--samples {samples} at --seq-len {seq_len}, or a "
            "longer --seq-len), or more damping (--damping 0.1)")  # fmt: skip


def token_shortfall(tokens: int, input_sizes: Iterable[int], seq_len: int) -> str | None:
    """A warning when `tokens` calibration tokens are too few for the widest input, else None."""
    widest = max(input_sizes, default=0)
    if not widest or tokens >= TOKENS_PER_INPUT * widest:
        return None
    return (f"{tokens:,} calibration tokens for layers with up to {widest:,} inputs ({tokens / widest:.1f} per "
            f"input): the initialization will fit these tokens more than the model's text; "
            f"{_fix(tokens, widest, seq_len)}")  # fmt: skip


def overfitting(layers: list[LayerResult], tokens: int, seq_len: int) -> str | None:
    """A warning when the held-out improvement falls far below the calibrated one, else None."""
    summary = summarize(layers)
    cal, held = summary["mean_cal_improvement"], summary["mean_heldout_improvement"]
    if not (math.isfinite(cal) and math.isfinite(held)) or cal < _MEANINGFUL or held >= HELDOUT_SHARE * cal:
        return None
    widest = max((r.shape[1] for r in layers), default=0)
    return (f"the held-out error improved {held:.0%} against {cal:.0%} on the calibration tokens: the "
            f"adapter fits its {tokens:,} calibration tokens more than the model's text; "
            f"{_fix(tokens, widest, seq_len)}")  # fmt: skip
