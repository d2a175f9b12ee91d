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
