"""`quailora.json`: the typed, versioned record of an adapter, read and written here only.

What `quailora init` computed the adapter for (the base model and a fingerprint of its
weights, the exact quantizer), how (LoRA shape, method, calibration), what it found
(per-layer metrics, the self-check) and, after `quailora train`, the training. Readers get
attributes, not string keys; a record written by a newer QuAILoRA (a higher `format`) is
refused with a clear message instead of being half understood.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quailora_core.errors import InputError
from quailora_core.files import atomic_write_text
from quailora_core.quant.record import QuantRecord

METADATA_FILE = "quailora.json"
FORMAT = 1  # raise when a field changes meaning; from_dict reads every format up to this one
_HINT = "Run `quailora init` first, or point [train] adapter / --adapter at its output folder."


@dataclass
class BaseModelRecord:
    """The base the adapter was computed on."""

    path: str  # the resolved local folder (or hub id) it was loaded from
    reference: str = ""  # what the user gave (`demo`, a hub id, a path)
    architecture: str = ""  # config.architectures[0]
    auto_class: str = "AutoModelForCausalLM"  # or AutoModelForImageTextToText
    fingerprint: str = ""  # sha256 of the first targeted weight: another base is refused
    fingerprint_layer: str = ""
    experts: int = 0  # routed experts per MoE block (0: a dense model); serving stacks differ on them


@dataclass
class AdapterRecord:
    base_model: BaseModelRecord
    quantization: QuantRecord
    targets: list[str]
    format: int = FORMAT
    created: str = ""
    lora: dict[str, Any] = field(default_factory=dict)  # LoraSettings + scaling
    init: dict[str, Any] = field(default_factory=dict)  # InitSettings, device resolved
    calibration: dict[str, Any] = field(default_factory=dict)  # CalibrationConfig + packing summary
    full_precision_targets: list[str] = field(default_factory=list)
    skipped_layers: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fallback_layers: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)  # one LayerResult each
    versions: dict[str, str] = field(default_factory=dict)
    python: str = ""
    run_config: dict[str, Any] = field(default_factory=dict)  # RunConfig.to_dict() of the run
    verification: dict[str, Any] | None = None  # the self-check (init/verify.py)
    training: dict[str, Any] | None = None  # added by `quailora train`

    # ------------------------------------------------------------------ dict / JSON
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["quantization"] = self.quantization.to_dict()
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = METADATA_FILE) -> AdapterRecord:
        fmt = data.get("format", 1)
        if not isinstance(fmt, int) or fmt > FORMAT:
            raise InputError(
                f"{where} has format {fmt!r}, newer than this QuAILoRA understands ({FORMAT}).",
                "Update QuAILoRA Studio (pip install -U quailora), or run `quailora init` again with this one.",
            )
        missing = [k for k in ("base_model", "quantization", "targets") if k not in data]
        if missing:
            raise InputError(f"{where} lacks {', '.join(missing)}.", "Run `quailora init` again.")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        base = {k: v for k, v in data["base_model"].items() if k in BaseModelRecord.__dataclass_fields__}
        known["base_model"] = BaseModelRecord(**base)
        known["quantization"] = QuantRecord.from_dict(data["quantization"])
        return cls(**known)

    # ------------------------------------------------------------------ folder
    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> AdapterRecord:
        """The record of an adapter folder, after checking that the folder is one."""
        path = Path(folder).expanduser()
        if not str(folder):
            raise InputError("No adapter folder given.", _HINT)
        if not path.is_dir():
            raise InputError(f"Adapter folder {str(folder)!r} does not exist.", _HINT)
        if not (path / "adapter_config.json").is_file():
            raise InputError(f"{str(folder)!r} is not a peft adapter folder (it has no adapter_config.json).", _HINT)
        if not (path / METADATA_FILE).is_file():
            raise InputError(
                f"{str(folder)!r} has no {METADATA_FILE}: it was not written by `quailora init`.",
                "Train adapters that `quailora init` wrote; their quailora.json records the quantization.",
            )
        where = f"{METADATA_FILE} in {str(folder)!r}"
        try:
            data = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{where} cannot be read: {exc}.", "Run `quailora init` again.") from None
        if not isinstance(data, dict):
            raise InputError(f"{where} is not a JSON object.", "Run `quailora init` again.")
        return cls.from_dict(data, where)

    def save(self, folder: str | os.PathLike[str]) -> None:
        atomic_write_text(Path(folder) / METADATA_FILE, json.dumps(self.to_dict(), indent=2, default=str))
