"""The adapter's README (its model card): what it was computed for, the code that loads
it as training must, and which serving stacks reproduce it (`serving.stacks`), written from
its `AdapterRecord` and the adapter_config.json peft wrote. `quailora init` writes it for the
initialization; `quailora train` writes it again for the trained adapter, which its record's
"training" section describes (steps, data, losses, tracking logs)."""

from __future__ import annotations

import os
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
    """The README; with the adapter's peft config (adapter_config.json) it has a Serving section.

    A trained adapter (its record has a "training" section, written by `quailora train`) is
    described as what it now is: fine-tuned from the QuAILoRA initialization, with the steps, the
    data, the final loss and perplexity and where the tracker's logs are; the initialization's
    figures follow as its starting point. The quantization it needs and the serving verdicts hold
    for both: training does not change the quantized base.
    """
    s, tr = record.summary, record.training
    quant = record.quantization.label()
    if tr:
        title = "LoRA adapter fine-tuned from a QuAILoRA initialization"
        intro = (
            f"A LoRA adapter (rank {record.lora.get('rank')}, alpha {record.lora.get('alpha')}) fine-tuned with "
            f"QLoRA on the {quant} quantized base, starting from a **{record.init.get('method')}** initialization "
            "that made the quantized base plus the adapter reproduce the full-precision layers on calibration "
            "text. It was trained for exactly this quantization: load the base with the same settings.\n"
            + training_card(tr)
            + "\n## The initialization it started from\n\n"
            f"Initialized with {record.init.get('method')} (inputs: {record.init.get('inputs')}, damping "
            f"{record.init.get('damping')}), before fine-tuning:\n"
        )
        load = "## Load it\n\nFor inference; `is_trainable=True` fine-tunes it further."
    else:
        title = "QuAILoRA-initialized LoRA adapter"
        intro = (
            f"A LoRA adapter (rank {record.lora.get('rank')}, alpha {record.lora.get('alpha')}) initialized with\n"
            f"**{record.init.get('method')}** (inputs: {record.init.get('inputs')}, damping "
            f"{record.init.get('damping')}) so that the\n{quant} quantized base plus this adapter reproduces the "
            "full-precision layers on calibration text.\nIt was computed for exactly this quantization: load the "
            "base with the same settings,\nor the initialization is wasted.\n"
        )
        load = "## Load it for fine-tuning"
    card = f"""---
library_name: peft
base_model: {record.base_model.path}
tags: [qlora, quailora, lora]
---

# {title}

{intro}
| figure (mean over {s.get('layers', 0)} layers) | before (plain QLoRA) | after |
|---|---|---|
| relative calibrated error | {s.get('mean_cal_err_before', float('nan')):.4e} | {s.get('mean_cal_err_after', float('nan')):.4e} |
| relative held-out error | {s.get('mean_heldout_err_before', float('nan')):.4e} | {s.get('mean_heldout_err_after', float('nan')):.4e} |
| relative weight error | {s.get('mean_uncal_err_before', float('nan')):.4f} | {s.get('mean_uncal_err_after', float('nan')):.4f} |

{load}

```python
{loading_code(ADAPTER_PLACEHOLDER, record, trainable=not tr)}```

Per-layer metrics, the calibration summary{", the training metrics" if tr else ""} and package versions are in `quailora.json`.
Made with QuAILoRA Studio (Lawton et al., 2024, arXiv 2410.14713).
"""
    return card + (serving_card(record, peft_config) if peft_config is not None else "")


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
    """## Fine-tuning: what `quailora train` did (the record's "training" section)."""

    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, float) else "n/a"

    data = tr.get("data", {})
    source = str(data.get("source", "n/a"))
    source = os.path.basename(source) if os.path.isabs(source) else source  # no path of the training machine
    settings = tr.get("settings", {})
    lines = [
        "\n## Fine-tuning\n",
        f"Trained with `quailora train` (the transformers Trainer, {tr.get('optim', 'AdamW')}, "
        f"{tr.get('precision', 'float32')}) for **{tr.get('global_step')} steps**"
        + (f" from {tr['resumed_from']}" if tr.get("resumed_from") else "")
        + f" on {source!r} ({data.get('format', 'n/a')}: {data.get('train_examples', 'n/a')} training and "
        f"{data.get('eval_examples', 'n/a')} validation examples; validation: {data.get('validation', 'n/a')}).",
        "",
        "| | at the start | at the end |",
        "|---|---|---|",
        f"| validation loss | {fmt(tr.get('first_eval_loss'))} | {fmt(tr.get('eval_loss'))} |",
        f"| validation perplexity | {fmt(tr.get('first_perplexity'))} | {fmt(tr.get('perplexity'))} |",
        f"| training loss | | {fmt(tr.get('train_loss'))} |",
        "",
    ]
    if settings:
        lines.append(
            f"Learning rate {settings.get('learning_rate')}, batch size {settings.get('batch_size')} x "
            f"{settings.get('gradient_accumulation')} accumulation, sequence length {settings.get('seq_len')}, "
            f"warm-up {settings.get('warmup_steps')} steps, seed {settings.get('seed')}.\n"
        )
    lines.append(_tracking_sentence(tr.get("tracking") or {}))
    return "\n".join(lines)


def _tracking_sentence(tracking: dict[str, Any]) -> str:
    """Where the run's tracker wrote, relative to this card (the adapter sits in the training
    output folder, next to its logs/): the card travels with the folder, no absolute path."""
    tool = tracking.get("tool")
    if not tool or tool == "none":
        return "No experiment tracker logged this run; its loss history is in `metrics.json` next to this folder.\n"
    if tool == "tensorboard":
        return ("The TensorBoard event files of the run are in `logs/` of the training output folder (next to "
                "this adapter folder): `tensorboard --logdir logs` there shows the curves; `metrics.json` there "
                "has the loss history.\n")  # fmt: skip
    names = {"wandb": "Weights & Biases", "mlflow": "MLflow"}
    where = "its files are in `logs/` of the training output folder" if tracking.get("logs") else "see its server"
    return (f"The run was tracked with {names.get(tool, tool)} ({where}; `training_run.json` there says how to "
            "view it); `metrics.json` next to this folder has the loss history.\n")  # fmt: skip
