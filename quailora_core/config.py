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
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

try:  # Python 3.11+; the tomli backport (the same parser) on 3.10
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - 3.10 only
    import tomli as tomllib

from quailora_core.errors import InputError, about
from quailora_core.files import atomic_write_text, check_output_dir
from quailora_core.sources import references as hub
from quailora_core.sources.references import DEMO_CALIBRATION, DEMO_MODEL

METHODS = ("quailora", "exact", "loftq", "qlora")
CALIBRATED_METHODS = ("quailora", "exact")  # the methods that read calibration inputs
ITERATIVE_METHODS = ("quailora",)  # the methods als_iters bounds
VERIFY_MODES = ("sample", "all", "off")
INPUT_SOURCES = ("fp", "propagated", "asymmetric")
QUANT_TYPES = ("nf4", "fp4")
DTYPES = ("auto", "float32", "bfloat16", "float16")
TRAIN_FORMATS = ("auto", "text", "prompt_response")
TRACKERS = ("tensorboard", "wandb", "mlflow", "none")  # train.tracking: the Trainer's report_to
QUANT_STORAGES = ("uint8", "bfloat16", "float16", "float32")  # bnb_4bit_quant_storage
# train.launch: one process; data parallel (a full copy of the 4-bit model per GPU); FSDP and
# DeepSpeed ZeRO-3, which shard the base over the GPUs (train/launch.py writes their configs).
RUN_KINDS = ("single", "ddp", "fsdp", "deepspeed")
SHARDED_RUN_KINDS = ("fsdp", "deepspeed")
# DEMO_MODEL / DEMO_CALIBRATION ("demo") are the references' names (demo/shipped.py and
# sources/references.py), imported above and offered here too, where the settings that take
# them are declared.


@dataclass(frozen=True)
class FieldHelp:
    """What a setting means, once, for every face: the CLI flag's help, the app's tooltip,
    the hint of an error about it. `usual` is the value to start from (the default's text
    unless a field says otherwise)."""

    path: str  # "lora.rank": section and field, as in the run file
    help: str
    usual: str
    flag: str | None = None  # the `quailora init` / `train` flag that sets it, if any

    def tooltip(self) -> str:
        return f"{self.help} (usual: {self.usual})." if self.usual else f"{self.help}."

    def flag_help(self, how: str = "") -> str:
        """The help of the CLI flag; `how` says how to write the value (", comma-separated")."""
        first = self.help.split(" ", 1)[0]
        text = self.help if first[1:] != first[1:].lower() else self.help[0].lower() + self.help[1:]
        return f"{text}{how} (usual: {self.usual})" if self.usual else text + how


def option(default: Any = dataclasses.MISSING, *, help: str, usual: str | None = None, flag: str | None = None,
           factory: Any = dataclasses.MISSING) -> Any:  # fmt: skip
    """A config field with its help: `usual` defaults to the default value's text."""
    meta = {"help": help, "usual": usual, "flag": flag}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """Which model to initialize: a local folder, a hub id, or `demo` (shipped in resources/).

    No default model: a run that names none is refused ("No model given"), so a forgotten
    `--model` is not silently a run on the demo model. The app proposes the demo itself.
    """

    path: str = option("", flag="--model", usual="a local folder with config.json",
                       help="Local model folder, Hugging Face hub id, or 'demo' for the small model shipped "
                       "with the package")  # fmt: skip
    dtype: str = option("auto", flag="--dtype", usual="auto = bfloat16 on GPU, float32 on CPU",
                        help=f"Precision the full-precision weights are loaded in: {', '.join(DTYPES)}")  # fmt: skip
    trust_remote_code: bool = option(False, usual="off",
                                     help="Allow the model's own Python code to run when loading it")  # fmt: skip


