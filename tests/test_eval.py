"""`quailora eval`: perplexity of the fp base, the 4-bit base and 4-bit base + adapter.

The demo model ships with the project (the same bytes on every machine), so its figures
hold everywhere: NF4 raises the perplexity of unseen text (the built-in fine-tuning text,
which the demo calibration text does not contain) by about 1.8 % on 32 x 256 tokens, 5
standard errors of the text's sampling noise; a QuAILoRA adapter of rank 8 calibrated on
12 x 64 tokens takes back about half of it (55 %); 8-bit quantization costs nothing
measurable; a plain QLoRA adapter (B = 0) changes nothing at all. The asserts leave wide
margins around those figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import make_config

from quailora_core.cli import main
from quailora_core.errors import InputError
from quailora_core.evaluate import evaluate_adapter
from quailora_core.events import event_from_json
from quailora_core.init.pipeline import run_init
from quailora_core.sources.corpus import finetune_corpus


@pytest.fixture(scope="module")
def unseen_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "reference.txt"
    path.write_text("\n\n".join(finetune_corpus(60_000)), encoding="utf-8")
    return path


def test_quailora_adapter_recovers_most_of_the_quantization_gap(demo_model, tmp_path, unseen_text, capsys):
    adapter = tmp_path / "quailora"
    run_init(make_config(demo_model, adapter))
    code = main(["eval", "--adapter", str(adapter), "--data", "demo", "--device", "cpu", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    events = [event_from_json(line) for line in out.splitlines()]  # stdout holds only events
    report = events[-1].summary
    assert type(events[-1]).__name__ == "Finished" and report["tokens"] == 32 * 255  # the default 32 x 256
    fp, q, a = report["fp_perplexity"], report["quantized_perplexity"], report["adapter_perplexity"]
    assert all(math.isfinite(x) and x > 1 for x in (fp, q, a))
    assert q > fp * 1.01  # 4-bit NF4 costs perplexity on this model (1.8 %)
    gap, se = report["quantized_loss"] - report["fp_loss"], report["gap_stderr"]
    assert report["gap_measurable"] and gap > 3 * se  # measured: 5.2 standard errors
    assert report["adapter_loss"] < report["quantized_loss"] - se  # the initialization takes back ...
    assert 0.3 < report["gap_recovered"] < 1.2  # ... a good part of it (measured: 55 %)
    assert report["gap_recovered"] == pytest.approx((q - a) / (q - fp))
    assert report["quantization"] == "4-bit NF4" and report["method"] == "quailora"


def test_plain_qlora_adapter_changes_nothing(demo_model, tmp_path, unseen_text, capsys):
    adapter = tmp_path / "qlora"
    run_init(make_config(demo_model, adapter, init__method="qlora"))
    code = main(["eval", "--adapter", str(adapter), "--data", str(unseen_text), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "4-bit NF4 + adapter (qlora)" in out and "recovers 0.0%" in out, out
    report = evaluate_adapter(str(adapter), str(unseen_text), samples=4, seq_len=64, device="cpu")
    assert report.adapter_loss == pytest.approx(report.quantized_loss, abs=1e-6)
    table = report.table()
    assert "full precision" in table and "4-bit NF4 + adapter (qlora)" in table
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["samples"] == 4


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
    assert not better.gap_measurable and "recovers" not in better.table() and "no gap to close" in better.table()

    one = _report(5.0, 5.5, 5.1, se=float("nan"), samples=1)
    assert not one.gap_measurable and "uncertainty is unknown" in one.table()
    assert json.loads(json.dumps(one.to_dict(), allow_nan=False))["gap_stderr"] is None


def test_no_share_is_claimed_for_8_bit_where_quantization_costs_nothing_measurable(demo_model, tmp_path, capsys):
    adapter = tmp_path / "int8"
    run_init(make_config(demo_model, adapter, quantization__bits=8))
    code = main(["eval", "--adapter", str(adapter), "--data", "demo", "--samples", "16", "--seq-len", "128",
                 "--device", "cpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "8-bit LLM.int8 + adapter" in out and "no share of it is given" in out, out
    assert "recovers" not in out
