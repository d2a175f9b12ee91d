"""The commands (init, train, eval, export-run, merge, export-gguf, queue): their parsers and what each
runs (through `reporting.run_reporting`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from quailora_core.cli.flags import TRAIN_FLAGS, add_init_flags, build_config, build_train_config
from quailora_core.cli.progress import TerminalProgress, TrainProgress
from quailora_core.cli.queue import add_queue
from quailora_core.cli.reporting import run_reporting
from quailora_core.config import RunConfig, field_help
from quailora_core.train.settings import check_before_loading


def _add_init(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="compute a QuAILoRA-initialized LoRA adapter",
        description="Initialize LoRA adapters so that the quantized model plus LoRA reproduces the "
        "full-precision model on calibration text (QuAILoRA).",
    )
    add_init_flags(p)
    p.add_argument("--save-config", help="also write the resolved run file (TOML) here")
    p.add_argument("--json", action="store_true", help="stream events as JSON lines on stdout")
    p.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    def work(on_event, cancel):
        config = build_config(args).validate()  # before the engine's import: a typo is refused at once
        if args.save_config:
            config.save(args.save_config)
        from quailora_core.init.pipeline import run_init

        return run_init(config, on_event, cancel)

    code, result = run_reporting(args, work, None if args.json else TerminalProgress())
    if code == 0 and not args.json:
        from quailora_core.init.metrics import format_table

        print(format_table(result.layers))
        print(f"\nadapter written to {result.output_dir}")
        for verdict in result.serving:  # the README's Serving section has the commands
            if not verdict.reproduces:
                print(f"serving: {verdict.line()}")
    return code


# ---------------------------------------------------------------------------- train / eval / export-run
# flag -> (section, field, type, help); these override the run file's [model] / [train] values.
def _add_train_flags(p: argparse.ArgumentParser) -> None:
    for flag, (_, _, typ, text) in TRAIN_FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=text)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune an initialized adapter (QLoRA, transformers Trainer)",
        description="Fine-tune a QuAILoRA-initialized adapter on the quantized base it was computed for. "
        "Relative paths in the run file are relative to its folder.",
    )
    p.add_argument("config", nargs="?", help="run file (TOML), e.g. the one `quailora export-run` writes")
    _add_train_flags(p)
    p.add_argument("--output", dest="train_output", default=None,
                   help="training output folder: checkpoints, adapter/, metrics.json (default [train] output)")
    p.add_argument("--resume", action="store_true", help=field_help("train.resume").flag_help())
    p.add_argument("--check", action="store_true",
                   help="only run the checks that need no model weights (settings, adapter, base, data, output), "
                   "then exit: 0 when the run can start, 2 with the reason")  # fmt: skip
    p.add_argument("--json", action="store_true", help="stream events as JSON lines on stdout")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    def work(on_event, cancel):
        config = build_train_config(args)  # a missing run file or adapter is refused before torch loads
        check_before_loading(config)
        from quailora_core.train.trainer import preflight_train, run_train

        if args.check:  # launch.sh runs this before `accelerate launch`, which turns errors into tracebacks
            return preflight_train(config, on_event, launching=True)
        return run_train(config, on_event, cancel)

    code, result = run_reporting(args, work, None if args.json else TrainProgress())
    if code == 0 and args.check:
        if not args.json:
            d = result.data_summary
            print(f"checked: {d['train_examples']} training and {d['eval_examples']} validation examples "
                  f"({d['format']}); training output {result.output}", file=sys.stderr)  # fmt: skip
        return code
    if code == 0 and not args.json:
        m = result.metrics

        def num(x: Any) -> str:
            return f"{x:.4f}" if isinstance(x, float) else "n/a"

        print(f"trained {result.global_step} steps: training loss {num(m.get('train_loss'))}, validation loss "
              f"{num(m.get('first_eval_loss'))} -> {num(m.get('eval_loss'))} (perplexity "
              f"{num(m.get('first_perplexity'))} -> {num(m.get('perplexity'))})")  # fmt: skip
        print(f"trained adapter written to {result.adapter_dir}; metrics in {result.output_dir}/metrics.json")
        if result.tracking is not None:
            print(result.tracking.line())
    return code


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="perplexity of full-precision, quantized and quantized + adapter models",
        description="Measure how much of the perplexity lost to quantization an adapter recovers: "
        "perplexity of a text under the full-precision base, the quantized base (as the adapter "
        "records it) and the quantized base plus the adapter.",
    )
    p.add_argument("--adapter", required=True, help="adapter folder written by `quailora init` (or train)")
    p.add_argument("--data", required=True, help="text to measure: a file, folder, hub dataset id or 'demo' "
                   "(the built-in fine-tuning text); use text the adapter was not calibrated on")  # fmt: skip
    p.add_argument("--model", default=None, help="base model (default: the one recorded in the adapter)")
    p.add_argument("--samples", type=int, default=32, help="sequences (default 32)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--text-column", default="text", help="column holding the text in table data (default text)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per forward pass (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed for picking the sequences (default 0)")
    p.add_argument("--json", action="store_true", help="events and the result as JSON lines on stdout")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from quailora_core.events import Finished

    def work(on_event, cancel):
        from quailora_core.evaluate import evaluate_adapter

        report = evaluate_adapter(
            args.adapter, args.data, args.model, args.samples, args.seq_len, args.text_column,
            args.batch_size, args.device, args.seed, on_event, cancel,
        )  # fmt: skip
        on_event(Finished(report.adapter, report.to_dict()))
        return report

    def progress(event: Any) -> None:
        from quailora_core.events import Log

        if isinstance(event, Log):
            print(f"[{event.level}] {event.message}", file=sys.stderr)

    code, report = run_reporting(args, work, None if args.json else progress)
    if code == 0 and not args.json:
        print(report.table())
    return code


def _add_export_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-run",
        help="write a self-contained fine-tuning run folder (run.toml, adapter, data, launch.sh)",
        description="Write a run folder that trains the initialized adapter with `accelerate launch`, here "
        "or on another machine: run.toml, a copy of the adapter and of local data files, launch.sh, README.md.",
    )
    p.add_argument("--config", help="run file (TOML); flags given here override it")
    _add_train_flags(p)
    p.add_argument("--output", dest="run_dir", required=True, help="the run folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty run folder")
    p.add_argument("--json", action="store_true", help="print the result as a JSON line")
    p.set_defaults(func=cmd_export_run)


def cmd_export_run(args: argparse.Namespace) -> int:
    from quailora_core.events import Finished

    def work(on_event, cancel):
        config = build_train_config(args)  # a missing run file or adapter is refused at once
        from quailora_core.train.export import export_run

        run_dir = export_run(config, args.run_dir, args.overwrite)
        on_event(Finished(str(run_dir), {"run_file": str(run_dir / "run.toml"), "launcher": str(run_dir / "launch.sh")}))
        return run_dir

    code, run_dir = run_reporting(args, work)
    if code == 0 and not args.json:
        kind = RunConfig.load(run_dir / "run.toml", resolve=False).train.launch
        many = "" if kind == "single" else f"   ({kind}: NUM_PROCESSES=N for N processes, see its README)"
        print(f"run folder written to {run_dir}\nstart it with: {run_dir}/launch.sh{many}")
    return code


def _add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge an adapter into a plain model for serving: dequant(Q) + s*B*A, not W + s*B*A",
        description="Write a complete transformers model folder whose targeted weights are the quantized base "
        "weight the adapter was computed for (dequantized, exactly as bitsandbytes builds it) plus the adapter, "
        "and every other weight as in the base. Merging into the original 16-bit weights instead would apply "
        "the quantization correction twice.",
    )
    p.add_argument("--adapter", required=True, help="adapter folder written by `quailora init` or `quailora train`")
    p.add_argument("--output", required=True, help="the model folder to write (must not exist or be empty)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                   help="dtype of the merged weights (default bf16; with --gguf f16: fp16)")  # fmt: skip
    p.add_argument("--model", default=None, help="base model folder (default: the one recorded in the adapter)")
    p.add_argument("--gguf", dest="gguf_type", default=None, metavar="f16|bf16|q8_0",
                   help="also write the merged model as a GGUF file for llama.cpp (checked like export-gguf)")  # fmt: skip
    p.add_argument("--gguf-output", default=None, metavar="FILE.gguf",
                   help="the GGUF file to write with --gguf (default: <output>.gguf; must not exist)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="events and the result as JSON lines on stdout")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    if args.gguf_output and not args.gguf_type:
        print("error: --gguf-output needs --gguf TYPE (f16, bf16 or q8_0).", file=sys.stderr)
        return 2

    def work(on_event, cancel):
        _check_merge_inputs(args)
        if args.gguf_type:
            from quailora_core.serving.merge_gguf import merge_to_gguf

            return merge_to_gguf(args.adapter, args.output, args.gguf_type, args.gguf_output, args.dtype, args.model,
                                 on_event, cancel)  # fmt: skip
        from quailora_core.serving.merge import merge_adapter

        return merge_adapter(args.adapter, args.output, args.dtype or "bf16", args.model, on_event, cancel)

    def progress(event: Any) -> None:
        from quailora_core.cli.progress import status
        from quailora_core.events import Log, Progress, Stage

        if isinstance(event, Log):
            print(f"[{event.level}] {event.message}", file=sys.stderr)
        elif isinstance(event, Progress):
            status(f"merging: {event.what} ...")
        elif isinstance(event, Stage) and event.name == "export":
            gguf_phase.append(True)
        elif isinstance(event, Stage) and event.name in ("load", "copy", "verify"):
            status({"load": "checking inputs and loading ...", "copy": "copying the other weights ...",
                    "verify": "GGUF self-check: reading the file back ..." if gguf_phase else "self-check ..."}[event.name])  # fmt: skip

    gguf_phase: list[bool] = []  # the GGUF step has begun (its verify stage is the file's read-back)
    code, result = run_reporting(args, work, None if args.json else progress)
    if code == 0 and not args.json:
        from quailora_core.cli.progress import clear_status

        merged = result.merge if args.gguf_type else result
        print(f"{clear_status()}merged {merged.merged_layers} layers as dequant(Q) + s*B*A into {merged.output_dir} "
              f"({merged.dtype}, {merged.shards} shard(s); self-check: {len(merged.checked)} layers exact)")  # fmt: skip
        if args.gguf_type:
            g = result.gguf
            from quailora_core.serving.merge_gguf import llama_cpp_commands

            print(f"GGUF {g.gguf_architecture} {g.type} written to {g.output} ({g.tensors} tensors, "
                  f"{g.bytes / 2**20:.1f} MiB; {g.values_checked} compared with the merged folder)\n"
                  f"run it with llama.cpp:\n{llama_cpp_commands(g.output)}", end="")  # fmt: skip
    return code


def _check_merge_inputs(args: argparse.Namespace) -> None:
    """The adapter and the base given on the line, checked before the merge's modules import
    torch, so that a missing path is refused at once (`plan_merge` checks them again, with
    the output folder and everything else that needs no weights)."""
    from quailora_core.adapter.record import AdapterRecord
    from quailora_core.sources.references import resolve_model_path

    AdapterRecord.load(args.adapter)
    if args.model:
        resolve_model_path(args.model)


def _add_export_gguf(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-gguf",
        help="write a full-precision (merged) model folder as one GGUF file for llama.cpp",
        description="Convert a full-precision transformers model folder (Llama, Mistral, Qwen2, Qwen3; "
        "e.g. the output of `quailora merge`) to a GGUF file for llama.cpp. The file is read back and "
        "checked against the source before it is renamed into place.",
    )
    p.add_argument("--model", required=True, help="the transformers model folder (safetensors) to convert")
    p.add_argument("--output", required=True, help="the GGUF file to write (FILE.gguf; must not exist)")
    p.add_argument("--type", dest="gguf_type", default="f16", help="f16, bf16 or q8_0 (default f16)")
    p.add_argument("--json", action="store_true", help="events and the result as JSON lines on stdout")
    p.set_defaults(func=cmd_export_gguf)


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from quailora_core.events import Finished

    def work(on_event, cancel):
        from quailora_core.serving.gguf_export import export_gguf

        result = export_gguf(args.model, args.output, args.gguf_type, on_event, cancel)
        on_event(Finished(str(result.output), result.to_dict()))
        return result

    def progress(event: Any) -> None:
        from quailora_core.events import Log, Stage

        if isinstance(event, Log):
            print(f"[{event.level}] {event.message}", file=sys.stderr)
        elif isinstance(event, Stage) and event.name == "verify":
            print("self-check: reading the file back and comparing it with the source ...", file=sys.stderr)

    code, result = run_reporting(args, work, None if args.json else progress)
    if code == 0 and not args.json:
        kept = f"; kept in f16 (rows not a multiple of 32): {', '.join(result.kept_f16)}" if result.kept_f16 else ""
        print(f"GGUF {result.gguf_architecture} {result.type} written to {result.output} ({result.tensors} tensors, "
              f"{result.bytes / 2**20:.1f} MiB; {result.values_checked} compared with the source{kept})")  # fmt: skip
    return code


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quailora", description="QuAILoRA Studio command line")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_init(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_export_run(sub)
    _add_merge(sub)
    _add_export_gguf(sub)
    add_queue(sub)
    return parser