@dataclass
class CalibrationConfig:
    """Calibration text: a local file/folder, a hub dataset id, or `demo`."""

    source: str = option(DEMO_CALIBRATION, flag="--calibration", usual="text like your fine-tuning data",
                         help="Calibration text: a .txt/.md/.jsonl/.json/.csv/.parquet file, a folder, a hub "
                         "dataset id, or 'demo' for the built-in sample text")  # fmt: skip
    text_column: str = option("text", flag="--text-column",
                              help="Column of a tabular or JSON source that holds the text")
    dataset_config: str | None = option(None, flag="--dataset-config", usual="empty",
                                        help="Configuration name of a hub dataset, if it has several")
    split: str = option("train", flag="--split", help="Split of a hub dataset to read")
    samples: int = option(128, flag="--samples", help="Number of calibration sequences")
    seq_len: int = option(512, flag="--seq-len", help="Tokens per calibration sequence")
    heldout_samples: int = option(16, flag="--heldout", help="Extra sequences kept apart to measure "
                                  "over-fitting to the calibration set")  # fmt: skip
    seed: int = option(0, flag="--seed", help="Seed that picks the calibration sequences, for a "
                       "reproducible run")  # fmt: skip


@dataclass
class QuantConfig:
    """The bitsandbytes settings fine-tuning will load the base with.

    bitsandbytes' Linear4bit (what transformers builds) always uses blocksize 64, so the
    blocksize is recorded, not configurable: offering another would make an adapter that
    no training run can match.
    """

    bits: int = option(4, flag="--bits", usual="4",
                       help="Bits per weight of the quantized base fine-tuning will use: 4 (QLoRA) or 8 (LLM.int8)")
    quant_type: str = option("nf4", flag="--quant-type", help="4-bit data type of bitsandbytes: nf4 or fp4")  # fmt: skip
    double_quant: bool = option(True, usual="on", help="Quantize the quantization constants too, as QLoRA does")
    compute_dtype: str = option("auto", flag="--compute-dtype", usual="auto = the load dtype",
                                help="Compute dtype of the 4-bit layers, bnb_4bit_compute_dtype")
    quant_storage: str = option("uint8", flag="--quant-storage", usual="uint8; the model dtype (bfloat16) for FSDP / DeepSpeed runs",
                                help="Storage dtype of the packed 4-bit weights, bnb_4bit_quant_storage: "
                                f"{', '.join(QUANT_STORAGES)}")  # fmt: skip
    blocksize: int = option(64, help="Weights per quantization block (bitsandbytes' Linear4bit always uses 64)")


@dataclass
class LoraSettings:
    """LoRA shape: rank, alpha (scaling alpha/r, or alpha/sqrt(r) with rsLoRA), targets."""

    rank: int = option(16, flag="--rank", help="LoRA rank r: the number of directions the adapter can correct")
    alpha: float = option(16.0, flag="--alpha", usual="equal to the rank",
                          help="LoRA alpha: the adapter is scaled by alpha / r")
    targets: list[str] = option(factory=lambda: ["all-linear"], usual="all-linear",
                                help="Linear modules that get a LoRA pair: names or dotted suffixes "
                                "(q_proj, self_attn.o_proj), or all-linear as in peft")  # fmt: skip
    rslora: bool = option(False, usual="off", help="Scale by alpha / sqrt(r) instead of alpha / r, as rsLoRA does")
    dropout: float = option(0.0, help="LoRA dropout during fine-tuning")

    @property
    def scaling(self) -> float:
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)


@dataclass
class InitSettings:
    """How the LoRA pair is initialized (see docs/ALGORITHM.md)."""

    method: str = option("quailora", flag="--method", usual="quailora",
                         help=f"How the LoRA pair is initialized: {', '.join(METHODS)}")
    inputs: str = option("fp", flag="--inputs", usual="fp = full-precision inputs",
                         help=f"Where the calibration inputs of each layer come from: {', '.join(INPUT_SOURCES)}")
    damping: float = option(0.01, flag="--damping", help="Damping lambda added to the input Gram matrix, "
                            "as in GPTQ")  # fmt: skip
    als_iters: int = option(500, flag="--als-iters", help="Most alternating least-squares iterations of the "
                            "QuAILoRA solver; it stops early once converged")  # fmt: skip
    device: str = option("auto", flag="--device", usual="auto = the GPU when there is one",
                         help="Where the engine computes: auto, cpu, cuda or cuda:N")
    batch_size: int = option(8, flag="--batch-size", help="Calibration sequences per forward pass through a block")
    offload_activations: bool = option(False, usual="off", help="Keep block activations in a temporary folder "
                                       "on disk: host memory stays flat in the number of samples")  # fmt: skip
    verify: str = option("sample", flag="--verify", help="Self-check after writing: load the adapter as "
                         "training will and recompute the errors of a sample of layers (sample), of every "
                         "layer (all), or none (off); a mismatch fails the run")  # fmt: skip


