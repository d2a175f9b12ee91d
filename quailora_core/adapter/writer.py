"""Write the initialized LoRA pairs as a standard peft adapter, atomically.

The adapter is produced by peft itself: we wrap the model's module tree (a meta-device
skeleton does: no weight of the base is read) with `get_peft_model`, put our A and B in
its LoRA modules and call `save_pretrained`, so the files are exactly what peft writes and
reads. Next to them go `quailora.json`
(the quantizer the adapter was computed for, calibration summary, per-layer metrics,
versions) and a README model card with the loading code and the serving verdicts.

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

from quailora_core.adapter.card import model_card
from quailora_core.adapter.record import AdapterRecord
from quailora_core.config import LoraSettings
from quailora_core.files import atomic_dir


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
    record: AdapterRecord,
    check: Callable[[Path], dict[str, Any] | None] | None = None,
) -> Path:
    """Wrap `model` (real or on the meta device) with peft, set `factors[name] = (A, B)`, save
    atomically.

    Layers missing from `factors` keep peft's default init (B = 0), which is plain QLoRA.
    `model` is unwrapped again (its own modules back in place) before `check(folder)`
    runs on the written folder (its quailora.json already there); what it returns is recorded in the record
    under "verification", and an exception from it leaves nothing on disk.
    """
    peft_model = get_peft_model(model, peft_lora_config(lora, target_names), low_cpu_mem_usage=True)
    inner = peft_model.base_model.model
    with torch.no_grad():
        for name in target_names:
            layer = inner.get_submodule(name)
            # peft made the LoRA modules on the meta device: give them memory, let peft initialize
            # them as it always does (Kaiming A, B = 0), then put our pair in
            for part in (layer.lora_A, layer.lora_B):
                part["default"].to_empty(device="cpu")
            layer.reset_lora_parameters("default", True)
            if name in factors:
                a, b = factors[name]
                layer.lora_A["default"].weight.copy_(a)
                layer.lora_B["default"].weight.copy_(b)
    with atomic_dir(output, overwrite) as tmp:
        try:
            peft_model.save_pretrained(str(tmp))
        finally:
            peft_model.unload()
        record.save(tmp)
        if check is not None:
            verification = check(tmp)
            if verification is not None:
                record.verification = verification
                record.save(tmp)
        peft_config = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
        (tmp / "README.md").write_text(model_card(record, peft_config), encoding="utf-8")
    return Path(output).expanduser().resolve()


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
