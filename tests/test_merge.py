"""`quailora merge` (serving/merge.py): the merged model is the model fine-tuning trained.

What a user relies on: the merged folder loads with plain transformers, with no bitsandbytes
and no peft, and computes what the 4-bit base plus the adapter computes (as training loads
them), for a fresh and for a fine-tuned adapter, untied and tied heads; merging into the
full-precision weights instead, as the usual tutorials do, would not. Bad input is refused
in one line before anything loads, a failed self-check leaves nothing, and only one block's
weights are in memory at a time. `merge --gguf` also writes the merged model as a GGUF file that
transformers' GGUF reader loads to the merged model's logits, refuses before the merge what the
GGUF export would refuse, and keeps the merged folder when the GGUF step fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import make_config
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from quailora_core.adapter.record import AdapterRecord
from quailora_core.cli import main
from quailora_core.errors import Cancelled, EngineError
from quailora_core.events import CancelToken, Progress
from quailora_core.init.pipeline import run_init
from quailora_core.model.base import load_quantized_base
from quailora_core.serving import merge
from quailora_core.serving.merge import merge_adapter, written_tensors

VOCAB = 4000  # covers the demo model's tokenizer, which these models borrow
BOUND = 1e-5  # relative logits difference: merged vs 4-bit base + adapter (found: 3e-7; merging into W instead: 0.14)


def _llama(folder: Path, demo_model: Path, tied: bool, seed: int = 0, **save) -> Path:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=tied, bos_token_id=1,
                         eos_token_id=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder, **save)
    AutoTokenizer.from_pretrained(demo_model).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def adapter(request, demo_model, tmp_path_factory) -> Path:
    """A rank-8 NF4 QuAILoRA adapter of a tiny float32 Llama saved in several shards."""
    tmp = tmp_path_factory.mktemp("merge")
    model = _llama(tmp / "model", demo_model, request.param, max_shard_size="100KB")
    out = tmp / "adapter"
    run_init(make_config(model, out, calibration__samples=6, calibration__seq_len=32, calibration__heldout_samples=2))
    return out


def _ids() -> torch.Tensor:
    return torch.randint(3, 3000, (2, 24), generator=torch.Generator().manual_seed(0))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def _quantized_plus_adapter(adapter: Path) -> torch.Tensor:
    """Logits of the 4-bit base + the adapter, loaded as training loads them."""
    from peft import PeftModel

    record = AdapterRecord.load(adapter)
    model = PeftModel.from_pretrained(load_quantized_base(record.base_model.path, record), str(adapter)).eval()
    return model(input_ids=_ids()).logits


@torch.no_grad()
def _merged_into_w(adapter: Path) -> torch.Tensor:
    """Logits of the usual merge: the adapter merged by peft into the full-precision base."""
    from peft import PeftModel

    record = AdapterRecord.load(adapter)
    base = AutoModelForCausalLM.from_pretrained(record.base_model.path, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()(input_ids=_ids()).logits


@torch.no_grad()
def _logits(folder: Path) -> torch.Tensor:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()(input_ids=_ids()).logits


def _base_keys(adapter: Path) -> set[str]:
    return set(written_tensors(Path(AdapterRecord.load(adapter).base_model.path)))


def test_the_merged_model_computes_what_the_4bit_base_plus_adapter_computes(adapter, tmp_path):
    out = tmp_path / "merged"
    result = merge_adapter(str(adapter), str(out), "fp32", max_shard_bytes=200_000)
    assert result.shards > 1 and (out / "model.safetensors.index.json").is_file()
    assert len(result.checked) == 3
    expected = _quantized_plus_adapter(adapter)
    found = _logits(out)
    assert _rel(found, expected) < BOUND
    # the usual merge into W applies the correction twice: far outside the bound
    assert _rel(_merged_into_w(adapter), expected) > 100 * BOUND
    # a complete model folder: the checkpoint's own keys, tokenizer, no quantization
    assert set(written_tensors(out)) == _base_keys(adapter)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (out / "generation_config.json").is_file()
    assert AutoTokenizer.from_pretrained(out)("def f(x):").input_ids
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_layers_without_a_lora_are_merged_as_the_4bit_model_computed_them(demo_model, tmp_path):
    """With q/v targets (peft's usual), k/o and the MLP are 4-bit in the model that is trained:
    written as W, the merged model was off by 17 % (found by an outside tester)."""
    model = _llama(tmp_path / "model", demo_model, tied=False)
    adapter = tmp_path / "adapter"
    run_init(make_config(model, adapter, calibration__samples=6, calibration__seq_len=32,
                         calibration__heldout_samples=2, lora__targets=["q_proj", "v_proj"]))  # fmt: skip
    out = tmp_path / "merged"
    result = merge_adapter(str(adapter), str(out), "fp32")
    assert result.merged_layers == 6 and len(result.checked) == 4  # 3 targets and one layer without a LoRA
    assert _rel(_logits(out), _quantized_plus_adapter(adapter)) < BOUND


def test_a_fine_tuned_adapter_merges_to_what_training_computes(demo_model, demo_adapter, tmp_path):
    from test_train import train_config

    from quailora_core.train.trainer import run_train

    trained = Path(run_train(train_config(demo_model, demo_adapter, tmp_path, max_steps=3, eval_interval=3,
                                          save_interval=3)).adapter_dir)  # fmt: skip
    assert AdapterRecord.load(trained).training
    before, after = load_file(demo_adapter / "adapter_model.safetensors"), load_file(trained / "adapter_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # training moved it
    out = tmp_path / "merged"
    code = main(["merge", "--adapter", str(trained), "--output", str(out), "--dtype", "fp32"])
    assert code == 0
    expected = _quantized_plus_adapter(trained)
    assert _rel(_logits(out), expected) < BOUND
    assert _rel(_merged_into_w(trained), expected) > 100 * BOUND


def test_the_dtype_option_sets_the_weights_and_the_config(adapter, tmp_path):
    merge_adapter(str(adapter), str(tmp_path / "fp32"), "fp32")
    merge_adapter(str(adapter), str(tmp_path / "bf16"))  # the default
    full, half = (dict(merge.iter_merged(tmp_path / name)) for name in ("fp32", "bf16"))
    assert {t.dtype for t in half.values()} == {torch.bfloat16}
    for key in full:  # each merged sum is formed once and rounded once
        assert torch.equal(half[key], full[key].to(torch.bfloat16)), key
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16


def _refused(args: list[str], capsys, expect: str, output: Path) -> None:
    existed = output.exists()
    code = main(["merge", *args, "--output", str(output)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and expect.lower() in lines[0].lower(), err
    assert output.exists() == existed
    assert not [p for p in output.parent.iterdir() if ".partial-" in p.name]


def _copy(adapter: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(adapter, tmp_path / "copy"))


def test_bad_input_is_refused_in_one_line_before_anything_loads(demo_model, demo_adapter, tmp_path, capsys):
    out = tmp_path / "merged"
    _refused(["--adapter", str(tmp_path / "nowhere")], capsys, "does not exist", out)
    no_record = _copy(demo_adapter, tmp_path)
    (no_record / "quailora.json").unlink()
    _refused(["--adapter", str(no_record)], capsys, "has no quailora.json", out)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    _refused(["--adapter", str(demo_adapter)], capsys, "exists and is not empty", busy)
    assert (busy / "keep.txt").read_text() == "mine"
    # never into its own inputs (an outside tester's merge landed inside the adapter folder)
    _refused(["--adapter", str(demo_adapter)], capsys, "lies inside the adapter folder", demo_adapter / "merged")
    _refused(["--adapter", str(demo_adapter)], capsys, "lies inside the base model folder", demo_model / "merged")
    _refused(["--adapter", str(demo_adapter), "--gguf", "f16", "--gguf-output", str(demo_adapter / "m.gguf")],
             capsys, "lies inside the adapter folder", out)  # fmt: skip
    assert not (demo_adapter / "m.gguf").exists()


def test_another_base_with_the_same_architecture_is_refused(demo_model, demo_adapter, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(demo_model, other)
    weights = load_file(other / "model.safetensors")
    first = AdapterRecord.load(demo_adapter).targets[0] + ".weight"
    weights[first] = weights[first] + 1e-2
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    _refused(["--adapter", str(demo_adapter), "--model", str(other)], capsys, "is not the base", tmp_path / "m")


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (lambda cfg, rec: cfg.update(use_dora=True), "DoRA"),
        (lambda cfg, rec: cfg.update(modules_to_save=["lm_head"]), "modules_to_save"),
        (lambda cfg, rec: rec["quantization"].update(bits=3), "cannot reproduce"),
    ],
    ids=["dora", "modules-to-save", "3-bit"],
)
def test_adapters_it_cannot_merge_are_refused(demo_adapter, tmp_path, capsys, edit, expect):
    copy = _copy(demo_adapter, tmp_path)
    cfg = json.loads((copy / "adapter_config.json").read_text())
    rec = json.loads((copy / "quailora.json").read_text())
    edit(cfg, rec)
    (copy / "adapter_config.json").write_text(json.dumps(cfg))
    (copy / "quailora.json").write_text(json.dumps(rec))
    _refused(["--adapter", str(copy)], capsys, expect, tmp_path / "merged")


def test_a_merge_that_disagrees_with_bitsandbytes_fails_and_leaves_nothing(demo_adapter, tmp_path, monkeypatch):
    from quailora_core.quant import quantizer

    real = quantizer.quantize_dequantize

    def off_by_a_little(weight, q):  # what a quantizer that drifted from bitsandbytes would give
        return real(weight, q) * (1 + 1e-3)

    monkeypatch.setattr(quantizer, "quantize_dequantize", off_by_a_little)
    with pytest.raises(EngineError, match="Self-check failed"):
        merge_adapter(str(demo_adapter), str(tmp_path / "merged"), "fp32")
    assert list(tmp_path.iterdir()) == []


def test_cancelling_leaves_nothing(demo_adapter, tmp_path):
    token = CancelToken()

    def on_event(event):
        if isinstance(event, Progress):
            token.cancel()

    with pytest.raises(Cancelled):
        merge_adapter(str(demo_adapter), str(tmp_path / "merged"), on_event=on_event, cancel=token)
    assert list(tmp_path.iterdir()) == []


def test_the_merge_holds_one_blocks_weights_at_a_time(demo_model, tmp_path, monkeypatch):
    model = _llama(tmp_path / "model", demo_model, tied=False)
    adapter = tmp_path / "adapter"
    run_init(make_config(model, adapter, calibration__samples=6, calibration__seq_len=32,
                         calibration__heldout_samples=2))  # fmt: skip
    loaded, real = [], merge.load_streamed

    def recording_load(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(merge, "load_streamed", recording_load)
    with_weights, parts = [], []

    def on_event(event):
        """After each block is merged: how many blocks hold weights (embeddings, untied head: never),
        and how many shards are already on disk."""
        if isinstance(event, Progress):
            m = loaded[0]
            with_weights.append(sum(any(p.device.type != "meta" for p in b.parameters()) for b in m.blocks.blocks))
            assert m.model.lm_head.weight.device.type == "meta"
            assert m.model.get_input_embeddings().weight.device.type == "meta"
            parts.append(len(list(tmp_path.glob(".merged.partial-*/.part-*.safetensors"))))

    merge_adapter(str(adapter), str(tmp_path / "merged"), "fp32", on_event=on_event, max_shard_bytes=100_000)
    assert with_weights == [1, 1, 1]
    assert parts[0] >= 1 and parts == sorted(parts) and parts[-1] > parts[0]  # shards written as it goes


# ---------------------------------------------------------------------------- merge --gguf
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_merge_with_gguf_writes_a_file_that_computes_the_merged_model(demo_adapter, tmp_path, capsys, gguf_type):
    from test_gguf import Q8_0_LOGIT_BOUND

    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(demo_adapter), "--output", str(out), "--gguf", gguf_type]) == 0
    printed = capsys.readouterr().out
    gguf_file = tmp_path / "merged.gguf"  # next to the folder
    assert f"llama-cli -m {gguf_file}" in printed and f"GGUF llama {gguf_type} written to {gguf_file}" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "merged.gguf"]  # nothing temporary left
    # f16: the folder is merged in fp16, the dtype the file stores, so each weight is rounded once
    assert json.loads((out / "config.json").read_text())["dtype"] == ("float16" if gguf_type == "f16" else "bfloat16")
    ids = _ids()
    merged = _logits(out)
    with torch.no_grad():
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_file.name, dtype=torch.float32).eval()
        got = loaded(input_ids=ids).logits
    if gguf_type == "f16":  # the bound test_gguf uses for a file against its source rounded as stored
        torch.testing.assert_close(got, merged, rtol=1e-5, atol=1e-5)
    else:
        assert float((got - merged).abs().max() / merged.abs().max()) < Q8_0_LOGIT_BOUND


def test_merge_with_gguf_refuses_before_merging_what_the_export_refuses(demo_model, demo_adapter, tmp_path, capsys):
    out = tmp_path / "out" / "merged"
    out.parent.mkdir()
    _refused(["--adapter", str(demo_adapter), "--gguf", "q4_k"], capsys, "f16 | bf16 | q8_0", out)
    existing = tmp_path / "out" / "merged.gguf"
    existing.write_bytes(b"keep")
    _refused(["--adapter", str(demo_adapter), "--gguf", "f16"], capsys, "already exists. choose another --gguf-output", out)
    assert existing.read_bytes() == b"keep"
    yarn = Path(shutil.copytree(demo_model, tmp_path / "yarn-base"))  # the same weights: merge alone accepts it
    config = json.loads((yarn / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                 "original_max_position_embeddings": 128}  # fmt: skip
    (yarn / "config.json").write_text(json.dumps(config))
    _refused(["--adapter", str(demo_adapter), "--model", str(yarn), "--gguf", "f16", "--gguf-output",
              str(tmp_path / "out" / "other.gguf")], capsys, "rope scaling 'yarn'", out)  # fmt: skip
    _refused(["--adapter", str(demo_adapter), "--gguf", "f16", "--gguf-output", str(out / "inside.gguf")], capsys,
             "inside the merged folder", out)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["merged.gguf"]


def test_a_failed_gguf_step_keeps_the_merged_folder_and_writes_no_file(demo_adapter, tmp_path, monkeypatch):
    from quailora_core.serving import gguf_export
    from quailora_core.serving.merge_gguf import merge_to_gguf

    monkeypatch.setattr(gguf_export, "_permute", lambda w, n_head: w)  # the read-back then disagrees
    out = tmp_path / "merged"
    with pytest.raises(EngineError, match="GGUF export failed and the merged folder .* was kept") as failure:
        merge_to_gguf(str(demo_adapter), str(out), "f16")
    assert str(out) in failure.value.message and "quailora export-gguf --model" in failure.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no .gguf, whole or partial
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.float16