@dataclass
class TrainSettings:
    """Fine-tuning settings (used by `quailora train`).

    Relative paths in a run file are relative to the run file's folder.
    """

    data: str = option("", flag="--data", usual="your task's data",
                       help="Training text (.txt, .md, a folder) or prompt/response JSON lines, a hub dataset "
                       "id, or 'demo' for the built-in fine-tuning text")  # fmt: skip
    data_format: str = option("auto", flag="--data-format", usual="auto = from the fields",
                              help="How to read the data: auto, text or prompt_response")
    text_column: str = option("text", flag="--text-column", help="Column of a table that holds the text")
    validation_data: str = option("", flag="--validation-data", usual="empty = hold out a share of the data",
                                  help="Validation text: a file, folder or hub dataset id")
    validation_fraction: float = option(0.05, flag="--validation-fraction",
                                        help="Share of the data held out for validation when no validation "
                                        "data is given")  # fmt: skip
    max_steps: int = option(100, flag="--max-steps", usual="100 to 1000", help="Optimizer steps to train for")
    epochs: float = option(0.0, flag="--epochs", usual="0 = off",
                           help="Passes over the data; above 0 it replaces max steps")
    learning_rate: float = option(2e-4, flag="--lr", usual="0.0002; QLoRA uses 1e-4 to 2e-4",
                                  help="Peak learning rate of the adapter")
    batch_size: int = option(4, flag="--batch-size", help="Sequences per step and GPU")
    gradient_accumulation: int = option(1, flag="--gradient-accumulation",
                                        help="Micro-batches summed into each optimizer step")
    seq_len: int = option(512, flag="--seq-len", help="Tokens per training sequence")
    eval_interval: int = option(50, flag="--eval-interval", help="Measure validation loss and perplexity every "
                                "this many steps")  # fmt: skip
    save_interval: int = option(50, flag="--save-interval", help="Save a checkpoint every this many steps; the "
                                "last two are kept")  # fmt: skip
    log_interval: int = option(1, flag="--log-interval", help="Report the training loss every this many steps")
    warmup_steps: int = option(0, flag="--warmup-steps", help="Steps of linear learning-rate warm-up")
    seed: int = option(0, flag="--seed", help="Seed of the data order and of the validation split")
    adapter: str = option("", flag="--adapter", usual="empty = the run's output",
                          help="The initialized adapter folder to fine-tune")
    output: str = option("", usual="empty = the adapter folder's name + '-trained'",
                         help="Training output folder: checkpoints, adapter/, metrics.json")
    resume: bool = option(False, usual="off", help="Continue from the last checkpoint in the output folder")
    tracking: str = option("tensorboard", flag="--tracking",
                           help="Experiment tracking of the run, written to logs/ in the output folder: "
                           f"{', '.join(TRACKERS)} (wandb and mlflow when installed)")  # fmt: skip
    launch: str = option("single", flag="--launch", usual="single = one machine, one process unless Processes says more",
                         help="How the run is spread over processes: single, ddp (a copy of the 4-bit model "
                         "per GPU), fsdp or deepspeed (ZeRO-3: the base sharded over the GPUs, for a model "
                         "that outgrows one); launch.sh takes the number of GPUs and machines from its "
                         "environment")  # fmt: skip
    processes: int = option(0, flag="--processes", usual="0 = the run kind's own: 1 for single, every GPU else",
                            help="Training processes (one per GPU, all machines together) that launch.sh and "
                            "the app's Launch start, NUM_PROCESSES overriding it in launch.sh; without a GPU "
                            "several processes train data parallel on the CPU")  # fmt: skip
    offload_params: bool = option(False, usual="off", help="FSDP / DeepSpeed runs: keep the sharded parameters "
                                  "in CPU memory between uses (slower; fits a larger model)")  # fmt: skip

    def validate(self) -> TrainSettings:
        """Raise InputError on the first training setting that cannot work (its `field` is the
        setting, its hint the usual value from the config's own help)."""
        t = self

        def refuse(name: str, message: str, hint: str | None = None) -> None:
            path = f"train.{name}"
            raise InputError(message, hint or f"The usual value is {field_help(path).usual}.", field=path)

        if t.data_format not in TRAIN_FORMATS:
            refuse("data_format", f"Unknown data format {t.data_format!r}.", f"Use one of {', '.join(TRAIN_FORMATS)}.")
        for name in ("batch_size", "gradient_accumulation", "eval_interval", "save_interval", "log_interval"):
            value = getattr(t, name)
            if not isinstance(value, int) or value < 1:
                refuse(name, f"{name} must be a whole number of at least 1, got {value!r}.")
        if not isinstance(t.seq_len, int) or t.seq_len < 8:
            refuse("seq_len", f"seq_len must be at least 8, got {t.seq_len!r}.")
        if not t.epochs >= 0:
            refuse("epochs", f"epochs must be >= 0, got {t.epochs}.", "Use 0 to train for max_steps steps.")
        if t.epochs == 0 and (not isinstance(t.max_steps, int) or t.max_steps < 1):
            refuse("max_steps", f"max_steps must be at least 1, got {t.max_steps!r}.", "Use --max-steps 100, or --epochs 1.")
        if not (isinstance(t.learning_rate, (int, float)) and math.isfinite(t.learning_rate) and t.learning_rate > 0):
            refuse("learning_rate", f"learning_rate must be a positive number, got {t.learning_rate!r}.",
                   "QLoRA uses 1e-4 to 2e-4.")  # fmt: skip
        if not 0 <= t.validation_fraction < 1:
            refuse("validation_fraction", f"validation_fraction must be in [0, 1), got {t.validation_fraction}.")
        if not isinstance(t.warmup_steps, int) or t.warmup_steps < 0:
            refuse("warmup_steps", f"warmup_steps must be >= 0, got {t.warmup_steps!r}.", "Use 0 or a few percent of the steps.")
        if t.tracking not in TRACKERS:
            refuse("tracking", f"Unknown tracking {t.tracking!r}.", f"Use one of {', '.join(TRACKERS)}.")
        if t.launch not in RUN_KINDS:
            refuse("launch", f"Unknown run kind {t.launch!r}.", f"Use one of {', '.join(RUN_KINDS)}.")
        if not isinstance(t.processes, int) or isinstance(t.processes, bool) or t.processes < 0:
            refuse("processes", f"processes must be a whole number >= 0, got {t.processes!r}.",
                   "Use 0 for the run kind's own count (every GPU of the machine), or the number of GPUs.")
        return self


