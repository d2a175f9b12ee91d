"""The paper's table in miniature: how much of the 4-bit -> 8-bit gap each initialization recovers.

QuAILoRA (arXiv 2410.14713) reports that, after fine-tuning, a 4-bit QuAILoRA adapter
recovers on average 75 % of the validation-perplexity gap between 4-bit QLoRA and 8-bit
QLoRA. This script runs the same experiment on the benchmark models `broad-xs` and
`broad-s` (`pretrain_tiny.py`, pretrained on the broad docstring corpus; the stdlib-only
`small` / `medium` models turned out to have no 4-bit -> 8-bit gap) or any local HF causal LM:

* fine-tuning task: `corpus.finetune_corpus()` (the Python language reference; a different
  domain), split by document with a fixed seed into train / validation. Calibration text is
  drawn from the TRAIN split only; the validation split is used for nothing but evaluation;
* arms (same seeds, data, steps, hyperparameters): a LoRA on the unquantized base
  ("16-bit" reference: float32 on CPU, bf16 on CUDA), 8-bit QLoRA (B = 0), 4-bit QLoRA
  (B = 0), 4-bit LoftQ, 4-bit QuAILoRA, 4-bit exact closed form, QuAILoRA with the
  `propagated` and `asymmetric` input sources, and a control: QuAILoRA calibrated on the
  base model's own pretraining text ("off-domain") instead of the fine-tuning train split;
* every arm is initialized with `engine.run_init` and fine-tuned with `train.run_train`
  (the product's own code paths). The 16-bit arm trains the 4-bit QLoRA adapter (B = 0,
  same A) on the unquantized base: the script swaps `train.load_quantized_base` for an
  unquantized load for that arm only (nothing in quailora_core is changed);
* per arm: validation perplexity at initialization (the Trainer's step-0 evaluation) and
  after fine-tuning, mean and spread over seeds, the validation curve, and the share of the
  4-bit -> 8-bit gap recovered, (ppl_4bit_qlora - ppl_arm) / (ppl_4bit_qlora - ppl_8bit_qlora);
* a rank sweep (8, 16, 64) for QLoRA / QuAILoRA (with the 8-bit reference at each rank).

Calibrated initializations (loftq, quailora, exact, ...) are computed once per model and
rank (calibration seed 0); the B = 0 adapters are made per seed (their random A depends on
the seed). The training seed changes the data order. Seed noise is reported.

    python benchmarks/paper_table.py                   # the documented run (broad-xs + broad-s, ~23 min)
    python benchmarks/paper_table.py --quick           # smoke test, a couple of minutes
    python benchmarks/paper_table.py --model /path/to/hf-model --device cuda --steps 500
    python benchmarks/paper_table.py --replot          # redraw tables and plots from the JSON

Writes benchmarks/results/paper_table.{json,md}, docs/paper_table_curves.png and
docs/paper_table_ranks.png (unless --no-write).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOCS, RESULTS, bench_model, line_plot, machine, make_config  # noqa: E402

# label -> (bits, method, input source); "fp" is the unquantized reference arm
ARMS = {
    "16-bit LoRA": (16, "qlora", "fp"),
    "8-bit QLoRA": (8, "qlora", "fp"),
    "4-bit QLoRA": (4, "qlora", "fp"),
    "4-bit LoftQ": (4, "loftq", "fp"),
    "4-bit QuAILoRA": (4, "quailora", "fp"),
    "4-bit exact": (4, "exact", "fp"),
    "4-bit QuAILoRA propagated": (4, "quailora", "propagated"),
    "4-bit QuAILoRA asymmetric": (4, "quailora", "asymmetric"),
    "4-bit QuAILoRA off-domain": (4, "quailora", "fp"),
}
# Control arm: calibrated on the base model's own PRETRAINING text instead of the fine-tuning
# train split, to tell how much of QuAILoRA's result comes from calibrating on the new domain
# and how much from repairing the quantization error itself.
OFF_DOMAIN = {"4-bit QuAILoRA off-domain"}
SWEEP_ARMS = ["8-bit QLoRA", "4-bit QLoRA", "4-bit QuAILoRA"]
Q4, Q8 = "4-bit QLoRA", "8-bit QLoRA"


# ---------------------------------------------------------------------------- data
def split_corpus(folder: Path, val_fraction: float, seed: int = 1234) -> dict:
    """finetune_corpus() split by document (fixed seed) into train.txt / validation.txt."""
    from quailora_core.sources.corpus import finetune_corpus

    docs = finetune_corpus()
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_fraction * len(docs)))
    val, train = sorted(order[:n_val]), sorted(order[n_val:])
    paths = {}
    for name, idx in (("train", train), ("validation", val)):
        paths[name] = folder / f"{name}.txt"
        paths[name].write_text("\n\n".join(docs[i] for i in idx) + "\n", encoding="utf-8")
    return {"train": str(paths["train"]), "validation": str(paths["validation"]),
            "documents": len(docs), "train_documents": len(train), "validation_documents": len(val),
            "split_seed": seed}  # fmt: skip


def pretraining_calibration_file(model: str, folder: Path, max_chars: int = 400_000) -> str:
    """The start of the base model's pretraining text as a .txt file (the off-domain control's
    calibration): the corpus its bench_model.json names, else the stdlib docstrings."""
    from pretrain_tiny import model_pretraining_text

    corpus, docs = model_pretraining_text(model, max_chars)
    path = folder / f"pretraining-{corpus}.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------- one arm
def init_adapter(args, model: str, cal: str, out: Path, arm: str, rank: int, seed: int) -> float:
    """run_init for `arm` at `rank` into `out`; returns wall seconds."""
    import torch

    from quailora_core.init.pipeline import run_init

    bits, method, inputs = ARMS[arm]
    # B = 0 adapters need no calibration statistics: a token amount of text keeps them cheap
    samples, seq = (2, 32) if method == "qlora" else (args.cal_samples, args.cal_seq_len)
    quant = {"quantization__bits": 8} if bits == 8 else {
        "quantization__bits": 4, "quantization__quant_type": args.quant_type, "quantization__double_quant": True}
    cfg = make_config(model, cal, out, samples, seq, 0, lora__rank=rank, lora__alpha=float(rank),
                      init__method=method, init__inputs=inputs, calibration__seed=0, **quant)  # fmt: skip
    cfg.init.device = args.device
    cfg.model.dtype = args.dtype
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    run_init(cfg)
    return time.perf_counter() - t0


def unquantized_loader(dtype_name: str):
    """Stand-in for train.load_quantized_base that loads the base WITHOUT quantization."""

    def load(model_path, record, device=None, trust_remote_code=False):
        import torch
        from transformers import AutoModelForCausalLM

        recorded = record.quantization.load_dtype
        dtype = getattr(torch, recorded if dtype_name == "auto" else dtype_name)
        kwargs = {"device_map": {"": device}} if device is not None else {}
        return AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)

    return load


def train_arm(args, model: str, data: dict, adapter: Path, out: Path, arm: str, seed: int) -> dict:
    import quailora_core.train.trainer as train_mod
    from quailora_core.adapter.record import AdapterRecord
    from quailora_core.config import RunConfig

    cfg = RunConfig()
    cfg.model.path = model
    t = cfg.train
    t.data, t.validation_data, t.data_format = data["train"], data["validation"], "text"
    t.max_steps, t.learning_rate, t.batch_size, t.seq_len = args.steps, args.lr, args.batch, args.seq_len
    t.eval_interval, t.save_interval, t.log_interval = args.eval_every, args.steps, max(1, args.steps // 10)
    t.warmup_steps, t.seed = args.warmup, seed
    t.adapter, t.output = str(adapter), str(out)
    cfg.quantization = AdapterRecord.load(adapter).quantization.config()
    original = train_mod.load_quantized_base
    if ARMS[arm][0] == 16:
        train_mod.load_quantized_base = unquantized_loader(args.dtype)
    try:
        result = train_mod.run_train(cfg)
    finally:
        train_mod.load_quantized_base = original
    m = result.metrics
    curve = [(h["step"], math.exp(h["eval_loss"])) for h in m["log_history"] if "eval_loss" in h]
    return {"ppl_init": m["first_perplexity"], "ppl_final": m["perplexity"], "curve": curve,
            "train_loss_mean": m["train_loss_mean"], "seconds": m["wall_seconds"], "device": m["device"],
            "precision": m["precision"], "data": m["data"]}  # fmt: skip


# ---------------------------------------------------------------------------- the run
def run_model(args, model: str, label: str, data: dict, work: Path, ranks: list[int], report: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    runs = report["runs"]
    done = {(r["model"], r["arm"], r["rank"], r["seed"]) for r in runs}
    for rank in ranks:
        arms = list(ARMS) if rank == args.rank else SWEEP_ARMS
        arms = [a for a in arms if a in args.arms or a in (Q4, Q8)]
        calibrated: dict[str, tuple[Path, float]] = {}
        for seed in range(args.seeds):
            for arm in arms:
                if (label, arm, rank, seed) in done:
                    continue
                bits, method, _ = ARMS[arm]
                t0 = time.perf_counter()
                if arm == "16-bit LoRA":  # the 4-bit QLoRA adapter of this seed (B = 0, same A)
                    adapter, init_s = work / f"init-{rank}-{seed}-{Q4}", 0.0
                    if not adapter.exists():
                        init_s = init_adapter(args, model, data["train"], adapter, Q4, rank, seed)
                elif method == "qlora":
                    adapter = work / f"init-{rank}-{seed}-{arm}"
                    init_s = init_adapter(args, model, data["train"], adapter, arm, rank, seed)
                else:
                    if arm not in calibrated:
                        adapter = work / f"init-{rank}-{arm}"
                        cal = pretraining_calibration_file(model, work) if arm in OFF_DOMAIN else data["train"]
                        calibrated[arm] = (adapter, init_adapter(args, model, cal, adapter, arm, rank, 0))
                    adapter, init_s = calibrated[arm]
                out = work / f"train-{rank}-{seed}-{arm}"
                res = train_arm(args, model, data, adapter, out, arm, seed)
                shutil.rmtree(out, ignore_errors=True)
                row = {"model": label, "arm": arm, "rank": rank, "seed": seed, "bits": bits, "method": method,
                       "inputs": ARMS[arm][2], "calibration": "pretraining" if arm in OFF_DOMAIN else "train split",
                       "init_seconds": init_s, **res,
                       "arm_seconds": time.perf_counter() - t0}  # fmt: skip
                runs.append(row)
                print(f"[{time.perf_counter() - report['_t0']:7.0f}s] {label} r={rank} seed={seed} {arm:27s} "
                      f"ppl {res['ppl_init']:8.3f} -> {res['ppl_final']:8.3f}  "
                      f"(init {init_s:5.1f}s, train {res['seconds']:5.1f}s)", flush=True)  # fmt: skip
                if not args.no_write:
                    save(report)
            for f in work.glob(f"init-{rank}-{seed}-*"):
                if "QLoRA" in f.name and seed + 1 < args.seeds:
                    shutil.rmtree(f, ignore_errors=True)


# ---------------------------------------------------------------------------- statistics
def _stats(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs)}  # fmt: skip


def _share(q4: float, q8: float, x: float) -> float:
    gap = q4 - q8
    return (q4 - x) / gap if math.isfinite(gap) and abs(gap) > 1e-12 else float("nan")


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (model, rank, arm): ppl stats at init / after, and the gap share, both from
    the seed means and per seed (paired by seed with that seed's 4-bit and 8-bit QLoRA)."""
    by = {}
    for r in runs:
        by.setdefault((r["model"], r["rank"], r["arm"]), {})[r["seed"]] = r
    rows = []
    for (model, rank, arm), seeds in by.items():
        q4, q8 = by.get((model, rank, Q4), {}), by.get((model, rank, Q8), {})
        row = {"model": model, "rank": rank, "arm": arm, "seeds": sorted(seeds)}
        for when in ("init", "final"):
            key = f"ppl_{when}"
            row[key] = _stats([s[key] for s in seeds.values()])
            m4, m8 = _stats([s[key] for s in q4.values()])["mean"], _stats([s[key] for s in q8.values()])["mean"]
            row[f"gap_{when}"] = m4 - m8
            row[f"share_{when}"] = _share(m4, m8, row[key]["mean"])
            paired = [_share(q4[s][key], q8[s][key], seeds[s][key]) for s in seeds if s in q4 and s in q8]
            row[f"share_{when}_per_seed"] = _stats(paired)
            # is the 4->8 gap larger than the seed noise? gap / pooled std of the two arms
            sd = math.hypot(_stats([s[key] for s in q4.values()])["std"], _stats([s[key] for s in q8.values()])["std"])
            row[f"gap_over_noise_{when}"] = (m4 - m8) / sd if sd > 0 else float("inf")
            row[f"noise_{when}"] = sd
            row[f"delta_{when}_vs_q4"] = _stats([seeds[s][key] - q4[s][key] for s in seeds if s in q4])
            row[f"gap_{when}_per_seed"] = _stats([q4[s][key] - q8[s][key] for s in q4 if s in q8])
        rows.append(row)
    order = {a: i for i, a in enumerate(ARMS)}
    rows.sort(key=lambda r: (r["model"], r["rank"], order[r["arm"]]))
    return rows


