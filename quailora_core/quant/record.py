"""The quantizer an adapter was computed for, as `quailora.json` records it.

One type both ways: `QuantRecord.of(QuantConfig, load_dtype)` is what `quailora init`
writes; `record.config()`, `record.bnb_config()` rebuild the exact quantizer for training,
`quailora eval` and the self-check; `record.differences(...)` says how a run file's
settings disagree with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from quailora_core.config import QuantConfig

if TYPE_CHECKING:
    import torch

INT8_METHOD = "LLM.int8 (row-wise absmax, weights cast to float16 first)"


@dataclass
class QuantRecord:
    bits: int
    load_dtype: str  # the dtype the full-precision weights were loaded in ("float32", "bfloat16")
    bnb_config: dict[str, Any] = field(default_factory=dict)  # BitsAndBytesConfig.to_dict(), for readers
    quant_type: str | None = None  # 4 bit only, like the four below
    double_quant: bool | None = None
    blocksize: int | None = None
    compute_dtype: str | None = None
    quant_storage: str | None = None
    method: str | None = None  # 8 bit: how LLM.int8 quantizes

    @classmethod
    def of(cls, q: QuantConfig, load_dtype: torch.dtype) -> QuantRecord:
        from quailora_core.quant.quantizer import bnb_config, compute_dtype

        record = cls(q.bits, _name(load_dtype), bnb_config(q, load_dtype).to_dict())
        if q.bits == 4:
            record.quant_type, record.double_quant, record.blocksize = q.quant_type, q.double_quant, q.blocksize
            record.compute_dtype = _name(compute_dtype(q, load_dtype))
            record.quant_storage = q.quant_storage
        else:
            record.method = INT8_METHOD
        return record

    def config(self) -> QuantConfig:
        """The QuantConfig that rebuilds this quantizer."""
        if self.bits == 8:
            return QuantConfig(bits=8)
        return QuantConfig(
            bits=4,
            quant_type=self.quant_type or "nf4",
            double_quant=bool(self.double_quant),
            compute_dtype=self.compute_dtype or "auto",
            quant_storage=self.quant_storage or "uint8",
            blocksize=self.blocksize or 64,
        )

    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.load_dtype)

    def bnb(self):
        """The BitsAndBytesConfig training loads the base with, exactly as recorded."""
        from quailora_core.quant.quantizer import bnb_config

        return bnb_config(self.config(), self.dtype())

    def differences(self, q: QuantConfig, model_dtype: str) -> list[str]:
        """How run-file settings differ from this record ("auto" follows the record)."""
        diffs = []
        if q.bits != self.bits:
            diffs.append(f"bits {q.bits} vs {self.bits}")
        elif q.bits == 4:
            for name in ("quant_type", "double_quant", "quant_storage", "blocksize"):
                if getattr(self, name) is not None and getattr(q, name) != getattr(self, name):
                    diffs.append(f"{name} {getattr(q, name)!r} vs {getattr(self, name)!r}")
            if q.compute_dtype != "auto" and q.compute_dtype != self.compute_dtype:
                diffs.append(f"compute_dtype {q.compute_dtype!r} vs {self.compute_dtype!r}")
        if model_dtype != "auto" and model_dtype != self.load_dtype:
            diffs.append(f"model dtype {model_dtype!r} vs {self.load_dtype!r}")
        return diffs

    def label(self) -> str:
        """`4-bit NF4`, `8-bit LLM.int8`."""
        return f"{self.bits}-bit " + ((self.quant_type or "").upper() if self.bits == 4 else "LLM.int8")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantRecord:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
