"""Helpers shared by the engine, training and export tests."""

from __future__ import annotations

from pathlib import Path

from quailora_core.config import RunConfig


def make_config(model: Path, output: Path, **changes) -> RunConfig:
    cfg = RunConfig(output=str(output))
    cfg.model.path = str(model)
    cfg.model.dtype = "float32"
    cfg.calibration.samples, cfg.calibration.seq_len, cfg.calibration.heldout_samples = 12, 64, 4
    cfg.init.device = "cpu"
    cfg.lora.rank, cfg.lora.alpha = 8, 16.0
    for key, value in changes.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def read_metadata(adapter_dir) -> dict:
    """The adapter's quailora.json as written on disk (plain JSON, read independently of the
    engine's AdapterRecord, so the tests check the file format itself)."""
    import json
    from pathlib import Path

    return json.loads((Path(adapter_dir) / "quailora.json").read_text(encoding="utf-8"))
