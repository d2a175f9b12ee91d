"""The over-fitting guard: too few calibration tokens for a layer's inputs is said before the
run (estimate, log) and, when the held-out gain falls far below the calibrated one, after it."""

from __future__ import annotations

import math

from helpers import make_config

from quailora_core.events import LayerResult, Log
from quailora_core.init.estimate import estimate_run
from quailora_core.init.overfitting import HELDOUT_SHARE, TOKENS_PER_INPUT, overfitting, token_shortfall
from quailora_core.init.pipeline import run_init
from quailora_core.model.info import summarize_model


def _layer(i: int, cal: tuple[float, float], held: tuple[float, float], n_in: int = 1024) -> LayerResult:
    return LayerResult(index=i, name=f"model.layers.0.l{i}", block=0, module=f"l{i}", shape=(64, n_in),
                       cal_err_before=cal[0], cal_err_after=cal[1], uncal_err_before=0.1, uncal_err_after=0.09,
                       heldout_err_before=held[0], heldout_err_after=held[1], seconds=0.0)  # fmt: skip


def test_too_few_tokens_for_the_widest_input_is_said_with_the_samples_that_would_do():
    # the setting of the issue: 16 x 256 tokens, hidden 1024, MLP inputs of 2816
    text = token_shortfall(16 * 256, [1024, 2816], seq_len=256)
    needed = TOKENS_PER_INPUT * 2816
    assert text and f"{needed:,} calibration tokens" in text and f"--samples {math.ceil(needed / 256)}" in text
    assert "--damping 0.1" in text and "1.5 per input" in text
    assert token_shortfall(needed, [1024, 2816], seq_len=256) is None
    assert token_shortfall(10, [], seq_len=8) is None


def test_a_held_out_gain_far_below_the_calibrated_one_is_said_after_the_run():
    fitted = [_layer(i, (4e-3, 1e-3), (4e-3, 3.6e-3)) for i in range(3)]  # 75 % against 10 %
    text = overfitting(fitted, tokens=4096, seq_len=256)
    assert text and "improved 10% against 75%" in text and "--samples" in text
    general = [_layer(i, (4e-3, 1e-3), (4e-3, 1e-3 / HELDOUT_SHARE * 0.9)) for i in range(3)]
    assert overfitting(general, tokens=4096, seq_len=256) is None
    nothing_held_out = [_layer(i, (4e-3, 1e-3), (float("nan"), float("nan"))) for i in range(3)]
    assert overfitting(nothing_held_out, tokens=4096, seq_len=256) is None
    no_gain = [_layer(i, (4e-3, 3.9e-3), (4e-3, 4e-3)) for i in range(3)]  # qlora-like: nothing to lose
    assert overfitting(no_gain, tokens=4096, seq_len=256) is None


def test_the_estimate_warns_before_the_run(demo_model, tmp_path):
    summary = summarize_model(str(demo_model))
    widest = max(i for _, i in summary.linear_shapes.values())
    small = make_config(demo_model, tmp_path / "a", calibration__samples=2, calibration__seq_len=32)
    assert 2 * 32 < TOKENS_PER_INPUT * widest
    warnings = estimate_run(small, summary).warnings
    assert len(warnings) == 1 and f"up to {widest} inputs" in warnings[0]
    enough = make_config(demo_model, tmp_path / "a", calibration__samples=TOKENS_PER_INPUT * widest // 32 + 1,
                         calibration__seq_len=32)  # fmt: skip
    assert estimate_run(enough, summary).warnings == []


def test_the_run_says_it_in_its_log_and_records_it(demo_model, text_file, tmp_path):
    cfg = make_config(demo_model, tmp_path / "adapter", calibration__samples=2, calibration__seq_len=32,
                      calibration__heldout_samples=2, calibration__source=str(text_file))  # fmt: skip
    events = []
    result = run_init(cfg, events.append)
    logs = [e for e in events if isinstance(e, Log) and e.level == "warning"]
    first_layer = next(i for i, e in enumerate(events) if isinstance(e, LayerResult))
    before = [e for e in events[:first_layer] if e in logs]
    assert any("calibration tokens for layers with up to" in e.message for e in before), logs
    s = result.summary
    far_below = s["mean_heldout_improvement"] < HELDOUT_SHARE * s["mean_cal_improvement"]
    assert (s["overfitting"] is not None) == (far_below and s["mean_cal_improvement"] >= 0.05)
    if s["overfitting"]:
        assert any(e.message == s["overfitting"] for e in logs)