@dataclass
class RunConfig:
    """Everything one run needs. `output` is the adapter directory to write."""

    model: ModelConfig = field(default_factory=ModelConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    quantization: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    init: InitSettings = field(default_factory=InitSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    output: str = option("quailora-adapter", flag="--output", usual="a new folder",
                         help="Folder the adapter is written to; it must not exist or be empty")
    overwrite: bool = option(False, usual="off", help="Replace the contents of an existing, non-empty output folder")

    # ------------------------------------------------------------------ validation
    def validate(self) -> RunConfig:
        """Raise InputError on the first setting that cannot work; return self.

        The settings' values first, then the output folder, the model and the calibration
        reference (cheap file checks), the device last: only a device other than auto and
        cpu needs torch, so a refusal of anything else does not wait for it to import."""
        q, lo, ini, cal = self.quantization, self.lora, self.init, self.calibration

        def refuse(path: str, message: str, hint: str | None = None) -> None:
            raise InputError(message, hint if hint is not None else _usual_hint(path), field=path)

        if q.bits not in (4, 8):
            refuse("quantization.bits", f"bits must be 4 or 8, got {q.bits}.", "Use --bits 4 or --bits 8.")
        if q.quant_type not in QUANT_TYPES:
            refuse("quantization.quant_type", f"Unknown quantization type {q.quant_type!r}.", "Use --quant-type nf4 or fp4.")
        if q.blocksize != 64:
            refuse("quantization.blocksize", f"blocksize {q.blocksize} cannot be matched at training time.",
                   "bitsandbytes layers built by transformers always use 64; leave it at 64.")  # fmt: skip
        for path, value in (("model.dtype", self.model.dtype), ("quantization.compute_dtype", q.compute_dtype)):
            if value not in DTYPES:
                name = "model dtype" if path == "model.dtype" else "compute dtype"
                refuse(path, f"Unknown {name} {value!r}.", f"Use one of {', '.join(DTYPES)}.")
        if q.quant_storage not in QUANT_STORAGES:
            refuse("quantization.quant_storage", f"Unknown quant storage {q.quant_storage!r}.",
                   f"Use one of {', '.join(QUANT_STORAGES)}.")  # fmt: skip
        if self.train.launch in RUN_KINDS:
            problem = sharded_storage_problem(self.train.launch, q.bits, q.quant_storage, self.model.dtype)
            if problem:
                refuse("quantization.quant_storage", *problem)
        if not isinstance(lo.rank, int) or lo.rank < 1:
            refuse("lora.rank", f"rank must be at least 1, got {lo.rank}.", "Use --rank 8, 16 or 64.")
        if not lo.alpha > 0:
            refuse("lora.alpha", f"alpha must be positive, got {lo.alpha}.", "Use --alpha equal to the rank.")
        if not lo.targets:
            refuse("lora.targets", "No target modules given.", "Use --targets all-linear or a list of names.")
        if ini.method not in METHODS:
            refuse("init.method", f"Unknown method {ini.method!r}.", f"Use one of {', '.join(METHODS)}.")
        if ini.inputs not in INPUT_SOURCES:
            refuse("init.inputs", f"Unknown input source {ini.inputs!r}.", f"Use one of {', '.join(INPUT_SOURCES)}.")
        if ini.verify not in VERIFY_MODES:
            refuse("init.verify", f"Unknown verify mode {ini.verify!r}.", f"Use one of {', '.join(VERIFY_MODES)}.")
        if not ini.damping >= 0:
            refuse("init.damping", f"damping must be >= 0, got {ini.damping}.")
        if ini.als_iters < 1:
            refuse("init.als_iters", f"als_iters must be at least 1, got {ini.als_iters}.")
        if ini.batch_size < 1:
            refuse("init.batch_size", f"batch_size must be at least 1, got {ini.batch_size}.")
        if cal.samples < 1:
            refuse("calibration.samples", f"samples must be at least 1, got {cal.samples}.")
        if cal.seq_len < 8:
            refuse("calibration.seq_len", f"seq_len must be at least 8, got {cal.seq_len}.")
        if cal.heldout_samples < 0:
            refuse("calibration.heldout_samples", "heldout_samples must be >= 0.")
        check_output_dir(self.output, self.overwrite)
        with about("model.path"):  # the cheap reference checks: no torch, no transformers
            hub.resolve_model_path(self.model.path)
        with about("calibration.source"):
            hub.check_data_source(cal.source)
        if ini.device not in ("auto", "cpu"):  # only a named GPU can be missing; torch is heavy
            from quailora_core.device import resolve_device

            with about("init.device"):
                resolve_device(ini.device)
        return self

    # ------------------------------------------------------------------ TOML
    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        sections = SECTIONS
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sections:
                if not isinstance(value, dict):
                    raise InputError(f"[{key}] in the run file must be a table.", "See `quailora init --save-config run.toml` for the layout.")
                kwargs[key] = _build(sections[key], value, key)
            elif key in ("output", "overwrite"):
                kwargs[key] = value
            else:
                known = ", ".join([*sections, "output", "overwrite"])
                raise InputError(f"Unknown key {key!r} in the run file.", f"Remove it or fix its spelling; known: {known}.")
        return cls(**kwargs)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> RunConfig:
        """The inverse of `to_toml` (paths exactly as written; `load` resolves a file's)."""
        try:
            return cls.from_dict(tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"The run is not valid TOML: {exc}.", "Fix the file.") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the run file atomically (temp file, then rename)."""
        atomic_write_text(path, self.to_toml())

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
        t.data = _reference(t.data, base, hub.looks_like_dataset_id)
        t.validation_data = _reference(t.validation_data, base, hub.looks_like_dataset_id)
        cfg.calibration.source = _reference(cfg.calibration.source, base, hub.looks_like_dataset_id)
        cfg.model.path = _reference(cfg.model.path, base, hub.looks_like_model_id)
        return cfg


def sharded_storage_problem(launch: str, bits: int, storage: str, load_dtype: str) -> tuple[str, str] | None:
    """Why a run of kind `launch` cannot shard this quantization (message, hint), or None.

    FSDP and DeepSpeed ZeRO-3 flatten each wrapped block's parameters into one tensor of one
    dtype, the packed 4-bit weights included: bitsandbytes must store them in the model's own
    dtype (`bnb_4bit_quant_storage`), as peft's FSDP-QLoRA and ZeRO-3-QLoRA guides say, or the
    run fails, or trains on garbage. Q does not depend on the storage dtype (tests/test_run_kinds.py),
    but an adapter records the storage it was computed for and training loads exactly that, so
    the storage is chosen at init. `load_dtype` is the model dtype; `auto` (bfloat16 on a GPU,
    float32 on a CPU) is refused for a sharded run, so that the adapter is computed in the
    dtype the run will shard.
    """
    if launch not in SHARDED_RUN_KINDS:
        return None
    if bits != 4:
        return (f"A {launch} run shards a 4-bit base only (QLoRA); this run is {bits}-bit.",
                'Use [quantization] bits = 4, or [train] launch = "ddp".')  # fmt: skip
    if load_dtype == "auto" or storage != load_dtype:
        return (f"A {launch} run shards the 4-bit weights with the others, so they must be stored in the "
                f"model dtype: quant_storage is {storage!r}, the model dtype {load_dtype!r}.",
                'Set [model] dtype = "bfloat16" and [quantization] quant_storage = "bfloat16".')  # fmt: skip
    return None


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "calibration": CalibrationConfig,
    "quantization": QuantConfig,
    "lora": LoraSettings,
    "init": InitSettings,
    "train": TrainSettings,
}


def field_help(path: str) -> FieldHelp:
    """The help of one setting, by its run-file path ("lora.rank", "output")."""
    section, _, name = path.rpartition(".")
    cls = SECTIONS[section] if section else RunConfig
    for f in dataclasses.fields(cls):
        if f.name == name and "help" in f.metadata:
            usual = f.metadata["usual"]
            if usual is None:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                usual = _usual_text(default)
            return FieldHelp(path, f.metadata["help"], usual, f.metadata["flag"])
    raise KeyError(path)


def section_help(section: str | None) -> list[FieldHelp]:
    """Every documented setting of a section (None: the top-level ones), in declaration order."""
    cls = SECTIONS[section] if section else RunConfig
    prefix = f"{section}." if section else ""
    return [field_help(prefix + f.name) for f in dataclasses.fields(cls) if "help" in f.metadata]


def _usual_hint(path: str) -> str:
    return f"The usual value is {field_help(path).usual}."


def _usual_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _local_path(value: str, base: Path) -> str:
    """A path to write, made absolute against `base` ("" stays "": the default applies)."""
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _reference(value: str, base: Path, looks_like_id: Callable[[str], bool]) -> str:
    """A model or data reference made absolute against `base`; `demo`, and a hub id that
    names no local path there, stay as they are."""
    if not value or value in (DEMO_MODEL, DEMO_CALIBRATION):
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if (base / path).exists() or not looks_like_id(value):
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
    defaults = cls()
    for name, value in values.items():
        expected = _kind(getattr(defaults, name))
        if expected is not None and not _is_kind(value, expected):
            raise InputError(
                f"{name} in [{section}] of the run file must be {_NAMES.get(expected, 'a list')}, got {value!r}.",
                f"The usual value is {field_help(f'{section}.{name}').usual}.",
                field=f"{section}.{name}",
            )
    return cls(**values)


_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def _kind(default: Any) -> type | None:
    """What a run file must give for a field whose default is `default` (None: not checked)."""
    return next((t for t in (bool, int, float, str, list) if isinstance(default, t)), None)


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _drop_none(value: Any) -> Any:
    """TOML has no null: leave unset optional values out."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value
