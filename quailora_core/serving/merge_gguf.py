"""Merge an adapter and write the merged model as a GGUF file, in one run (`quailora merge --gguf`,
the app's File > Export GGUF…).

Why one function: the command line and the app both offer it, and both must refuse before the
merge's heavy work what the GGUF step would refuse after it (an architecture, a rope scaling or a
tokenizer the export does not write, an existing file). It only composes the two engines: the
refusals are theirs (`merge.plan_merge`, and `gguf_export.check_export` asked of the base folder
as the merge will write it: its tensors, its tokenizer, its config without quantization_config),
then `merge_adapter` writes and self-checks the folder, then `export_gguf` writes and reads back
the file (atomically: a failure leaves no .gguf). A failure of the GGUF step keeps the merged
folder and says so, with the command that retries the export alone.

Unless a dtype is asked for, the merged folder takes the dtype the GGUF type stores (f16 -> fp16,
bf16 -> bf16), so each merged weight is rounded once; q8_0 quantizes from bf16 (its own rounding
is ~100x coarser than bf16's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quailora_core.errors import Cancelled, EngineError, InputError, QuailoraError
from quailora_core.events import CancelToken, EventCallback, Finished, Log, ignore_events
from quailora_core.serving.gguf_export import GgufExport, check_export, export_gguf
from quailora_core.serving.merge import (
    MergeResult,
    merge_adapter,
    merged_config,
    parse_dtype,
    plan_merge,
    refuse_inside,
)

# GGUF type -> the merged folder's dtype when none is asked for
MERGE_DTYPE = {"f16": "fp16", "bf16": "bf16", "q8_0": "bf16"}


@dataclass(frozen=True)
class MergedGguf:
    """What one run wrote: the merged folder (kept) and the GGUF file made from it."""

    merge: MergeResult
    gguf: GgufExport

    def to_dict(self) -> dict[str, Any]:
        return {"merge": self.merge.to_dict(), "gguf": self.gguf.to_dict()}


def llama_cpp_commands(gguf_file: str | Path) -> str:
    """How to run a GGUF file with llama.cpp: its chat CLI and its OpenAI-compatible server."""
    import shlex

    path = shlex.quote(str(gguf_file))
    return f"llama-cli -m {path}\nllama-server -m {path}\n"


def default_gguf_output(output: str) -> str:
    """`<output>.gguf`, next to the merged folder `output`."""
    folder = Path(output).expanduser()
    return str(folder.with_name(folder.name + ".gguf"))


def merge_dtype(gguf_type: str, dtype: str | None) -> str:
    """The merged folder's dtype: `dtype` when given, else the one the GGUF type stores."""
    return dtype if dtype is not None else MERGE_DTYPE.get(gguf_type, "bf16")


def plan_merge_gguf(adapter: str, output: str, gguf_type: str, gguf_output: str | None = None,
                    dtype: str | None = None, model: str | None = None) -> str:  # fmt: skip
    """Every refusal of the merge and of the GGUF export, before any weight is read; returns
    the GGUF file to write."""
    dtype = merge_dtype(gguf_type, dtype)
    plan = plan_merge(adapter, output, dtype, model)
    target = gguf_output or default_gguf_output(output)
    refuse_inside(target, {"adapter": adapter, "base model": plan.base}, "--gguf-output")
    folder = plan.output.resolve()
    path = Path(target).expanduser().resolve()
    if folder == path or folder in path.parents:
        raise InputError(f"The GGUF file {target!r} would lie inside the merged folder {str(plan.output)!r}.",
                         "Choose a --gguf-output outside --output (the default is <output>.gguf).", field="output")  # fmt: skip
    try:
        check_export(plan.base, target, gguf_type, merged_config(plan.base, parse_dtype(dtype)),
                     parent_made=path.parent == folder.parent)  # fmt: skip
    except InputError as exc:  # export-gguf's flags are --output and --type; here --gguf-output and --gguf
        exc.hint = exc.hint.replace("--output", "--gguf-output").replace("--type", "--gguf")
        raise
    return target


def merge_to_gguf(
    adapter: str,
    output: str,
    gguf_type: str,
    gguf_output: str | None = None,
    dtype: str | None = None,
    model: str | None = None,
    on_event: EventCallback = ignore_events,
    cancel: CancelToken | None = None,
) -> MergedGguf:
    """Write the merged folder `output` and the GGUF file `gguf_output` (default <output>.gguf)
    of type `gguf_type`. One Finished event at the end, naming the GGUF file."""
    cancel = cancel or CancelToken()
    dtype = merge_dtype(gguf_type, dtype)
    target = plan_merge_gguf(adapter, output, gguf_type, gguf_output, dtype, model)

    def merge_events(event: Any) -> None:  # the run finishes once, after the GGUF file
        if not isinstance(event, Finished):
            on_event(event)

    merged = merge_adapter(adapter, output, dtype, model, merge_events, cancel)
    folder = merged.output_dir
    on_event(Log("info", f"merged folder written to {folder}; writing {gguf_type} GGUF {target}"))
    retry = f"Retry the GGUF step alone: quailora export-gguf --model {folder} --output {target} --type {gguf_type}"
    try:
        exported = export_gguf(folder, target, gguf_type, on_event, cancel)
    except Cancelled:
        stopped = Cancelled()
        stopped.hint = f"The merged folder {folder} was kept; no GGUF file was written."
        raise stopped from None
    except QuailoraError as exc:
        kind = InputError if isinstance(exc, InputError) else EngineError
        raise kind(f"The GGUF export failed and the merged folder {folder} was kept: {exc.message}",
                   f"{exc.hint} {retry}".strip(), field=exc.field) from exc  # fmt: skip
    except Exception as exc:
        text = (str(exc).splitlines() or [""])[0]
        raise EngineError(f"The GGUF export failed ({type(exc).__name__}: {text}) and the merged folder {folder} "
                          "was kept; no GGUF file was written.", retry) from exc  # fmt: skip
    result = MergedGguf(merged, exported)
    on_event(Finished(str(exported.output), result.to_dict()))
    return result
