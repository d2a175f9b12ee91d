"""Initialization quality: how much of the quantization error each LoRA start removes.

For each quantizer (NF4, FP4, 8-bit) and rank (8, 16, 64), runs the engine (`run_init`)
with every method on the input source `fp` (qlora, loftq, quailora, exact) and quailora on
the `propagated` and `asymmetric` input sources, and records the means over all targeted
layers of:

- the relative calibrated error after initialization, on the calibration tokens and on
  the held-out tokens (`tr((E-L) H (E-L)^T) / tr(W H W^T)`, ALGORITHM.md);
- the relative uncalibrated error `||E - L||_F / ||W||_F`;
- the run's wall seconds;

and, per quantizer and rank, `max over layers of (quailora cal_err_after / exact
cal_err_after - 1)` (the goal: quailora within 0.1 % of the closed-form optimum on every
layer).

Model: the pretrained benchmark model (`pretrain_tiny.py --size small`), or the demo model
with a warning. Calibration text: the fine-tuning domain (`corpus.finetune_corpus()`, the
Python language reference), written to a temporary .txt file.

    python benchmarks/init_quality.py                     # the documented run
    python benchmarks/init_quality.py --quick             # a smoke test (seconds)

Writes benchmarks/results/init_quality.json, benchmarks/results/init_quality.md and
docs/init_quality.png (unless --no-write).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    DOCS,
    RESULTS,
    bench_model,
    calibration_file,
    line_plot,
    machine,
    make_config,
    write_results,
)

QUANTS = {
    "nf4": {"quantization__bits": 4, "quantization__quant_type": "nf4", "quantization__double_quant": True},
    "fp4": {"quantization__bits": 4, "quantization__quant_type": "fp4", "quantization__double_quant": True},
    "int8": {"quantization__bits": 8},
}
# (label, method, input source)
VARIANTS = [
    ("qlora", "qlora", "fp"),
    ("loftq", "loftq", "fp"),
    ("quailora", "quailora", "fp"),
    ("exact", "exact", "fp"),
    ("quailora-propagated", "quailora", "propagated"),
    ("quailora-asymmetric", "quailora", "asymmetric"),
]


def run_one(model, cal, samples, seq_len, heldout, quant, rank, method, inputs, als_iters, workdir):
    import torch

    from quailora_core.init.pipeline import run_init

    out = Path(workdir) / "adapter"
    cfg = make_config(
        model, cal, out, samples, seq_len, heldout,
        lora__rank=rank, lora__alpha=float(rank), init__method=method, init__inputs=inputs, **QUANTS[quant],
    )  # fmt: skip
    if als_iters:
        cfg.init.als_iters = als_iters
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        result = run_init(cfg)
    except Exception as exc:  # a failing variant is reported, not allowed to end the benchmark
        shutil.rmtree(out, ignore_errors=True)
        return {"quant": quant, "rank": rank, "method": method, "inputs": inputs,
                "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}  # fmt: skip
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    s = result.summary
    return {
        "quant": quant,
        "rank": rank,
        "method": method,
        "inputs": inputs,
        "mean_cal_err_before": s["mean_cal_err_before"],
        "mean_cal_err_after": s["mean_cal_err_after"],
        "mean_heldout_err_before": s["mean_heldout_err_before"],
        "mean_heldout_err_after": s["mean_heldout_err_after"],
        "mean_uncal_err_before": s["mean_uncal_err_before"],
        "mean_uncal_err_after": s["mean_uncal_err_after"],
        "solve_seconds": s["seconds"],
        "wall_seconds": wall,
        "fallback_layers": [r.name for r in result.layers if r.method != method],
        "layers": {r.name: r.cal_err_after for r in result.layers},
    }


def compare(quailora: dict, exact: dict) -> dict:
    """max / median over layers of quailora cal_err_after / exact cal_err_after - 1."""
    gaps = {n: quailora["layers"][n] / exact["layers"][n] - 1.0 for n in exact["layers"] if exact["layers"][n] > 0}
    worst = max(gaps, key=gaps.get)
    ordered = sorted(gaps.values())
    return {
        "max_rel_gap": gaps[worst],
        "worst_layer": worst,
        "median_rel_gap": ordered[len(ordered) // 2],
        "min_rel_gap": ordered[0],
        "layers": len(gaps),
        "within_0.1pct": gaps[worst] <= 1e-3,
    }


def fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def markdown(report: dict) -> str:
    st = report["setting"]
    lines = [
        f"Model `{st['model_label']}` ({st['targets']} layers), {st['samples']} x {st['seq_len']} calibration tokens "
        f"+ {st['heldout']} x {st['seq_len']} held out, text: {st['calibration']}; alpha = rank, damping 0.01, "
        f"at most {st['als_iters']} ALS iterations (the engine stops early on convergence); CPU float64 solvers.",
        "",
        "| quant | rank | method | inputs | cal err | held-out err | uncal err | seconds |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r['quant']} | {r['rank']} | {r['method']} | {r['inputs']} | failed: {r['error'][:80]} "
                         "| | | |")  # fmt: skip
            continue
        lines.append(
            f"| {r['quant']} | {r['rank']} | {r['method']} | {r['inputs']} | {fmt(r['mean_cal_err_after'])} | "
            f"{fmt(r['mean_heldout_err_after'])} | {fmt(r['mean_uncal_err_after'])} | {r['wall_seconds']:.1f} |"
        )
    lines += [
        "",
        "quailora (ALS) against the closed-form optimum, per layer (`fp` inputs): "
        "`quailora cal_err_after / exact cal_err_after - 1`",
        "",
        "| quant | rank | max over layers | median | worst layer | within 0.1 % |",
        "|---|---:|---:|---:|---|---|",
    ]
    for c in report["quailora_vs_exact"]:
        lines.append(
            f"| {c['quant']} | {c['rank']} | {c['max_rel_gap']:.2e} | {c['median_rel_gap']:.2e} | "
            f"`{c['worst_layer']}` | {'yes' if c['within_0.1pct'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    runs = report["runs"]
    panels = []
    for quant in report["setting"]["quants"]:
        series = []
        for label, method, inputs in VARIANTS:
            pts = sorted((r["rank"], r["mean_cal_err_after"]) for r in runs
                         if "error" not in r and r["quant"] == quant and r["method"] == method and r["inputs"] == inputs)  # fmt: skip
            if pts:
                series.append((label, [p[0] for p in pts], [p[1] for p in pts]))
        panels.append({
            "title": {"nf4": "NF4", "fp4": "FP4", "int8": "8-bit (LLM.int8)"}[quant],
            "x_label": "LoRA rank", "y_label": "mean relative calibrated error",
            "log_x": True, "log_y": True, "series": series, "x_ticks": report["setting"]["ranks"],
        })  # fmt: skip
    st = report["setting"]
    title = (f"Mean calibrated error after initialization ({st['model_label']}, {st['samples']}x{st['seq_len']} "
             f"calibration tokens; lower is better)")  # fmt: skip
    return line_plot(path, panels, title)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Initialization quality of qlora / loftq / quailora / exact.")
    p.add_argument("--size", default="small", help="benchmark model size (pretrain_tiny.py --size)")
    p.add_argument("--model", default=None, help="a model folder (overrides --size)")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--heldout", type=int, default=16)
    p.add_argument("--ranks", default="8,16,64")
    p.add_argument("--source-ranks", default="16",
                   help="ranks at which the propagated / asymmetric sources run (they cost 2-4x more); 'all' = --ranks")
    p.add_argument("--fresh", action="store_true", help="ignore the checkpoint of an interrupted run")
    p.add_argument("--quants", default="nf4,fp4,int8")
    p.add_argument("--als-iters", type=int, default=0, help="ALS iteration cap (0: the engine's default)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke test: rank 8, NF4, 8 x 64 tokens, no files written")
    p.add_argument("--no-write", action="store_true", help="print only; write no result files")
    p.add_argument("--replot", action="store_true", help="only redraw docs/init_quality.png from the saved JSON")
    args = p.parse_args(argv)

    if args.replot:
        report = json.loads((RESULTS / "init_quality.json").read_text(encoding="utf-8"))
        print(f"wrote {plot(report, DOCS / 'init_quality.png')}")
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.samples, args.seq_len, args.heldout, args.ranks, args.quants = 8, 64, 4, "8", "nf4"
        args.no_write = True
    ranks = [int(x) for x in args.ranks.split(",")]
    quants = [q.strip() for q in args.quants.split(",")]
    model, label = bench_model(args.size, args.model)
    work = Path(tempfile.mkdtemp(prefix="quailora-bench-quality-"))
    try:
        cal = calibration_file(work)
        from quailora_core.config import InitSettings
        from quailora_core.init.pipeline import preflight

        args.als_iters = args.als_iters or InitSettings().als_iters

        n_targets = len(preflight(make_config(model, cal, work / "x", 1, 8, 0)).target_names)
        print(
            f"model {label} ({model}), {n_targets} target layers; calibration {args.samples} x {args.seq_len} "
            f"tokens + {args.heldout} held out, from corpus.finetune_corpus() ({cal.stat().st_size:,} bytes); "
            f"ranks {ranks}, quantizers {quants}",
            flush=True,
        )
        source_ranks = ranks if args.source_ranks == "all" else [int(x) for x in args.source_ranks.split(",")]
        # Checkpoint: an interrupted run resumes where it stopped (same setting only).
        signature = [model, args.samples, args.seq_len, args.heldout, args.als_iters]
        checkpoint = Path(tempfile.gettempdir()) / f"quailora-init-quality-{label}.ckpt.json"
        done: dict = {}
        if checkpoint.exists() and not args.fresh and not args.no_write:
            state = json.loads(checkpoint.read_text(encoding="utf-8"))
            if state.get("signature") == signature:
                done = state["done"]
                print(f"resuming: {len(done)} runs from {checkpoint}", flush=True)
        runs, comparisons = [], []
        t_all = time.perf_counter()
        for quant in quants:
            for rank in ranks:
                by = {}
                for label_v, method, inputs in VARIANTS:
                    if inputs != "fp" and rank not in source_ranks:
                        continue
                    key = f"{quant}/{rank}/{method}/{inputs}"
                    if key in done:
                        r = done[key]
                        print(f"{quant:4} r={rank:<3} {label_v:20} (from the checkpoint)", flush=True)
                        by[label_v] = r
                        runs.append(r)
                        continue
                    if method == "qlora" and rank != ranks[0]:
                        # B = 0 does not depend on the rank: reuse the first rank's run
                        r = dict(next(x for x in runs if x["quant"] == quant and x["method"] == "qlora"))
                        r.update(rank=rank, reused_from_rank=ranks[0])
                        by[label_v] = r
                        runs.append(r)
                        continue
                    r = run_one(model, cal, args.samples, args.seq_len, args.heldout, quant, rank, method, inputs,
                                args.als_iters, work)  # fmt: skip
                    by[label_v] = r
                    runs.append(r)
                    done[key] = r
                    if not args.no_write:
                        checkpoint.write_text(json.dumps({"signature": signature, "done": done}), encoding="utf-8")
                    if "error" in r:
                        print(f"{quant:4} r={rank:<3} {label_v:20} FAILED: {r['error']}", flush=True)
                        continue
                    print(
                        f"{quant:4} r={rank:<3} {label_v:20} cal {r['mean_cal_err_before']:.4e} -> "
                        f"{r['mean_cal_err_after']:.4e}  held-out {r['mean_heldout_err_after']:.4e}  "
                        f"uncal {r['mean_uncal_err_after']:.4f}  {r['wall_seconds']:.1f} s"
                        + (f"  FALLBACKS {len(r['fallback_layers'])}" if r["fallback_layers"] else ""),
                        flush=True,
                    )
                if "error" in by["quailora"] or "error" in by["exact"]:
                    continue
                c = {"quant": quant, "rank": rank, **compare(by["quailora"], by["exact"])}
                comparisons.append(c)
                print(f"     quailora vs exact: max gap {c['max_rel_gap']:.2e} ({c['worst_layer']}), "
                      f"median {c['median_rel_gap']:.2e}", flush=True)  # fmt: skip
        report = {
            "benchmark": "init_quality",
            "machine": machine(),
            "setting": {
                "model": model, "model_label": label, "targets": n_targets, "samples": args.samples,
                "seq_len": args.seq_len, "heldout": args.heldout, "ranks": ranks, "quants": quants,
                "als_iters": args.als_iters, "alpha": "= rank", "damping": 0.01, "source_ranks": source_ranks,
                "calibration": "corpus.finetune_corpus() (Python language reference, pydoc_data.topics)",
                "total_seconds": round(time.perf_counter() - t_all, 1),
            },  # fmt: skip
            "runs": [{k: v for k, v in r.items() if k != "layers"} for r in runs],
            "quailora_vs_exact": comparisons,
        }
        md = markdown(report)
        print()
        print(md)
        if not args.no_write:
            write_results("init_quality", report, md)
            png = plot(report, DOCS / "init_quality.png")
            print(f"wrote {RESULTS / 'init_quality.json'}, {RESULTS / 'init_quality.md'}, {png}")
            checkpoint.unlink(missing_ok=True)
        print(f"total {time.perf_counter() - t_all:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
