"""Serving, told up front: which stacks reproduce an adapter, why not, and the command that
serves it -- on the verdicts, the model card, `quailora init`'s summary and the warnings
before a run."""

from __future__ import annotations

import json

import pytest
from helpers import make_config

from quailora_core.adapter.card import model_card
from quailora_core.adapter.record import AdapterRecord
from quailora_core.cli import main
from quailora_core.serving.folder import adapter_verdicts
from quailora_core.serving.stacks import (
    LLAMA_CPP,
    TRANSFORMERS,
    VLLM,
    ServingSettings,
    run_warnings,
    verdicts,
    vllm_max_lora_rank,
)


def by_stack(settings: ServingSettings) -> dict[str, object]:
    return {v.stack: v for v in verdicts(settings)}


# bits, quant type, double quant, rank -> vLLM loads it, vLLM reproduces it, --max-lora-rank
MATRIX = [
    (4, "nf4", True, 16, True, True, 16),
    (4, "nf4", True, 12, True, True, 16),  # any rank up to --max-lora-rank: 12 serves with 16
    (4, "nf4", True, 1, True, True, 1),
    (4, "nf4", True, 320, True, True, 320),
    (4, "nf4", True, 513, False, False, None),  # above vLLM's largest --max-lora-rank
    (4, "nf4", False, 16, True, False, 16),  # vLLM's in-flight NF4 always double-quantizes
    (4, "fp4", True, 16, True, False, 16),
    (4, "fp4", False, 64, True, False, 64),
    (8, None, None, 16, True, False, 16),
]


@pytest.mark.parametrize("bits, quant_type, dq, rank, loads, exact, max_rank", MATRIX)
def test_each_stack_verdict_for_each_setting(bits, quant_type, dq, rank, loads, exact, max_rank):
    s = ServingSettings(bits, quant_type, dq, rank, base="/models/base", adapter="/adapters/ada", load_dtype="float32")
    v = by_stack(s)
    assert v[TRANSFORMERS].reproduces and v[TRANSFORMERS].loads
    assert not v[LLAMA_CPP].reproduces and "merge" in v[LLAMA_CPP].reasons[0]
    assert v[LLAMA_CPP].commands == ["quailora merge --adapter /adapters/ada --output /adapters/ada-merged",
                                     "quailora export-gguf --model /adapters/ada-merged --output /adapters/ada-merged.gguf --type bf16"]  # fmt: skip
    vllm = v[VLLM]
    assert (vllm.loads, vllm.reproduces) == (loads, exact)
    assert vllm_max_lora_rank(rank) == max_rank
    if loads:
        assert vllm.commands == ["vllm serve /models/base --quantization bitsandbytes --enable-lora "
                                 f"--lora-modules ada=/adapters/ada --max-lora-rank {max_rank}"]  # fmt: skip
    else:
        assert vllm.commands == [] and f"rank {rank}" in vllm.reasons[0]
    if loads and not exact:
        assert "NF4 with double quantization only" in vllm.reasons[0]
    assert (vllm.reasons == []) == exact


def test_an_moe_base_is_not_reproduced_by_vllm_and_an_unsupported_family_gets_llama_cpps_converter():
    dense = ServingSettings(4, "nf4", True, 16, base="/b", adapter="/a", architecture="LlamaForCausalLM")
    moe = ServingSettings(4, "nf4", True, 16, base="/b", adapter="/a", architecture="Qwen2MoeForCausalLM", experts=8)
    assert by_stack(dense)[VLLM].reproduces
    v = by_stack(moe)
    assert not v[VLLM].reproduces and v[VLLM].loads and "8 experts" in v[VLLM].reasons[0]
    assert [c.split()[:2] for c in v[LLAMA_CPP].commands] == [["quailora", "merge"], ["python", "convert_hf_to_gguf.py"]]
    assert "Qwen2MoeForCausalLM" in v[LLAMA_CPP].notes[0]


def test_an_moe_adapter_records_its_experts_and_its_card_says_vllm_will_not_reproduce_it(demo_model, tmp_path):
    import torch
    from transformers import AutoTokenizer, Qwen2MoeConfig, Qwen2MoeForCausalLM

    from quailora_core.init.pipeline import run_init

    torch.manual_seed(0)
    config = Qwen2MoeConfig(hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            shared_expert_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=4000)  # fmt: skip
    Qwen2MoeForCausalLM(config).save_pretrained(tmp_path / "moe")
    AutoTokenizer.from_pretrained(demo_model).save_pretrained(tmp_path / "moe")
    run_init(make_config(tmp_path / "moe", tmp_path / "adapter", calibration__samples=4, calibration__seq_len=32,
                         calibration__heldout_samples=2))  # fmt: skip
    assert AdapterRecord.load(tmp_path / "adapter").base_model.experts == 4
    v = {x.stack: x for x in adapter_verdicts(tmp_path / "adapter")}
    assert not v[VLLM].reproduces and "experts" in v[VLLM].reasons[0]


def test_the_command_quotes_paths_with_spaces():
    s = ServingSettings(4, "nf4", True, 8, base="/m/my base", adapter="/a/my ada")
    (command,) = by_stack(s)[VLLM].commands
    assert command == ("vllm serve '/m/my base' --quantization bitsandbytes --enable-lora "
                       "--lora-modules 'my ada=/a/my ada' --max-lora-rank 8")  # fmt: skip


