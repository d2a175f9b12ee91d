"""The engine at Llama-3-8B scale on one GPU: wall time and peak GPU memory.

Builds a model with Llama-3-8B's shapes (hidden 4096, intermediate 14336, 32 layers,
32 heads, 8 kv heads, vocab 128256) and random weights, created directly on the GPU in
bfloat16 and saved to a local folder with a word-level tokenizer whose vocabulary is
`w0 ... w128255`, so a calibration text of random words is a sequence of random token ids
(speed and memory do not depend on the values). Then runs the engine (`run_init`) on it:
128 samples x 2048 tokens, rank 64, NF4, quailora, all linear layers, and reports the wall
time of `run_init` and `torch.cuda.max_memory_allocated()` (peak memory of tensors
allocated by PyTorch on the GPU; the host holds the full-precision model).

Goals (issue 2): < 10 minutes and < 12 GB of GPU memory.

    python benchmarks/gpu_llama8b.py                 # needs CUDA; ~16 GB of disk for the model
    python benchmarks/gpu_llama8b.py --tiny          # the same code path on a tiny shape (CPU is fine)
    python benchmarks/gpu_llama8b.py --workdir /scratch/q8b --keep   # reuse the saved model next time

Without CUDA (and without --tiny) it stops at once with exit code 2 and a clear message.
Results: benchmarks/results/gpu_llama8b[-tiny].json and .md (unless --no-write).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, make_config, write_results  # noqa: E402

LLAMA3_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
    rms_norm_eps=1e-5,
)  # fmt: skip
TINY = dict(
    hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=512, rope_theta=500000.0, max_position_embeddings=512,
    rms_norm_eps=1e-5,
)  # fmt: skip


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer over `w0 ... w{n-1}` (w0..w3 double as unk/bos/eos/pad)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w0", bos_token="w1", eos_token="w2", pad_token="w3",
        model_max_length=1_000_000,
    )  # fmt: skip


def build_model(folder: Path, shape: dict, device, dtype) -> dict:
    """Random-weight Llama of `shape`, created on `device` in `dtype`, saved to `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file() and (folder / "bench_shape.json").is_file():
        if json.loads((folder / "bench_shape.json").read_text()) == shape:
            print(f"reusing the model in {folder}", flush=True)
            return json.loads((folder / "bench_model_stats.json").read_text())
    t0 = time.perf_counter()
    config = LlamaConfig(**shape, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    t_create = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    word_tokenizer(shape["vocab_size"]).save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    stats = {
        "parameters": n_params,
        "model_gib": n_params * torch.finfo(dtype).bits / 8 / 2**30,
        "create_seconds": t_create,
        "save_seconds": time.perf_counter() - t0 - t_create,
    }
    (folder / "bench_shape.json").write_text(json.dumps(shape))
    (folder / "bench_model_stats.json").write_text(json.dumps(stats))
    return stats


def random_text(path: Path, vocab_size: int, n_tokens: int, seed: int = 0) -> Path:
    """Random words w4..w{n-1} (never the special ids), 2048 per line-paragraph."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for start in range(0, n_tokens, 2048):
            n = min(2048, n_tokens - start)
            fh.write(" ".join(f"w{rng.randrange(4, vocab_size)}" for _ in range(n)) + "\n\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Engine wall time and peak GPU memory at Llama-3-8B scale.")
    p.add_argument("--tiny", action="store_true", help="tiny shape, 8 x 128 tokens, rank 8 (runs on CPU too)")
    p.add_argument("--samples", type=int, default=None, help="default 128 (tiny: 8)")
    p.add_argument("--seq-len", type=int, default=None, help="default 2048 (tiny: 128)")
    p.add_argument("--heldout", type=int, default=None, help="held-out sequences (default 16; tiny: 2)")
    p.add_argument("--rank", type=int, default=None, help="default 64 (tiny: 8)")
    p.add_argument("--method", default="quailora")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workdir", default=None, help="where the model is saved (default: a temp folder, deleted)")
    p.add_argument("--keep", action="store_true", help="keep --workdir's model for the next run")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print(
            "gpu_llama8b.py needs a CUDA GPU (torch.cuda.is_available() is False here: "
            f"torch {torch.__version__}, CUDA build: {torch.version.cuda}). Install a CUDA build of PyTorch on a "
            "machine with an NVIDIA GPU, or run `--tiny` to exercise the same code on a tiny shape.",
            file=sys.stderr,
        )
        return 2
    shape = TINY if args.tiny else LLAMA3_8B
    samples = args.samples or (8 if args.tiny else 128)
    seq_len = args.seq_len or (128 if args.tiny else 2048)
    heldout = args.heldout if args.heldout is not None else (2 if args.tiny else 16)
    rank = args.rank or (8 if args.tiny else 64)
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16
    temp = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="quailora-llama8b-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"building a random {'tiny' if args.tiny else 'Llama-3-8B'}-shaped model on {device} in bf16 ...",
              flush=True)  # fmt: skip
        stats = build_model(work / "model", shape, device, dtype)
        print(f"{stats['parameters'] / 1e6:,.1f} M parameters ({stats['model_gib']:.3f} GiB in bf16)", flush=True)
        text = random_text(work / "random_words.txt", shape["vocab_size"], (samples + heldout) * seq_len + 4096)
        from quailora_core.events import LayerResult, Log
        from quailora_core.init.pipeline import run_init

        cfg = make_config(
            str(work / "model"), str(text), str(work / "adapter"), samples, seq_len, heldout,
            lora__rank=rank, lora__alpha=float(rank), init__method=args.method, init__batch_size=args.batch_size,
            quantization__bits=4, quantization__quant_type="nf4",
        )  # fmt: skip
        cfg.model.dtype = "bfloat16"
        cfg.init.device = str(device)
        n_layers = 7 * shape["num_hidden_layers"]
        last = {"t": time.perf_counter()}

        def on_event(e):
            if isinstance(e, Log):
                print(f"[{e.level}] {e.message}", flush=True)
            elif isinstance(e, LayerResult) and (e.index % 7 == 6 or time.perf_counter() - last["t"] > 30):
                last["t"] = time.perf_counter()
                print(f"  layer {e.index + 1}/{n_layers} {e.name}: {e.cal_err_before:.3e} -> {e.cal_err_after:.3e}"
                      f" ({e.seconds:.2f} s)", flush=True)  # fmt: skip

        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = run_init(cfg, on_event)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else None
        reserved = torch.cuda.max_memory_reserved() if cuda else None
        report = {
            "benchmark": "gpu_llama8b" + ("-tiny" if args.tiny else ""),
            "machine": machine(),
            "setting": {
                "shape": shape, "samples": samples, "seq_len": seq_len, "heldout": heldout, "rank": rank,
                "method": args.method, "quant": "nf4", "batch_size": args.batch_size, "device": str(device),
                "dtype": "bfloat16",
            },  # fmt: skip
            "model": stats,
            "layers": len(result.layers),
            "wall_seconds": wall,
            "peak_gpu_allocated_gib": peak / 2**30 if peak is not None else None,
            "peak_gpu_reserved_gib": reserved / 2**30 if reserved is not None else None,
            "mean_cal_err_before": result.summary["mean_cal_err_before"],
            "mean_cal_err_after": result.summary["mean_cal_err_after"],
            "goals": {"wall_under_10_min": wall < 600, "gpu_under_12_gb": peak is not None and peak < 12e9},
        }
        md = (
            f"{'Tiny test shape' if args.tiny else 'Llama-3-8B shape'} ({stats['parameters'] / 1e6:,.1f} M parameters, "
            f"random bf16 weights), {samples} x {seq_len} tokens + {heldout} held out, rank {rank}, NF4, "
            f"{args.method}, device {device}:\n\n"
            f"| measurement | value | goal |\n|---|---:|---|\n"
            f"| wall time of run_init | {wall / 60:.2f} min | < 10 min |\n"
            + (f"| peak GPU memory (max_memory_allocated) | {peak / 1e9:.2f} GB ({peak / 2**30:.2f} GiB) | < 12 GB |\n"
               f"| peak GPU memory reserved by the allocator | {reserved / 1e9:.2f} GB | |\n" if cuda else
               "| peak GPU memory | n/a (no CUDA: CPU run) | < 12 GB |\n")
            + f"\n{len(result.layers)} layers; mean calibrated error {report['mean_cal_err_before']:.3e} -> "
            f"{report['mean_cal_err_after']:.3e} (random weights: only the cost is meaningful).\n"
        )  # fmt: skip
        print()
        print(md)
        if not args.no_write:
            path = write_results("gpu_llama8b" + ("-tiny" if args.tiny else ""), report, md)
            print(f"wrote {path} and .md")
    finally:
        if temp or not args.keep:
            shutil.rmtree(work if temp else work / "adapter", ignore_errors=True)
            if not temp and not args.keep:
                shutil.rmtree(work / "model", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
