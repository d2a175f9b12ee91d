"""Is this the base an adapter was computed on? A fingerprint of its first targeted weight,
read straight from the checkpoint files (no model built), compared with the record.

`quailora train` and `quailora eval` refuse another base before loading anything: an
adapter computed for other weights would correct the wrong quantization error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from quailora_core.adapter.record import AdapterRecord
from quailora_core.errors import InputError


def weight_fingerprint(weight: torch.Tensor) -> str:
    """sha256 of the first targeted weight's bytes: `quailora train` refuses another base."""
    data = weight.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def read_base_weight(model_path: str, name: str):
    """The tensor `name + '.weight'` straight from the model's checkpoint files (safetensors or
    a torch .bin), without building the model; None when it cannot be found there."""
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            from quailora_core.sources.references import offline

            folder = Path(
                snapshot_download(model_path, allow_patterns=["*.json", "*.safetensors"], local_files_only=offline())
            )
        except Exception:
            return None
    keys = [f"{name}.weight", f"{name.removeprefix('model.')}.weight", f"model.{name}.weight"]
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file() or single.is_file():
        from safetensors import safe_open

        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            files = {weight_map[k] for k in keys if k in weight_map}
            paths = [folder / f for f in sorted(files)]
        else:
            paths = [single]
        for path in paths:
            with safe_open(str(path), framework="pt") as f:
                for key in keys:
                    if key in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                        return f.get_tensor(key)
        return None
    for path in sorted(folder.glob("pytorch_model*.bin")):
        state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        for key in keys:
            if key in state:
                return state[key]
    return None


def check_base(model_path: str, record: AdapterRecord, adapter: str, trust_remote_code: bool = False) -> list[str]:
    """Refuse a base whose architecture or first-target fingerprint differs from the adapter's
    record. Returns warnings (e.g. a fingerprint that could not be checked)."""
    from quailora_core.model.info import load_model_config

    rec = record.base_model
    hf_config = load_model_config(model_path, trust_remote_code)
    arch = (getattr(hf_config, "architectures", None) or [""])[0]
    hint = "Use the base model the adapter was initialized on (see base_model in its quailora.json)."
    if rec.architecture and arch and arch != rec.architecture:
        raise InputError(
            f"Model {model_path!r} is a {arch}, but adapter {adapter!r} was initialized on a {rec.architecture}.",
            hint,
        )
    first = record.targets[0]
    weight = read_base_weight(model_path, first)
    if weight is None or not rec.fingerprint:
        return [f"could not read {first}.weight from {model_path!r}'s checkpoint files: the base weights "
                "are not verified against the adapter's fingerprint"]  # fmt: skip
    found = weight_fingerprint(weight.to(record.quantization.dtype()))
    if found != rec.fingerprint:
        raise InputError(
            f"Model {model_path!r} is not the base adapter {adapter!r} was initialized on: the weights of "
            f"{first} differ (fingerprint {found}, adapter recorded {rec.fingerprint} for {rec.path!r}).",
            hint,
        )
    return []
