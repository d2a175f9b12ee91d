"""Command-line flags from the config's own field help: one flag per documented setting,
applied over a run file (`--config`) or an adapter's recorded run."""

from __future__ import annotations

import argparse
from typing import Any

from quailora_core.config import RunConfig, field_help, section_help
from quailora_core.errors import InputError

# flag -> (section, field, type, help); a None section is a top-level RunConfig field. The
# help and the usual value come from the config's own field help (config.field_help), the
# same words the app's tooltips show.
_Flags = dict[str, tuple[str | None, str, Any, str]]


def _flags(sections: tuple[str | None, ...], only: tuple[str, ...] = ()) -> _Flags:
    table: _Flags = {}
    defaults = RunConfig()
    for section in sections:
        holder = getattr(defaults, section) if section else defaults
        for h in section_help(section):
            name = h.path.rpartition(".")[2]
            if h.flag and (not only or h.path in only):
                value = getattr(holder, name)
                table[h.flag] = (section, name, str if value is None else type(value), h.flag_help())
    return table


INIT_FLAGS = _flags(("model", "calibration", "quantization", "lora", "init", None))


TRAIN_FLAGS = {**_flags(("model",), only=("model.path",)), **_flags(("train",))}


def add_init_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a run to initialize (`quailora init`, `quailora queue add`): --config and
    one flag per setting, each None unless given, so `build_config` applies only those."""
    p.add_argument("--config", help="run file (TOML) to start from; flags given here override it")
    for flag, (_, _, typ, text) in INIT_FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=text)
    p.add_argument("--targets", default=None, help=field_help("lora.targets").flag_help(", comma-separated"))
    p.add_argument("--double-quant", dest="double_quant", action="store_true", default=None, help=field_help("quantization.double_quant").flag_help())
    p.add_argument("--no-double-quant", dest="double_quant", action="store_false", help="double quantization off")
    p.add_argument("--rslora", action="store_true", default=None, help=field_help("lora.rslora").flag_help())
    p.add_argument(
        "--offload-activations", action="store_true", default=None,
        help=field_help("init.offload_activations").flag_help(),
    )
    p.add_argument("--overwrite", action="store_true", default=None, help=field_help("overwrite").flag_help())


def build_config(args: argparse.Namespace) -> RunConfig:
    """RunConfig from --config (if any) with every explicitly given flag applied on top."""
    config = RunConfig.load(args.config) if args.config else RunConfig()
    for flag, (section, name, _, _) in INIT_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is None:
            continue
        setattr(config if section is None else getattr(config, section), name, value)
    if args.targets is not None:
        config.lora.targets = [t.strip() for t in args.targets.replace(" ", ",").split(",") if t.strip()]
    if args.double_quant is not None:
        config.quantization.double_quant = args.double_quant
    if args.rslora is not None:
        config.lora.rslora = args.rslora
    if args.offload_activations is not None:
        config.init.offload_activations = args.offload_activations
    if args.overwrite is not None:
        config.overwrite = args.overwrite
    return config


def build_train_config(args: argparse.Namespace) -> RunConfig:
    """The run file (paths relative to its folder) or, without one, the adapter's own run
    record; then every flag given (paths relative to the working directory)."""
    from pathlib import Path

    from quailora_core.train.settings import config_from_adapter

    if args.config:
        config = RunConfig.load(args.config)
    elif args.adapter:
        config = config_from_adapter(args.adapter)
    else:
        raise InputError("No run file and no adapter given.", "Use `quailora train run.toml` or --adapter DIR --data FILE.")
    for flag, (section, name, _, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            setattr(getattr(config, section), name, value)
    if getattr(args, "train_output", None):
        config.train.output = args.train_output
    if getattr(args, "resume", False):
        config.train.resume = True
    return config.resolved(Path.cwd())
