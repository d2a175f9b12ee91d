"""How much quantizing the base alone costs each benchmark model (no adapter, no training).

The paper table (`paper_table.py`) measures the share of the 4-bit -> 8-bit gap an
initialization recovers, so it needs models where 4-bit quantization actually hurts. This
script shows which models have such a gap: each model's perplexity loaded in float32, as
LLM.int8 (8-bit) and as NF4 / FP4 with double quantization (4-bit, built by the engine's own
`quantize.bnb_config`, as `quailora init` and `quailora train` load it), on

* the fine-tuning validation split of `paper_table.py` (Python language reference, split by
  document with seed 1234, 10 %): the domain the paper table evaluates on;
* the start of the model's own pretraining text (text it was trained on): how much of what
  it learned survives the rounding.

    python benchmarks/quant_sensitivity.py                       # small, medium, broad-xs, broad-s
    python benchmarks/quant_sensitivity.py --models broad-xs --blocks 40 --no-write

Writes benchmarks/results/quant_sensitivity.{json,md} (unless --no-write).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, write_results  # noqa: E402

LOADS = ("float32", "int8", "nf4", "fp4")


def text_blocks(tokenizer, text: str, n: int, seq_len: int):
    """The first n full blocks of seq_len tokens of `text` (no special tokens)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    n = min(n, len(ids) // seq_len)
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def load(path: str, how: str):
    """The model as float32, or quantized exactly as the engine's BitsAndBytesConfig says."""
    import torch
    from transformers import AutoModelForCausalLM

    from quailora_core.config import QuantConfig
    from quailora_core.model.base import disable_cpu_packing
    from quailora_core.quant.quantizer import bnb_config

    if how == "float32":
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    q = QuantConfig(bits=8) if how == "int8" else QuantConfig(bits=4, quant_type=how, double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, quantization_config=bnb_config(q, torch.float32))
    disable_cpu_packing(model)  # keep Linear4bit on the exact dequantize path (see model/base.py)
    return model


def perplexity(model, blocks, batch: int = 8) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(blocks), batch):
            b = blocks[i : i + batch]
            loss = model(input_ids=b, labels=b).loss.item()
            n = b.numel() - b.shape[0]  # predicted tokens
            total, count = total + loss * n, count + n
    return math.exp(total / count)


def run_model(size: str, args, validation: str) -> dict | None:
    from pretrain_tiny import MARKER, find_model, model_pretraining_text
    from transformers import AutoTokenizer

    path = find_model(size)
    if path is None:
        print(f"skipping {size}: not built (python benchmarks/pretrain_tiny.py --size {size})", flush=True)
        return None
    marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    tok = AutoTokenizer.from_pretrained(str(path))
    texts = {
        "finetune_validation": text_blocks(tok, validation, args.blocks, args.seq_len),
        "pretraining_start": text_blocks(tok, "\n\n".join(model_pretraining_text(path, 400_000)[1]), args.blocks,
                                         args.seq_len),
    }
    row = {"model": f"llama-{size}", "parameters": marker["parameters"], "corpus": marker.get("corpus", "stdlib"),
           "heldout_loss": marker["heldout_loss"], "tokens": {k: int(v.numel()) for k, v in texts.items()},
           "perplexity": {}}  # fmt: skip
    for how in LOADS:
        t0 = time.perf_counter()
        model = load(str(path), how)
        row["perplexity"][how] = {k: perplexity(model, v) for k, v in texts.items()}
        del model
        ppl = row["perplexity"][how]
        print(f"llama-{size:9s} {how:8s} fine-tuning validation {ppl['finetune_validation']:9.3f}   "
              f"pretraining start {ppl['pretraining_start']:9.3f}   ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    return row


def markdown(report: dict) -> str:
    st = report["setting"]
    lines = [
        "# Quantization sensitivity of the benchmark models (benchmarks/quant_sensitivity.py)",
        "",
        f"Perplexity of the base model alone (no adapter) on {st['blocks']} blocks of {st['seq_len']} tokens "
        "of each text. Change = relative to float32.",
        "",
        "| model | parameters | pretraining corpus | text | float32 | int8 | NF4 | FP4 | int8 change | NF4 change | NF4 - int8 |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["models"]:
        for text, label in (("finetune_validation", "fine-tuning validation"), ("pretraining_start", "pretraining start")):
            p = {how: r["perplexity"][how][text] for how in LOADS}
            lines.append(
                f"| {r['model']} | {r['parameters'] / 1e6:.2f} M | {r['corpus']} | {label} | {p['float32']:.3f} | "
                f"{p['int8']:.3f} | {p['nf4']:.3f} | {p['fp4']:.3f} | {100 * (p['int8'] / p['float32'] - 1):+.2f} % | "
                f"{100 * (p['nf4'] / p['float32'] - 1):+.2f} % | {p['nf4'] - p['int8']:+.3f} |"
            )  # fmt: skip
    m = report["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cpu_count']} cores, GPU {m['gpu'] or 'none'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="small,medium,broad-xs,broad-s", help="pretrain_tiny.py sizes, comma separated")
    p.add_argument("--blocks", type=int, default=80, help="blocks of each text (default 80)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from paper_table import split_corpus

    with tempfile.TemporaryDirectory(prefix="quailora-quant-sens-") as tmp:
        split = split_corpus(Path(tmp), 0.1)
        validation = Path(split["validation"]).read_text(encoding="utf-8")
    rows = [r for size in args.models.split(",") if size.strip() for r in [run_model(size.strip(), args, validation)] if r]
    report = {"benchmark": "quant_sensitivity", "machine": machine(),
              "setting": {"blocks": args.blocks, "seq_len": args.seq_len, "validation_split_seed": split["split_seed"],
                          "validation_documents": split["validation_documents"], "loads": list(LOADS)},
              "models": rows}  # fmt: skip
    md = markdown(report)
    print(md)
    if not args.no_write:
        print(write_results("quant_sensitivity", report, md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
