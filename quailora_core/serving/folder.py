"""The serving verdicts of a written adapter folder, with its real base and adapter paths.

Apart from `stacks` because it reads the folder (quailora.json and the adapter_config.json
peft wrote, which is what the stacks read) and borrows the model card's loading code for
transformers; the card itself builds its Serving section from `stacks` alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quailora_core.adapter.card import loading_code
from quailora_core.adapter.record import AdapterRecord
from quailora_core.serving.stacks import ServingSettings, StackVerdict, verdicts


def read_peft_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter_config.json peft wrote, as the stacks read it."""
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))


def adapter_verdicts(adapter_dir: str | Path) -> list[StackVerdict]:
    """Every stack's verdict on the adapter in `adapter_dir` (checked to be one)."""
    folder = Path(adapter_dir).expanduser().resolve()
    record = AdapterRecord.load(folder)
    settings = ServingSettings.of_adapter(record, read_peft_config(folder), str(folder))
    return verdicts(settings, loading_code(str(folder), record, trainable=False))
