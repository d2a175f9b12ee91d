"""The per-layer solve at scale: what share of an initialization's wall time it takes.

Issue 12 (part 2): on a 275 M-parameter random Llama (hidden 1024, 24 blocks, vocab
32000, float32 on disk), 16 x 256 calibration tokens, rank 16, `--method exact`, 2 CPU
cores, a user measured 26 minutes of wall time, 72 % of it in the per-layer solve. Goal:
the solve is at most 30 % of the wall time in that setting.

This script builds that model (random weights, seeded; saved once under `--workdir` with
the demo model's tokenizer, whose 4,000 ids all lie inside the 32,000-entry vocabulary),
writes the fine-tuning-domain calibration text (`_common.calibration_file`), and runs the
real CLI, `quailora init ... --output OUT`, in a child process. From `OUT/quailora.json`
it reports

- the solve seconds: the sum of the per-layer `seconds` (quantize, solve, metrics, LoRA
  split of each layer: everything `LayerSolver.solve` does);
- the engine's `wall_seconds` and the child process's wall time (which also counts the
  Python start-up, the adapter write and the self-check), and the solve's share of each;
- the solve seconds per kind of layer (q_proj, k_proj, ..., down_proj).

    python benchmarks/solve_profile.py                        # the issue's setting, 24 blocks
    python benchmarks/solve_profile.py --blocks 6 --tag proxy # a quicker proxy
    python benchmarks/solve_profile.py --method quailora      # the default method

Results: benchmarks/results/solve_profile[-<tag>].json (unless --no-write). Seconds are
noisy on a shared machine; compare shares and ratios measured on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import calibration_file, machine, write_results  # noqa: E402

SHAPE = dict(
    hidden_size=1024, intermediate_size=1536, num_hidden_layers=24, num_attention_heads=16,
    num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6,
)  # fmt: skip


def build_model(folder: Path, shape: dict) -> dict:
    """A random-weight Llama of `shape` in float32 (seed 0), saved with the demo tokenizer;
    reused when `folder` already holds the same shape."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from quailora_core.demo import ensure_demo_model

    marker = folder / "bench_shape.json"
    if marker.is_file() and json.loads(marker.read_text()) == shape:
        print(f"reusing the model in {folder}", flush=True)
        return json.loads((folder / "bench_model_stats.json").read_text())
    torch.manual_seed(0)
    config = LlamaConfig(**shape, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model = LlamaForCausalLM(config).float()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(ensure_demo_model()).save_pretrained(folder)
    stats = {"parameters": sum(p.numel() for p in model.parameters())}
    (folder / "bench_model_stats.json").write_text(json.dumps(stats))
    marker.write_text(json.dumps(shape))
    return stats


def kind_of(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Share of the wall time spent in the per-layer solve.")
    p.add_argument("--blocks", type=int, default=SHAPE["num_hidden_layers"], help="decoder blocks (default 24)")
    p.add_argument("--intermediate", type=int, default=SHAPE["intermediate_size"])
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--method", default="exact")
    p.add_argument("--device", default="cpu")
    p.add_argument("--verify", default="sample")
    p.add_argument("--workdir", default="/tmp/solve-bench", help="where the model and the adapter go")
    p.add_argument("--tag", default="", help="results file suffix: solve_profile-<tag>.json")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    shape = {**SHAPE, "num_hidden_layers": args.blocks, "intermediate_size": args.intermediate}
    work = Path(args.workdir)
    model_dir = work / f"llama-h{shape['hidden_size']}-i{shape['intermediate_size']}-b{args.blocks}"
    stats = build_model(model_dir, shape)
    print(f"{stats['parameters'] / 1e6:,.1f} M parameters", flush=True)
    text = calibration_file(work)
    out = work / f"adapter-{args.method}-b{args.blocks}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "quailora_core", "init", "--model", str(model_dir), "--calibration", str(text),
        "--samples", str(args.samples), "--seq-len", str(args.seq_len), "--rank", str(args.rank),
        "--method", args.method, "--device", args.device, "--verify", args.verify, "--output", str(out),
    ]  # fmt: skip
    print(" ".join(cmd), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    process_wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        return proc.returncode
    record = json.loads((out / "quailora.json").read_text(encoding="utf-8"))
    layers, summary = record["layers"], record["summary"]
    solve = sum(r["seconds"] for r in layers)
    wall = summary["wall_seconds"]
    per_kind: dict[str, dict[str, float]] = {}
    for r in layers:
        k = per_kind.setdefault(kind_of(r["name"]), {"layers": 0, "seconds": 0.0})
        k["layers"] += 1
        k["seconds"] += r["seconds"]
    report = {
        "benchmark": "solve_profile",
        "machine": machine(),
        "setting": {
            "shape": shape, "parameters": stats["parameters"], "samples": args.samples, "seq_len": args.seq_len,
            "rank": args.rank, "method": args.method, "device": args.device, "verify": args.verify,
            "quant": "nf4", "dtype": "float32",
        },  # fmt: skip
        "commit": _git_head(),
        "layers": len(layers),
        "solve_seconds": solve,
        "engine_wall_seconds": wall,
        "process_wall_seconds": process_wall,
        "solve_share_of_engine_wall": solve / wall,
        "solve_share_of_process_wall": solve / process_wall,
        "per_kind": per_kind,
        "mean_cal_err_before": summary["mean_cal_err_before"],
        "mean_cal_err_after": summary["mean_cal_err_after"],
        "verify_max_difference": summary.get("verify_max_difference"),
        "fallback_layers": record.get("fallback_layers", []),
    }
    print(f"\n{len(layers)} layers, {args.method}: solve {solve:.1f} s of {wall:.1f} s engine wall "
          f"({100 * solve / wall:.1f} %), process wall {process_wall:.1f} s ({100 * solve / process_wall:.1f} %)")  # fmt: skip
    for kind, k in per_kind.items():
        print(f"  {kind:<10} {k['layers']:>4} layers {k['seconds']:>8.1f} s ({k['seconds'] / k['layers']:.3f} s each)")
    print(f"mean calibrated error {report['mean_cal_err_before']:.4e} -> {report['mean_cal_err_after']:.4e}; "
          f"self-check difference {report['verify_max_difference']}")  # fmt: skip
    if not args.no_write:
        path = write_results("solve_profile" + (f"-{args.tag}" if args.tag else ""), report)
        print(f"wrote {path}")
    return 0


def _git_head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
