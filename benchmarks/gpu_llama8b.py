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

`--blocks N` builds only the first N of the 32 decoder blocks (same hidden, intermediate and
vocabulary sizes, so the embedding, the LM head and every block are full size) and
extrapolates to the whole model from what it measures: the seconds of each block (the
time between the last layer results of consecutive blocks), the peak GPU memory of each
phase (before the blocks, each block, export and self-check; `torch.cuda.max_memory_allocated`
reset between them) and the wall time outside the blocks. The estimate for 32 blocks is

    time   = (load + capture + export + self-check) x (parameters of 32 blocks / of N blocks)
             + first block + 31 x the mean of blocks 2..N
    memory = the largest of: the peak before the blocks; the largest block peak (plus its
             growth per block, if any, times 32 - N); the export/self-check peak plus the
             4-bit bytes of 32 - N more blocks (the self-check loads the whole quantized
             base on the GPU), computed from the block's shapes and the quantizer's settings

(conservative: loading the tokenizer and packing the text do not grow with the model).
`--full-blocks M` sets the block count extrapolated to (default: the shape's, 32).

    python benchmarks/gpu_llama8b.py                 # needs CUDA; ~16 GB of disk for the model
    python benchmarks/gpu_llama8b.py --blocks 4      # 4 blocks (~3.6 GiB bf16), extrapolated to 32
    python benchmarks/gpu_llama8b.py --tiny          # the same code path on a tiny shape (CPU is fine)
    python benchmarks/gpu_llama8b.py --tiny --blocks 2 --full-blocks 8 --no-write   # the extrapolation, on CPU
    python benchmarks/gpu_llama8b.py --workdir /scratch/q8b --keep   # reuse the saved model next time

Without CUDA (and without --tiny) it stops at once with exit code 2 and a clear message.
Results: benchmarks/results/gpu_llama8b[-tiny][-Nblocks].json and .md (unless --no-write);
`--json PATH` also writes the JSON report to PATH (what benchmarks/gpu_check.sh reads).
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


def block_linear_numels(shape: dict) -> list[int]:
    """Weights of the seven Linear layers of one Llama block of `shape` (no biases)."""
    h, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = shape["num_key_value_heads"] * (h // shape["num_attention_heads"])
    return [h * h, h * kv, h * kv, h * h, h * inter, h * inter, inter * h]


def llama_parameters(shape: dict, blocks: int) -> int:
    """Parameters of an untied Llama of `shape` with `blocks` decoder blocks."""
    h = shape["hidden_size"]
    return 2 * shape["vocab_size"] * h + h + blocks * (sum(block_linear_numels(shape)) + 2 * h)


def quantized_block_bytes(shape: dict, bits: int = 4, double_quant: bool = True, blocksize: int = 64) -> float:
    """GPU bytes of one block of the bitsandbytes-quantized base: packed weights plus their
    quantization constants (float32 absmax per block of weights; with double quantization
    one byte per block plus a float32 per 256 blocks), the two RMSNorms in bfloat16.
    8 bit: one byte per weight plus a float32 scale per output row (counted as 4 / 64 per weight)."""
    weights = sum(block_linear_numels(shape))
    if bits == 4:
        per_weight = 0.5 + (1 / blocksize + 4 / (blocksize * 256) if double_quant else 4 / blocksize)
    else:
        per_weight = 1 + 4 / 64
    return weights * per_weight + 2 * shape["hidden_size"] * 2


def extrapolate(timeline: dict, built_blocks: int, full_blocks: int, param_ratio: float,
                q_block_bytes: float) -> dict:
    """The whole-model estimate from a run on `built_blocks` blocks (module docstring).

    `timeline`: before_seconds, block_seconds (one per block), tail_seconds, and, on CUDA,
    before_peak, block_peaks (one per block), tail_peak in bytes (None on CPU)."""
    blocks = list(timeline["block_seconds"])
    if len(blocks) != built_blocks or built_blocks < 1:
        raise ValueError(f"{len(blocks)} block timings for {built_blocks} blocks")
    steady = sum(blocks[1:]) / (len(blocks) - 1) if len(blocks) > 1 else blocks[0]
    fixed = timeline["before_seconds"] + timeline["tail_seconds"]
    wall = fixed * param_ratio + blocks[0] + (full_blocks - 1) * steady
    out = {
        "full_blocks": full_blocks,
        "built_blocks": built_blocks,
        "parameter_ratio": param_ratio,
        "seconds_per_block": steady,
        "first_block_seconds": blocks[0],
        "outside_blocks_seconds": fixed,
        "wall_seconds": wall,
        "gpu_peak_bytes": None,
        "gpu_block_peak_growth_bytes": None,
    }
    peaks = timeline.get("block_peaks")
    if peaks is not None:
        growth = 0.0
        if len(peaks) > 2:  # least-squares slope over blocks 2..N (block 1 includes warm-up)
            xs, ys = list(range(1, len(peaks))), peaks[1:]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            growth = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
                         / sum((x - mx) ** 2 for x in xs))  # fmt: skip
        extra = full_blocks - built_blocks
        out["gpu_block_peak_growth_bytes"] = growth
        out["gpu_quantized_block_bytes"] = q_block_bytes
        out["gpu_peak_bytes"] = max(
            timeline["before_peak"], max(peaks) + growth * extra, timeline["tail_peak"] + q_block_bytes * extra
        )
    return out


class Timeline:
    """Event callback that times the engine's phases and, on CUDA, their peak GPU memory:
    before the blocks (load, tokenize, capture), each block, after them (export, self-check)."""

    def __init__(self, cuda: bool, n_blocks: int, log) -> None:
        self.cuda, self.n_blocks, self.log = cuda, n_blocks, log
        self.t0 = time.perf_counter()
        self.t_calibrate: float | None = None
        self.t_export: float | None = None
        self.block_end: dict[int, float] = {}
        self.peaks: dict[str, int] = {}
        self.current = "before"

    def _close_segment(self, name: str) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peaks[self.current] = max(self.peaks.get(self.current, 0), torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        self.current = name

    def __call__(self, e) -> None:
        from quailora_core.events import LayerResult, Stage

        now = time.perf_counter()
        if isinstance(e, Stage) and e.name == "calibrate" and self.t_calibrate is None:
            self.t_calibrate = now
            self._close_segment("block0")
        elif isinstance(e, Stage) and e.name == "export" and self.t_export is None:
            self.t_export = now
            self._close_segment("tail")
        elif isinstance(e, LayerResult):
            if f"block{e.block}" != self.current and self.t_export is None:
                self._close_segment(f"block{e.block}")
            self.block_end[e.block] = now
        self.log(e)

    def finish(self) -> dict:
        end = time.perf_counter()
        self._close_segment("done")
        if self.t_calibrate is None or self.t_export is None:
            raise RuntimeError("the engine emitted no calibrate / export stage: cannot time its blocks")
        ends = [self.block_end[b] for b in range(self.n_blocks - 1)] + [self.t_export]
        starts = [self.t_calibrate] + ends[:-1]
        out = {
            "before_seconds": self.t_calibrate - self.t0,
            "block_seconds": [b - a for a, b in zip(starts, ends, strict=True)],
            "tail_seconds": end - self.t_export,
            "before_peak": None, "block_peaks": None, "tail_peak": None,
        }  # fmt: skip
        if self.cuda:
            out["before_peak"] = self.peaks.get("before", 0)
            out["block_peaks"] = [self.peaks.get(f"block{b}", 0) for b in range(self.n_blocks)]
            out["tail_peak"] = self.peaks.get("tail", 0)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Engine wall time and peak GPU memory at Llama-3-8B scale.")
    p.add_argument("--tiny", action="store_true", help="tiny shape, 8 x 128 tokens, rank 8 (runs on CPU too)")
    p.add_argument("--blocks", type=int, default=None,
                   help="build only the first N decoder blocks and extrapolate to --full-blocks")  # fmt: skip
    p.add_argument("--full-blocks", type=int, default=None,
                   help="blocks of the whole model the estimate is for (default: the shape's, 32; tiny: 2)")  # fmt: skip
    p.add_argument("--samples", type=int, default=None, help="default 128 (tiny: 8)")
    p.add_argument("--seq-len", type=int, default=None, help="default 2048 (tiny: 128)")
    p.add_argument("--heldout", type=int, default=None, help="held-out sequences (default 16; tiny: 2)")
    p.add_argument("--rank", type=int, default=None, help="default 64 (tiny: 8)")
    p.add_argument("--method", default="quailora")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workdir", default=None, help="where the model is saved (default: a temp folder, deleted)")
    p.add_argument("--keep", action="store_true", help="keep --workdir's model for the next run")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the JSON report to PATH")
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
    full_shape = TINY if args.tiny else LLAMA3_8B
    full_blocks = args.full_blocks or full_shape["num_hidden_layers"]
    built = args.blocks or full_blocks
    if not 1 <= built <= full_blocks:
        print(f"gpu_llama8b.py: --blocks must be between 1 and {full_blocks} (got {built})", file=sys.stderr)
        return 2
    shape = {**full_shape, "num_hidden_layers": built}
    partial = args.blocks is not None
    stem = "gpu_llama8b" + ("-tiny" if args.tiny else "") + (f"-{built}blocks" if partial else "")
    samples = args.samples or (8 if args.tiny else 128)
    seq_len = args.seq_len or (128 if args.tiny else 2048)
    heldout = args.heldout if args.heldout is not None else (2 if args.tiny else 16)
    rank = args.rank or (8 if args.tiny else 64)
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16
    temp = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="quailora-llama8b-"))
    work.mkdir(parents=True, exist_ok=True)
    label = "tiny" if args.tiny else "Llama-3-8B"
    try:
        print(f"building a random {label}-shaped model ({built} of {full_blocks} blocks) on {device} in bf16 ...",
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
        n_layers = 7 * built
        last = {"t": time.perf_counter()}

        def log(e):
            if isinstance(e, Log):
                print(f"[{e.level}] {e.message}", flush=True)
            elif isinstance(e, LayerResult) and (e.index % 7 == 6 or time.perf_counter() - last["t"] > 30):
                last["t"] = time.perf_counter()
                print(f"  layer {e.index + 1}/{n_layers} {e.name}: {e.cal_err_before:.3e} -> {e.cal_err_after:.3e}"
                      f" ({e.seconds:.2f} s)", flush=True)  # fmt: skip

        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        peak_overall = 0
        t0 = time.perf_counter()
        timeline = Timeline(cuda, built, log)
        result = run_init(cfg, timeline)
        phases = timeline.finish()
        wall = time.perf_counter() - t0
        if cuda:
            peak_overall = max([phases["before_peak"], phases["tail_peak"], *phases["block_peaks"]])
        peak = peak_overall if cuda else None
        reserved = torch.cuda.max_memory_reserved() if cuda else None
        q = cfg.quantization
        estimate = extrapolate(
            phases, built, full_blocks, llama_parameters(full_shape, full_blocks) / llama_parameters(shape, built),
            quantized_block_bytes(shape, q.bits, q.double_quant, q.blocksize),
        )  # fmt: skip
        full_wall, full_peak = estimate["wall_seconds"], estimate["gpu_peak_bytes"]
        report = {
            "benchmark": stem,
            "machine": machine(),
            "setting": {
                "shape": shape, "full_blocks": full_blocks, "samples": samples, "seq_len": seq_len,
                "heldout": heldout, "rank": rank, "method": args.method, "quant": "nf4",
                "batch_size": args.batch_size, "device": str(device), "dtype": "bfloat16",
            },  # fmt: skip
            "model": stats,
            "layers": len(result.layers),
            "wall_seconds": wall,
            "phases": phases,
            "seconds_per_block": estimate["seconds_per_block"],
            "peak_gpu_allocated_gib": peak / 2**30 if peak is not None else None,
            "peak_gpu_reserved_gib": reserved / 2**30 if reserved is not None else None,
            "full_model_estimate": estimate,
            "mean_cal_err_before": result.summary["mean_cal_err_before"],
            "mean_cal_err_after": result.summary["mean_cal_err_after"],
            "verify_max_difference": result.summary.get("verify_max_difference"),
            "goals": {
                "basis": "extrapolated to the whole model" if partial else "measured",
                "wall_under_10_min": full_wall < 600,
                "gpu_under_12_gb": full_peak is not None and full_peak < 12e9,
            },
        }
        gb = (lambda b: f"{b / 1e9:.2f} GB ({b / 2**30:.2f} GiB)")  # noqa: E731
        md = (
            f"{'Tiny test shape' if args.tiny else 'Llama-3-8B shape'}, {built} of {full_blocks} blocks "
            f"({stats['parameters'] / 1e6:,.1f} M parameters, random bf16 weights), {samples} x {seq_len} tokens + "
            f"{heldout} held out, rank {rank}, NF4, {args.method}, device {device}:\n\n"
            f"| measurement | value | goal |\n|---|---:|---|\n"
            f"| wall time of run_init ({built} blocks) | {wall / 60:.2f} min | |\n"
            f"| seconds per block (mean of blocks 2..{built}; first block {estimate['first_block_seconds']:.1f} s) "
            f"| {estimate['seconds_per_block']:.2f} s | |\n"
            + (f"| peak GPU memory, {built} blocks (max_memory_allocated) | {gb(peak)} | |\n"
               f"| peak GPU memory reserved by the allocator | {reserved / 1e9:.2f} GB | |\n" if cuda else
               "| peak GPU memory | n/a (no CUDA: CPU run) | |\n")
            + f"| **whole model ({full_blocks} blocks): wall time{' (estimate)' if partial else ''}** | "
            f"{full_wall / 60:.2f} min | < 10 min |\n"
            + (f"| **whole model: peak GPU memory{' (estimate)' if partial else ''}** | {gb(full_peak)} | < 12 GB |\n"
               if cuda else "| whole model: peak GPU memory | n/a (no CUDA) | < 12 GB |\n")
            + f"\n{len(result.layers)} layers; mean calibrated error {report['mean_cal_err_before']:.3e} -> "
            f"{report['mean_cal_err_after']:.3e} (random weights: only the cost is meaningful).\n"
        )  # fmt: skip
        if partial:
            md += (f"\nEstimate: outside the blocks {estimate['outside_blocks_seconds']:.1f} s x "
                   f"{estimate['parameter_ratio']:.2f} (parameter ratio) + first block + {full_blocks - 1} x "
                   f"{estimate['seconds_per_block']:.2f} s; memory as in the script's docstring.\n")  # fmt: skip
        print()
        print(md)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        if not args.no_write:
            path = write_results(stem, report, md)
            print(f"wrote {path} and .md")
    finally:
        if temp or not args.keep:
            shutil.rmtree(work if temp else work / "adapter", ignore_errors=True)
            if not temp and not args.keep:
                shutil.rmtree(work / "model", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