def gap_measurable(ref: dict, when: str) -> bool:
    """Is the 4-bit -> 8-bit gap (`when` = "init" / "final") clearly there? Judged per seed,
    paired (4-bit and 8-bit QLoRA of the same seed share the A matrix and the data order, so
    that shared part of the seed noise cancels): positive on every seed and its mean above
    twice its standard deviation over seeds."""
    g = ref[f"gap_{when}_per_seed"]
    return g["n"] > 0 and g["min"] > 0 and g["mean"] > 2 * g["std"]


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.0f}%"


def _ppl(s: dict) -> str:
    if not s["n"]:
        return "n/a"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"


def markdown(report: dict) -> str:
    st, rows = report["setting"], report["summary"]
    lines = [
        "# Paper table in miniature (benchmarks/paper_table.py)",
        "",
        f"{st['steps']} steps, batch {st['batch']} x {st['seq_len']} tokens, lr {st['lr']}, "
        f"warmup {st['warmup']}, {st['seeds']} seeds, 4-bit = {st['quant_type'].upper()}; calibration "
        f"{st['cal_samples']} x {st['cal_seq_len']} tokens of the TRAIN split; validation: "
        f"{st['data']['validation_documents']} held-out documents. Perplexity: mean ± std over seeds. "
        "Gap recovered = (ppl 4-bit QLoRA - ppl arm) / (ppl 4-bit QLoRA - ppl 8-bit QLoRA), from the seed "
        "means; in brackets: mean ± std of the per-seed (paired) share.",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        for rank in sorted({r["rank"] for r in rows if r["model"] == model}):
            sub = [r for r in rows if r["model"] == model and r["rank"] == rank]
            ref = next((r for r in sub if r["arm"] == Q4), None)
            lines += [f"## {model}, rank {rank}", ""]
            if ref:
                gi, gf = ref["gap_init_per_seed"], ref["gap_final_per_seed"]
                lines.append(
                    f"4-bit -> 8-bit gap (ppl 4-bit QLoRA - ppl 8-bit QLoRA): {ref['gap_init']:.3f} at "
                    f"initialization (per seed {gi['mean']:.3f} ± {gi['std']:.3f}), {ref['gap_final']:.3f} after "
                    f"fine-tuning (per seed {gf['mean']:.3f} ± {gf['std']:.3f}, min {gf['min']:.3f}, max "
                    f"{gf['max']:.3f}); the seed std of each arm's final ppl is "
                    f"{ref['noise_final']:.3f} (4-bit and 8-bit QLoRA, root sum of squares).")  # fmt: skip
                lines.append("")
                for when, tag in (("init", "at initialization"), ("final", "after fine-tuning")):
                    if not gap_measurable(ref, when):
                        lines += [f"**{tag}, the gap is not positive on every seed, or not larger than twice its "
                                  "spread over seeds (paired by seed): the 'gap recovered' shares there are not "
                                  "meaningful (a negative gap inverts their sign); read the paired differences "
                                  "to 4-bit QLoRA instead.**", ""]  # fmt: skip
            lines += ["| arm | val. ppl at init | val. ppl after | after - 4-bit QLoRA (paired) "
                      "| gap recovered at init | gap recovered after |", "|---|---|---|---|---|---|"]  # fmt: skip
            for r in sub:
                shares = []
                for when in ("init", "final"):
                    if r["arm"] in (Q4, Q8):
                        shares.append("(reference)")
                        continue
                    ps = r[f"share_{when}_per_seed"]
                    extra = f" [{_pct(ps['mean'])} ± {_pct(ps['std'])}]" if ps["n"] > 1 else ""
                    shares.append(_pct(r[f"share_{when}"]) + extra)
                d = r["delta_final_vs_q4"]
                delta = f"{d['mean']:+.3f} ± {d['std']:.3f}" if d["n"] else "n/a"
                lines.append(f"| {r['arm']} | {_ppl(r['ppl_init'])} | {_ppl(r['ppl_final'])} | {delta} | "
                             f"{shares[0]} | {shares[1]} |")  # fmt: skip
            lines.append("")
    m = report["machine"]
    total = report.get("total_seconds", float("nan")) + sum(x.get("total_seconds") or 0 for x in report.get("merged", []))
    merged = f" ({1 + len(report['merged'])} processes, merged)" if report.get("merged") else ""
    lines.append(f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch threads {m['torch_threads']}, "
                 f"GPU {m['gpu'] or 'none'}; total {total / 60:.1f} min of runs{merged}.")  # fmt: skip
    return "\n".join(lines) + "\n"


def plots(report: dict) -> list[Path]:
    """docs/<name>_curves.png (validation curves per arm) and docs/<name>_ranks.png (rank sweep)."""
    runs, rows = report["runs"], report["summary"]
    st, stem = report["setting"], Path(report["_name"]).stem
    panels = []
    for model in dict.fromkeys(r["model"] for r in runs):
        series = []
        for arm in ARMS:
            curves = [r["curve"] for r in runs if r["model"] == model and r["rank"] == st["rank"] and r["arm"] == arm]
            if not curves:
                continue
            steps = [s for s, _ in curves[0]]
            mean = [statistics.fmean(c[i][1] for c in curves if len(c) > i) for i in range(len(steps))]
            series.append((arm, steps, mean))
        panels.append({"title": f"{model}, rank {st['rank']}: validation perplexity (mean of seeds)",
                       "x_label": "training step", "y_label": "validation perplexity", "log_y": True,
                       "series": series, "legend_offset": (-5, 5)})  # fmt: skip
    out = [line_plot(DOCS / f"{stem}_curves.png", panels, "Fine-tuning on the Python language reference")]
    rank_panels = []
    for model in dict.fromkeys(r["model"] for r in rows):
        ranks = sorted({r["rank"] for r in rows if r["model"] == model})
        if len(ranks) < 2:
            continue
        get = {(r["rank"], r["arm"]): r for r in rows if r["model"] == model}
        series = []
        for arm in SWEEP_ARMS:
            for when, tag in (("final", "after fine-tuning"), ("init", "at init")):
                pts = [(k, get[(k, arm)][f"ppl_{when}"]["mean"]) for k in ranks if (k, arm) in get]
                series.append((f"{arm}, {tag}", [p[0] for p in pts], [p[1] for p in pts]))
        rank_panels.append({"title": f"{model}: validation perplexity vs rank", "x_label": "LoRA rank",
                            "y_label": "validation perplexity", "log_x": True, "log_y": True, "x_ticks": ranks,
                            "series": series})  # fmt: skip
        share = []
        for when, tag in (("final", "after fine-tuning"), ("init", "at initialization")):
            pts = [(k, 100 * get[(k, "4-bit QuAILoRA")][f"share_{when}"]) for k in ranks if (k, "4-bit QuAILoRA") in get]
            share.append((f"QuAILoRA, {tag}", [p[0] for p in pts], [p[1] for p in pts]))
        share.append(("75% (paper's average)", ranks, [75.0] * len(ranks)))
        rank_panels.append({"title": f"{model}: 4->8-bit gap recovered by QuAILoRA (%)",
                            "x_label": "LoRA rank", "y_label": "gap recovered (%)", "log_x": True,
                            "x_ticks": ranks, "series": share, "allow_nonpositive": True,
                            "legend_offset": (5, 5)})  # fmt: skip
    if rank_panels:
        out.append(line_plot(DOCS / f"{stem}_ranks.png", rank_panels, "Rank sweep: QuAILoRA vs QLoRA",
                             width=750 * len(rank_panels)))  # fmt: skip
    return out


def save(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in report.items() if not k.startswith("_")}
    data["summary"] = summarize(report["runs"])
    path = RESULTS / report["_name"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Gap between 4-bit and 8-bit QLoRA recovered by each initialization.")
    p.add_argument("--models", default="broad-xs,broad-s", help="benchmark model sizes, comma separated "
                   "(pretrain_tiny.py sizes; 'small,medium': the stdlib-only models of the first attempt)")
    p.add_argument("--model", action="append", default=[], help="a local HF causal LM folder (repeatable; "
                   "replaces --models)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--rank", type=int, default=16, help="rank of the full table")
    p.add_argument("--sweep-ranks", default="8,16,64", help="ranks of the QLoRA / QuAILoRA sweep ('' = none)")
    p.add_argument("--sweep-models", default="broad-xs,broad-s", help="models (labels or sizes) the rank sweep runs on")
    p.add_argument("--arms", default=",".join(ARMS), help="arms of the full table (4-bit and 8-bit QLoRA always run)")
    p.add_argument("--quant-type", default="nf4", choices=["nf4", "fp4"])
    p.add_argument("--cal-samples", type=int, default=32)
    p.add_argument("--cal-seq-len", type=int, default=128)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="load dtype: auto (bf16 on CUDA, float32 on CPU) | float32 | ...")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy box)")
    p.add_argument("--quick", action="store_true", help="smoke test: small model, 1 seed, 10 steps, 3 arms")
    p.add_argument("--name", default="paper_table", help="results file stem")
    p.add_argument("--replot", action="store_true", help="redraw the table and plots from the saved JSON")
    p.add_argument("--merge", default="", help="with --replot: also take the runs of these result stems "
                   "(comma separated, e.g. paper_table_medium) into the table and plots")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--fresh", action="store_true", help="ignore the results of an interrupted run")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    name = args.name + (".quick" if args.quick else "")
    if args.replot:
        report = json.loads((RESULTS / f"{name}.json").read_text())
        report["_name"] = f"{name}.json"
        for other in filter(None, args.merge.split(",")):
            extra = json.loads((RESULTS / f"{other.strip()}.json").read_text())
            have = {(r["model"], r["arm"], r["rank"], r["seed"]) for r in report["runs"]}
            # a process that re-ran the always-run QLoRA arms (same seeds: identical runs) adds no duplicates
            report["runs"] += [r for r in extra["runs"] if (r["model"], r["arm"], r["rank"], r["seed"]) not in have]
            report.setdefault("merged", []).append({"name": other, "setting": extra["setting"],
                                                    "total_seconds": extra.get("total_seconds")})
        report["summary"] = summarize(report["runs"])
        (RESULTS / f"{name}.md").write_text(markdown(report), encoding="utf-8")
        print(markdown(report))
        print(*plots(report))
        return 0
    if args.quick:
        args.models, args.seeds, args.steps, args.eval_every = "small", 1, 10, 5
        args.arms, args.sweep_ranks, args.cal_samples = "4-bit QuAILoRA,16-bit LoRA", "", 8
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; known: {list(ARMS)}")
    models = [bench_model(model=m) for m in args.model] or [bench_model(s) for s in args.models.split(",") if s]
    sweep = [int(r) for r in args.sweep_ranks.split(",") if r.strip()]
    sweep_models = {s.strip() for s in args.sweep_models.split(",")}
    work = Path(tempfile.mkdtemp(prefix="quailora-paper-table-"))
    data = split_corpus(work, args.val_fraction)
    setting = {k: getattr(args, k) for k in ("seeds", "steps", "batch", "seq_len", "lr", "warmup", "eval_every",
                                              "rank", "quant_type", "cal_samples", "cal_seq_len", "device", "dtype",
                                              "threads", "arms")}  # fmt: skip
    setting.update({"sweep_ranks": sweep, "sweep_models": sorted(sweep_models), "models": [m for m, _ in models],
                    "data": {k: v for k, v in data.items() if k not in ("train", "validation")},
                    "alpha": "= rank", "targets": "all-linear"})  # fmt: skip
    report = {"benchmark": "paper_table", "machine": machine(), "setting": setting, "runs": [],
              "_t0": time.perf_counter(), "_name": f"{name}.json"}  # fmt: skip
    old = RESULTS / f"{name}.json"
    if not args.fresh and not args.no_write and old.exists():
        prev = json.loads(old.read_text())
        if prev.get("setting") == json.loads(json.dumps(setting)):
            report["runs"] = prev["runs"]
            print(f"resuming: {len(report['runs'])} runs already in {old}", flush=True)
    try:
        for model, label in models:
            ranks = [args.rank] + ([r for r in sweep if r != args.rank]
                                   if label in sweep_models or label.removeprefix("llama-") in sweep_models else [])
            run_model(args, model, label, data, work / label, ranks, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["total_seconds"] = time.perf_counter() - report["_t0"]  # this invocation; per-arm seconds in runs
    report["summary"] = summarize(report["runs"])
    print(markdown(report))
    if not args.no_write:
        save(report)
        (RESULTS / f"{name}.md").write_text(markdown(report), encoding="utf-8")
        if not args.quick:
            print(*plots(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
