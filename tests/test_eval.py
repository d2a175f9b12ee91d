"""`quailora eval`: perplexity of the fp base, the 4-bit base and 4-bit base + adapter.

What is reliably true on the demo model (measured before writing these asserts): NF4
quantization raises the perplexity of unseen text (the fine-tuning corpus, not the
calibration text) by about 2 %, a QuAILoRA adapter of rank 8 takes back most of that gap
(89 % to 110 % on the sizes tried: 8 x 96, 16 x 128, 32 x 256 tokens), and a plain QLoRA
adapter (B = 0) changes nothing at all. The asserts leave wide margins around that.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import make_config

from quailora_core.cli import main
from quailora_core.corpus import finetune_corpus
from quailora_core.engine import run_init
from quailora_core.errors import InputError
from quailora_core.evaluate import evaluate_adapter
from quailora_core.events import event_from_json


@pytest.fixture(scope="module")
def unseen_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "reference.txt"
    path.write_text("\n\n".join(finetune_corpus(60_000)), encoding="utf-8")
    return path


def test_quailora_adapter_recovers_most_of_the_quantization_gap(demo_model, tmp_path, unseen_text, capsys):
    adapter = tmp_path / "quailora"
    run_init(make_config(demo_model, adapter))
    code = main(["eval", "--adapter", str(adapter), "--data", str(unseen_text), "--samples", "8",
                 "--seq-len", "96", "--device", "cpu", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    events = [event_from_json(line) for line in out.splitlines()]  # stdout holds only events
    report = events[-1].summary
    assert type(events[-1]).__name__ == "Finished" and report["tokens"] == 8 * 95
    fp, q, a = report["fp_perplexity"], report["quantized_perplexity"], report["adapter_perplexity"]
    assert all(math.isfinite(x) and x > 1 for x in (fp, q, a))
    assert q > fp * 1.005  # 4-bit NF4 costs perplexity on this model
    assert abs(a - fp) < 0.5 * (q - fp)  # the initialization takes back more than half of it
    assert report["gap_recovered"] == pytest.approx((q - a) / (q - fp))
    assert report["quantization"] == "4-bit NF4" and report["method"] == "quailora"


def test_plain_qlora_adapter_changes_nothing(demo_model, tmp_path, unseen_text, capsys):
    adapter = tmp_path / "qlora"
    run_init(make_config(demo_model, adapter, init__method="qlora"))
    code = main(["eval", "--adapter", str(adapter), "--data", str(unseen_text), "--samples", "2",
                 "--seq-len", "32", "--device", "cpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "4-bit NF4 + adapter (qlora)" in out and "recovers 0.0%" in out, out
    report = evaluate_adapter(str(adapter), str(unseen_text), samples=4, seq_len=64, device="cpu")
    assert report.adapter_loss == pytest.approx(report.quantized_loss, abs=1e-6)
    assert report.quantized_loss > report.fp_loss
    assert report.gap_recovered == pytest.approx(0.0, abs=1e-4)
    table = report.table()
    assert "full precision" in table and "4-bit NF4 + adapter (qlora)" in table and "recovers" in table
    assert json.loads(json.dumps(report.to_dict()))["samples"] == 4


def test_eval_refuses_another_base_and_bad_input(demo_model, tmp_path, unseen_text):
    from tiny_models import save_tiny

    adapter = tmp_path / "a"
    run_init(make_config(demo_model, adapter, init__method="qlora"))
    other = save_tiny("llama", tmp_path / "tiny")
    with pytest.raises(InputError, match="is not the base"):
        evaluate_adapter(str(adapter), str(unseen_text), model=str(other), device="cpu")
    with pytest.raises(InputError, match="does not exist"):
        evaluate_adapter(str(tmp_path / "nope"), str(unseen_text), device="cpu")
    with pytest.raises(InputError, match="does not exist"):
        evaluate_adapter(str(adapter), str(tmp_path / "missing.txt"), device="cpu")
    with pytest.raises(InputError):
        evaluate_adapter(str(adapter), str(unseen_text), samples=0, device="cpu")


def _report(fp: float, q: float, a: float, se: float, samples: int = 16):
    from quailora_core.evaluate import EvalReport

    return EvalReport(
        model="m", adapter="a", data="d", quantization="4-bit NF4", method="quailora", samples=samples,
        seq_len=128, tokens=samples * 127, fp_loss=fp, quantized_loss=q, adapter_loss=a, seconds=1.0,
        device="cpu", gap_stderr=se,
    )  # fmt: skip


def test_a_share_is_given_only_for_a_gap_the_text_can_measure():
    measured = _report(5.00, 5.10, 5.02, se=0.01)  # a gap of 10 standard errors
    assert measured.gap_measurable and measured.gap_recovered == pytest.approx(
        (math.exp(5.10) - math.exp(5.02)) / (math.exp(5.10) - math.exp(5.00))
    )
    assert "recovers 80.8%" in measured.table() and "± 0.0100 standard error over 16 samples" in measured.table()

    noise = _report(5.000, 5.004, 4.990, se=0.003)  # 1.3 standard errors: could be noise
    assert not noise.gap_measurable and math.isnan(noise.gap_recovered)
    table = noise.table()
    assert "too small to measure" in table and "recovers" not in table and "--samples" in table
    as_json = json.loads(json.dumps(noise.to_dict(), allow_nan=False))  # strict JSON: null, not NaN
    assert as_json["gap_recovered"] is None and as_json["gap_measurable"] is False

    better = _report(5.0, 4.9, 4.95, se=0.01)  # quantized better than full precision: no gap to share
    assert not better.gap_measurable and "recovers" not in better.table()

    one = _report(5.0, 5.5, 5.1, se=float("nan"), samples=1)
    assert not one.gap_measurable and "uncertainty is unknown" in one.table()
    assert json.loads(json.dumps(one.to_dict(), allow_nan=False))["gap_stderr"] is None
