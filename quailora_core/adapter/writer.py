"""Write the initialized LoRA pairs as a standard peft adapter, atomically.

The adapter is produced by peft itself: we wrap the (full-precision, CPU) model with
`get_peft_model`, copy our A and B into its LoRA modules and call `save_pretrained`,
so the files are exactly what peft writes and reads. Next to them go `quailora.json`
(the quantizer the adapter was computed for, calibration summary, per-layer metrics,
versions) and a README model card with the loading code.

Atomicity: everything is written into a hidden sibling folder and renamed into place
at the very end, so a cancelled or crashed run never leaves a folder that looks
complete under the requested name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from quailora_core.config import LoraSettings
from quailora_core.files import atomic_dir

METADATA_FILE = "quailora.json"


def peft_lora_config(lora: LoraSettings, target_names: list[str]) -> LoraConfig:
    """peft's LoraConfig for exactly the layers we initialized (full module paths, so no
    module outside the decoder blocks is matched by accident)."""
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        target_modules=list(target_names),
        use_rslora=lora.rslora,
        lora_dropout=lora.dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )


def write_adapter(
    model: nn.Module,
    lora: LoraSettings,
    target_names: list[str],
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    output: str | Path,
    overwrite: bool,
    metadata: dict[str, Any],
    check: Callable[[Path], dict[str, Any] | None] | None = None,
) -> Path:
    """Wrap `model` with peft, load `factors[name] = (A, B)`, save atomically.

    Layers missing from `factors` keep peft's default init (B = 0), which is plain QLoRA.
    `model` is unwrapped again (its own modules back in place) before `check(folder)`
    runs on the written folder (its quailora.json already there); what it returns is recorded in the metadata
    under "verification", and an exception from it leaves nothing on disk.
    """
    peft_model = get_peft_model(model, peft_lora_config(lora, target_names))
    inner = peft_model.base_model.model
    with torch.no_grad():
        for name, (a, b) in factors.items():
            layer = inner.get_submodule(name)
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
    with atomic_dir(output, overwrite) as tmp:
        try:
            peft_model.save_pretrained(str(tmp))
        finally:
            peft_model.unload()
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str), encoding="utf-8")
        if check is not None:
            record = check(tmp)
            if record is not None:
                metadata["verification"] = record
                (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(metadata), encoding="utf-8")
    return Path(output).expanduser().resolve()


def read_metadata(adapter_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(adapter_dir) / METADATA_FILE).read_text(encoding="utf-8"))


def copy_adapter(src_dir: str | Path, dest_dir: str | Path, overwrite: bool = False) -> Path:
    """Copy a finished adapter folder to `dest_dir` atomically (the GUI's Export)."""
    src = Path(src_dir)
    if not (src / "adapter_config.json").is_file():
        from quailora_core.errors import InputError

        raise InputError(f"{str(src)!r} is not an adapter folder.", "Run the initialization first.")
    with atomic_dir(dest_dir, overwrite) as tmp:
        for item in src.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
    return Path(dest_dir).expanduser().resolve()


def loading_code(adapter_dir: str | Path, metadata: dict[str, Any] | None = None) -> str:
    """Python that loads the base exactly as the adapter expects, then the adapter."""
    meta = metadata if metadata is not None else read_metadata(adapter_dir)
    q = meta["quantization"]
    base = meta["base_model"]["path"]
    dtype = q["load_dtype"]
    if q["bits"] == 8:
        bnb = "BitsAndBytesConfig(load_in_8bit=True)"
    else:
        bnb = (
            "BitsAndBytesConfig(\n"
            "    load_in_4bit=True,\n"
            f"    bnb_4bit_quant_type={q['quant_type']!r},\n"
            f"    bnb_4bit_use_double_quant={q['double_quant']},\n"
            f"    bnb_4bit_compute_dtype=torch.{q['compute_dtype']},\n"
            f"    bnb_4bit_quant_storage=torch.{q['quant_storage']},\n"
            ")"
        )
    return (
        "import torch\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, BitsAndBytesConfig\n\n"
        f"bnb = {bnb}\n"
        f"base = AutoModelForCausalLM.from_pretrained({base!r}, quantization_config=bnb, dtype=torch.{dtype})\n"
        f"model = PeftModel.from_pretrained(base, {str(adapter_dir)!r}, is_trainable=True)\n"
    )


def model_card(meta: dict[str, Any]) -> str:
    s = meta.get("summary", {})
    q = meta["quantization"]
    quant = f"{q['bits']}-bit" + (f" {q['quant_type'].upper()}" if q["bits"] == 4 else " LLM.int8")
    return f"""---
library_name: peft
base_model: {meta['base_model']['path']}
tags: [qlora, quailora, lora]
---

# QuAILoRA-initialized LoRA adapter

A LoRA adapter (rank {meta['lora']['rank']}, alpha {meta['lora']['alpha']}) initialized with
**{meta['init']['method']}** (inputs: {meta['init']['inputs']}, damping {meta['init']['damping']}) so that the
{quant} quantized base plus this adapter reproduces the full-precision layers on calibration text.
It was computed for exactly this quantization: load the base with the same settings,
or the initialization is wasted.

| figure (mean over {s.get('layers', 0)} layers) | before (plain QLoRA) | after |
|---|---|---|
| relative calibrated error | {s.get('mean_cal_err_before', float('nan')):.4e} | {s.get('mean_cal_err_after', float('nan')):.4e} |
| relative held-out error | {s.get('mean_heldout_err_before', float('nan')):.4e} | {s.get('mean_heldout_err_after', float('nan')):.4e} |
| relative weight error | {s.get('mean_uncal_err_before', float('nan')):.4f} | {s.get('mean_uncal_err_after', float('nan')):.4f} |

## Load it for fine-tuning

```python
{loading_code("path/to/this/adapter", meta)}```

Per-layer metrics, the calibration summary and package versions are in `quailora.json`.
Made with QuAILoRA Studio (Lawton et al., 2024, arXiv 2410.14713).
"""