@pytest.mark.parametrize("peft_change, refusal", [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save (lm_head)"),
    ({"use_dora": True}, "DoRA"),
    ({"bias": "all"}, "bias 'all'"),
])  # fmt: skip
def test_vllm_refuses_what_its_peft_helper_refuses(demo_adapter, peft_change, refusal):
    record = AdapterRecord.load(demo_adapter)
    peft_config = json.loads((demo_adapter / "adapter_config.json").read_text()) | peft_change
    vllm = by_stack(ServingSettings.of_adapter(record, peft_config, str(demo_adapter)))[VLLM]
    assert not vllm.loads and not vllm.reproduces and vllm.commands == []
    assert any(refusal in reason for reason in vllm.reasons), vllm.reasons


def test_a_written_adapter_has_verdicts_with_its_real_paths_and_a_serving_section(demo_adapter):
    record = AdapterRecord.load(demo_adapter)
    v = {x.stack: x for x in adapter_verdicts(demo_adapter)}
    folder = demo_adapter.resolve()
    assert v[VLLM].reproduces  # the session's demo adapter is NF4 with double quantization, rank 8
    assert v[VLLM].commands == [f"vllm serve {record.base_model.path} --quantization bitsandbytes --enable-lora "
                                f"--lora-modules adapter={folder} --max-lora-rank 8"]  # fmt: skip
    assert f"PeftModel.from_pretrained(base, {str(folder)!r}, is_trainable=False)" in v[TRANSFORMERS].commands[0]
    readme = (demo_adapter / "README.md").read_text()
    serving = readme[readme.index("## Serving"):]
    assert "### transformers + bitsandbytes: reproduces it" in serving
    assert "### vLLM (bitsandbytes in flight): reproduces it" in serving
    assert "--lora-modules adapter=path/to/this/adapter --max-lora-rank 8" in serving
    assert "### llama.cpp (GGUF): does not reproduce it" in serving and "quailora merge --adapter" in serving
    assert "converted to a GGUF LoRA" in " ".join(serving.split())  # why the correction is lost there
    assert "## Serving" not in model_card(record)  # without the peft config there is nothing to judge it by


def test_init_prints_one_line_per_stack_that_will_not_reproduce_it(capsys, tmp_path):
    out = tmp_path / "fp4"
    code = main(["init", "--model", "demo", "--calibration", "demo", "--samples", "4", "--seq-len", "32",
                 "--heldout", "1", "--rank", "12", "--quant-type", "fp4", "--no-double-quant", "--verify", "off",
                 "--device", "cpu", "--output", str(out)])  # fmt: skip
    stdout = capsys.readouterr().out
    assert code == 0
    lines = [line for line in stdout.splitlines() if line.startswith("serving:")]
    assert len(lines) == 2, stdout
    assert lines[0].startswith("serving: vLLM (bitsandbytes in flight) will not reproduce this adapter: vLLM "
                               "quantizes the base in flight as 4-bit NF4 with double quantization only; this adapter "
                               "was computed for 4-bit FP4 without double quantization")  # fmt: skip
    assert lines[1].startswith("serving: llama.cpp (GGUF) will not reproduce this adapter")
    readme = (out / "README.md").read_text()
    assert "### vLLM (bitsandbytes in flight): does not reproduce it" in readme
    assert "--max-lora-rank 16" in readme  # rank 12 loads with the next rank vLLM accepts


@pytest.mark.parametrize("changes, expect", [
    ({"quantization__quant_type": "fp4"}, "computed for 4-bit FP4 with double quantization"),
    ({"quantization__double_quant": False}, "computed for 4-bit NF4 without double quantization"),
    ({"quantization__bits": 8}, "computed for 8-bit LLM.int8"),
    ({"lora__rank": 1024}, "vLLM refuses LoRA rank 1024"),
    ({"lora__rank": 12}, None),
    ({}, None),
])  # fmt: skip
def test_settings_a_stack_cannot_serve_warn_before_the_run(tmp_path, changes, expect):
    warnings = run_warnings(make_config(tmp_path / "model", tmp_path / "out", **changes))
    if expect is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and expect in warnings[0], warnings


def test_the_quailora_commands_a_verdict_gives_are_ones_the_cli_accepts(demo_adapter):
    """The llama.cpp route is two of our own commands; a user pastes them as printed."""
    import shlex

    from quailora_core.cli.commands import make_parser

    commands = [c for v in adapter_verdicts(demo_adapter) for c in v.commands if c.startswith("quailora ")]
    assert [shlex.split(c)[1] for c in commands] == ["merge", "export-gguf"]
    for command in commands:
        make_parser().parse_args(shlex.split(command)[1:])  # argparse exits on a flag it does not know


def test_the_cards_loading_code_computes_what_training_computes(demo_adapter):
    """The card's Python, run as printed, gives the base + adapter the engine checked (on
    AVX512-BF16 CPUs bitsandbytes' repacking made it 4e-3 off per layer until the code
    turned it off)."""
    import torch
    from peft import PeftModel

    from quailora_core.adapter.card import loading_code
    from quailora_core.model.base import load_quantized_base

    record = AdapterRecord.load(demo_adapter)
    scope: dict = {}
    exec(loading_code(str(demo_adapter), record, trainable=False), scope)  # the card's code, as a user runs it
    ids = torch.randint(3, 3000, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = PeftModel.from_pretrained(load_quantized_base(record.base_model.path, record), str(demo_adapter))
    with torch.no_grad():
        assert torch.equal(scope["model"].eval()(input_ids=ids).logits, reference.eval()(input_ids=ids).logits)
