"""Typed configuration of a run, validated up front and saved to / loaded from TOML.

The same `RunConfig` drives `quailora init`, the GUI and the Python API, and the TOML
file it writes (`run.toml`) repeats a run exactly. `validate()` checks everything that
can be checked without loading a model; checks that need the model's config (rank
against layer sizes, target names) run in the engine's preflight.

One rule for paths: relative paths *in a run file* are relative to the run file's
folder, whoever reads it (`RunConfig.load`: the GUI's Open run, `quailora init --config`,
`train`, `export-run`), so a run folder can be moved and opened from anywhere. Paths given
on a command line are relative to the working directory, as usual.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from . import hub
from .errors import InputError

METHODS = ("quailora", "exact", "loftq", "qlora")
VERIFY_MODES = ("sample", "all", "off")
INPUT_SOURCES = ("fp", "propagated", "asymmetric")
QUANT_TYPES = ("nf4", "fp4")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEMO_MODEL = "demo"
DEMO_CALIBRATION = "demo"


@dataclass
class ModelConfig:
    """Which model to initialize: a local folder, a hub id, or `demo` (shipped in resources/)."""

    path: str = DEMO_MODEL
    dtype: str = "auto"  # load dtype; auto = bfloat16 on CUDA, float32 on CPU
    trust_remote_code: bool = False


@dataclass
class CalibrationConfig:
    """Calibration text: a local file/folder, a hub dataset id, or `demo`."""

    source: str = DEMO_CALIBRATION
    text_column: str = "text"
    dataset_config: str | None = None
    split: str = "train"
    samples: int = 128
    seq_len: int = 512
    heldout_samples: int = 16
    seed: int = 0


@dataclass
class QuantConfig:
    """The bitsandbytes settings fine-tuning will load the base with.

    bitsandbytes' Linear4bit (what transformers builds) always uses blocksize 64, so the
    blocksize is recorded, not configurable: offering another would make an adapter that
    no training run can match.
    """

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"  # bnb_4bit_compute_dtype; auto = the load dtype
    quant_storage: str = "uint8"
    blocksize: int = 64


@dataclass
class LoraSettings:
    """LoRA shape: rank, alpha (scaling alpha/r, or alpha/sqrt(r) with rsLoRA), targets."""

    rank: int = 16
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["all-linear"])
    rslora: bool = False
    dropout: float = 0.0

    @property
    def scaling(self) -> float:
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)


@dataclass
class InitSettings:
    """How the LoRA pair is initialized (see ALGORITHM.md)."""

    method: str = "quailora"
    inputs: str = "fp"
    damping: float = 0.01
    als_iters: int = 500  # upper bound; ALS stops early once an iteration gains < 1e-10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 8  # calibration sequences per forward through a block
    # keep block activations in a temporary folder instead of RAM: host memory then stays
    # flat in the number of calibration samples, at the cost of disk I/O per block
    offload_activations: bool = False
    # after writing, load the adapter as training will and recompute the errors of a sample
    # of layers (sample), of every layer (all), or not at all (off); a mismatch fails the run
    verify: str = "sample"


@dataclass
class TrainSettings:
    """Fine-tuning settings (used by `quailora train`).

    Relative paths in a run file are relative to the run file's folder.
    """

    data: str = ""  # a file, folder, hub dataset id, or demo
    data_format: str = "auto"  # auto | text | prompt_response (auto: from the fields)
    text_column: str = "text"
    validation_data: str = ""  # "" = hold out validation_fraction of the data
    validation_fraction: float = 0.05
    max_steps: int = 100
    epochs: float = 0.0  # > 0 overrides max_steps
    learning_rate: float = 2e-4
    batch_size: int = 4
    gradient_accumulation: int = 1
    seq_len: int = 512
    eval_interval: int = 50
    save_interval: int = 50
    log_interval: int = 1
    warmup_steps: int = 0
    seed: int = 0
    adapter: str = ""  # the initialized adapter folder; "" = the run's `output`
    output: str = ""  # training output folder; "" = the adapter folder's name + "-trained"
    resume: bool = False  # continue from the last checkpoint in `output`


@dataclass
class RunConfig:
    """Everything one run needs. `output` is the adapter directory to write."""

    model: ModelConfig = field(default_factory=ModelConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    quantization: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    init: InitSettings = field(default_factory=InitSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    output: str = "quailora-adapter"
    overwrite: bool = False

    # ------------------------------------------------------------------ validation
    def validate(self) -> RunConfig:
        """Raise InputError on the first setting that cannot work; return self."""
        q, lo, ini, cal = self.quantization, self.lora, self.init, self.calibration
        if q.bits not in (4, 8):
            raise InputError(f"bits must be 4 or 8, got {q.bits}.", "Use --bits 4 or --bits 8.")
        if q.quant_type not in QUANT_TYPES:
            raise InputError(
                f"Unknown quantization type {q.quant_type!r}.", "Use --quant-type nf4 or fp4."
            )
        if q.blocksize != 64:
            raise InputError(
                f"blocksize {q.blocksize} cannot be matched at training time.",
                "bitsandbytes layers built by transformers always use 64; leave it at 64.",
            )
        for name, value in (("model dtype", self.model.dtype), ("compute dtype", q.compute_dtype)):
            if value not in DTYPES:
                raise InputError(f"Unknown {name} {value!r}.", f"Use one of {', '.join(DTYPES)}.")
        if not isinstance(lo.rank, int) or lo.rank < 1:
            raise InputError(f"rank must be at least 1, got {lo.rank}.", "Use --rank 8, 16 or 64.")
        if not lo.alpha > 0:
            raise InputError(f"alpha must be positive, got {lo.alpha}.", "Use --alpha equal to the rank.")
        if not lo.targets:
            raise InputError("No target modules given.", "Use --targets all-linear or a list of names.")
        if ini.method not in METHODS:
            raise InputError(f"Unknown method {ini.method!r}.", f"Use one of {', '.join(METHODS)}.")
        if ini.inputs not in INPUT_SOURCES:
            raise InputError(
                f"Unknown input source {ini.inputs!r}.", f"Use one of {', '.join(INPUT_SOURCES)}."
            )
        if ini.verify not in VERIFY_MODES:
            raise InputError(f"Unknown verify mode {ini.verify!r}.", f"Use one of {', '.join(VERIFY_MODES)}.")
        if not ini.damping >= 0:
            raise InputError(f"damping must be >= 0, got {ini.damping}.", "The usual value is 0.01.")
        if ini.als_iters < 1:
            raise InputError(f"als_iters must be at least 1, got {ini.als_iters}.", "The usual value is 500.")
        if ini.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {ini.batch_size}.", "Use 8.")
        if cal.samples < 1:
            raise InputError(f"samples must be at least 1, got {cal.samples}.", "The usual value is 128.")
        if cal.seq_len < 8:
            raise InputError(f"seq_len must be at least 8, got {cal.seq_len}.", "The usual value is 512.")
        if cal.heldout_samples < 0:
            raise InputError("heldout_samples must be >= 0.", "The usual value is 16.")
        from .device import resolve_device  # local import: torch is heavy

        resolve_device(ini.device)
        check_output_dir(self.output, self.overwrite)
        return self

    # ------------------------------------------------------------------ TOML
    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        sections = {
            "model": ModelConfig,
            "calibration": CalibrationConfig,
            "quantization": QuantConfig,
            "lora": LoraSettings,
            "init": InitSettings,
            "train": TrainSettings,
        }
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sections:
                if not isinstance(value, dict):
                    raise InputError(f"[{key}] in the run file must be a table.", "See docs/run.toml.")
                kwargs[key] = _build(sections[key], value, key)
            elif key in ("output", "overwrite"):
                kwargs[key] = value
            else:
                raise InputError(f"Unknown key {key!r} in the run file.", "Remove it or fix its spelling.")
        return cls(**kwargs)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the run file atomically (temp file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_toml(), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], resolve: bool = True) -> RunConfig:
        """Read a run file; its relative paths are taken relative to the file's folder
        (`resolve=False` returns them exactly as written, for tools that inspect the file)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise InputError(f"Run file {str(path)!r} does not exist.", "Check the path to the .toml file.")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"Run file {str(path)!r} is not valid TOML: {exc}.", "Fix the file.") from None
        config = cls.from_dict(data)
        return config.resolved(path.resolve().parent) if resolve else config

    def resolved(self, base: str | os.PathLike[str]) -> RunConfig:
        """A copy whose local paths are absolute, relative ones taken from the folder `base`.

        Folders to write (`output`, `train.output`) and the adapter are always paths; the
        model and data sources stay as they are when they are `demo`, or look like a hub id
        and no such local path exists.
        """
        base = Path(base)
        cfg = copy.deepcopy(self)
        t = cfg.train
        cfg.output = _local_path(cfg.output, base)
        t.adapter, t.output = _local_path(t.adapter, base), _local_path(t.output, base)
        t.data = _reference(t.data, base, hub.DATA_FILE_SUFFIXES)
        t.validation_data = _reference(t.validation_data, base, hub.DATA_FILE_SUFFIXES)
        cfg.calibration.source = _reference(cfg.calibration.source, base, hub.DATA_FILE_SUFFIXES)
        cfg.model.path = _reference(cfg.model.path, base, frozenset())
        return cfg


def _local_path(value: str, base: Path) -> str:
    """A path to write, made absolute against `base` ("" stays "": the default applies)."""
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _reference(value: str, base: Path, file_suffixes: frozenset[str]) -> str:
    """A model or data reference made absolute against `base`; `demo`, and a hub id that
    names no local path there, stay as they are."""
    if not value or value in (DEMO_MODEL, DEMO_CALIBRATION):
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if (base / path).exists() or not hub.looks_like_hub_id(value, file_suffixes):
        return str((base / path).resolve())
    return value


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(
            f"Unknown key {unknown[0]!r} in [{section}] of the run file.",
            f"Known keys: {', '.join(sorted(names))}.",
        )
    return cls(**values)


def _drop_none(value: Any) -> Any:
    """TOML has no null: leave unset optional values out."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def check_output_dir(output: str, overwrite: bool) -> None:
    """Refuse an output folder that exists and is not empty, unless overwrite is set."""
    if not output:
        raise InputError("No output folder given.", "Use --output PATH.")
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise InputError(f"Output {output!r} exists and is a file.", "Choose a folder path with --output.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(
            f"Output folder {output!r} exists and is not empty.",
            "Choose another --output or pass --overwrite.",
        )

