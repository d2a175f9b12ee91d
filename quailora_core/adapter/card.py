"""The adapter's README (its model card): what it was computed for, the code that loads
it as training must, and which serving stacks reproduce it (`serving.stacks`), written from
its `AdapterRecord` and the adapter_config.json peft wrote."""

from __future__ import annotations

from typing import Any

from quailora_core.adapter.record import AdapterRecord
from quailora_core.serving.stacks import ServingSettings, verdicts

ADAPTER_PLACEHOLDER = "path/to/this/adapter"  # the card travels with the folder: no absolute path of it


def loading_code(adapter_dir: str, record: AdapterRecord, trainable: bool = True) -> str:
    """Python that loads the base exactly as the adapter expects, then the adapter (trainable
    for fine-tuning, or not for inference)."""
    q = record.quantization
    auto = record.base_model.auto_class
    if q.bits == 8:
        bnb = "BitsAndBytesConfig(load_in_8bit=True)"
    else:
        bnb = (
            "BitsAndBytesConfig(\n"
            "    load_in_4bit=True,\n"
            f"    bnb_4bit_quant_type={q.quant_type!r},\n"
            f"    bnb_4bit_use_double_quant={q.double_quant},\n"
            f"    bnb_4bit_compute_dtype=torch.{q.compute_dtype},\n"
            f"    bnb_4bit_quant_storage=torch.{q.quant_storage},\n"
            ")"
        )
    # bitsandbytes repacks 4-bit weights on AVX512-BF16 CPUs for a faster kernel that rounds
    # absmax to bfloat16: the layer no longer computes with the Q the adapter was made for
    cpu_exact = (
        "# on a CPU: keep bitsandbytes on the exact dequantize path (no AVX512-BF16 repacking)\n"
        "for module in base.modules():\n"
        "    if hasattr(module, 'support_avx512bf16_for_cpu'):\n"
        "        module.support_avx512bf16_for_cpu = False\n"
    ) if q.bits == 4 else ""  # fmt: skip
    return (
        "import torch\n"
        "from peft import PeftModel\n"
        f"from transformers import {auto}, BitsAndBytesConfig\n\n"
        f"bnb = {bnb}\n"
        f"base = {auto}.from_pretrained({record.base_model.path!r}, quantization_config=bnb, "
        f"dtype=torch.{q.load_dtype})\n"
        + cpu_exact
        + f"model = PeftModel.from_pretrained(base, {str(adapter_dir)!r}, is_trainable={trainable})\n"
    )


def model_card(record: AdapterRecord, peft_config: dict[str, Any] | None = None) -> str:
    """The README; with the adapter's peft config (adapter_config.json) it has a Serving section."""
    s = record.summary
    card = f"""---
library_name: peft
base_model: {record.base_model.path}
tags: [qlora, quailora, lora]
---

# QuAILoRA-initialized LoRA adapter

A LoRA adapter (rank {record.lora.get('rank')}, alpha {record.lora.get('alpha')}) initialized with
**{record.init.get('method')}** (inputs: {record.init.get('inputs')}, damping {record.init.get('damping')}) so that the
{record.quantization.label()} quantized base plus this adapter reproduces the full-precision layers on calibration text.
It was computed for exactly this quantization: load the base with the same settings,
or the initialization is wasted.

| figure (mean over {s.get('layers', 0)} layers) | before (plain QLoRA) | after |
|---|---|---|
| relative calibrated error | {s.get('mean_cal_err_before', float('nan')):.4e} | {s.get('mean_cal_err_after', float('nan')):.4e} |
| relative held-out error | {s.get('mean_heldout_err_before', float('nan')):.4e} | {s.get('mean_heldout_err_after', float('nan')):.4e} |
| relative weight error | {s.get('mean_uncal_err_before', float('nan')):.4f} | {s.get('mean_uncal_err_after', float('nan')):.4f} |

## Load it for fine-tuning

```python
{loading_code(ADAPTER_PLACEHOLDER, record)}```

Per-layer metrics, the calibration summary and package versions are in `quailora.json`.
Made with QuAILoRA Studio (Lawton et al., 2024, arXiv 2410.14713).
"""
    card += serving_card(record, peft_config) if peft_config is not None else ""
    return card + (training_card(record.training) if record.training else "")


def serving_card(record: AdapterRecord, peft_config: dict[str, Any]) -> str:
    """## Serving: per stack, whether it reproduces the quantized base this adapter was
    computed for, why not, and the command that serves it."""
    settings = ServingSettings.of_adapter(record, peft_config, ADAPTER_PLACEHOLDER)
    parts = ["\n## Serving\n\nThe initialization holds only on the quantized base it was computed for "
             f"({settings.quantization_label()}). Per serving stack:\n"]  # fmt: skip
    for v in verdicts(settings, loading_code(ADAPTER_PLACEHOLDER, record, trainable=False)):
        verdict = "reproduces it" if v.reproduces else ("does not reproduce it" if v.loads else "does not load it")
        parts.append(f"\n### {v.name}: {verdict}\n\n")
        parts.append("\n\n".join(v.reasons + v.notes) + "\n" if v.reasons or v.notes else "")
        for command in v.commands:
            parts.append(f"\n```{v.language}\n{command.rstrip()}\n```\n")
    return "".join(parts)


def training_card(tr: dict[str, Any]) -> str:
    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, float) else "n/a"

    return (
        "\n## Fine-tuning\n\n"
        f"Fine-tuned from the initialization above with `quailora train` for {tr['global_step']} steps on "
        f"{tr['data']['source']!r} ({tr['data']['format']}): training loss {fmt(tr['train_loss'])}, "
        f"validation loss {fmt(tr['first_eval_loss'])} -> {fmt(tr['eval_loss'])} "
        f"(perplexity {fmt(tr['first_perplexity'])} -> {fmt(tr['perplexity'])}).\n"
    )
