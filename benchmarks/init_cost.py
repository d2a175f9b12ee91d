"""Initialization cost: time and memory of the engine, as ratios measured in one run.

Every configuration runs in a fresh child process (this script with `--child ...`), one
after another, on the same model, the same calibration tokens and the same thread count:

(a) engine wall time / wall time of one plain forward pass of the same model over the same
    calibration tokens (goal: <= 3x at 128 samples x 512 tokens). The engine's time is the
    whole `run_init` call (tokenize, load, capture, per-block statistics, solve, write the
    adapter); the forward pass is timed with the model already loaded (median of 3) over
    the calibration *and* held-out sequences, the tokens the engine itself pushes through
    the model. Phase times of the engine come from its own events.
(b) engine wall time / peft's own LoftQ initialization (`get_peft_model` with
    `init_lora_weights="loftq"`, `LoftQConfig(loftq_bits=4, loftq_iter=1)`, the same model
    and targets, model already loaded). peft 0.21 hard-codes `compute_device = "cuda"` in
    `loftq_init`; without CUDA this script runs peft's own function source with that one
    line changed to "cpu" (said in the output).
(c) peak memory with 2x calibration samples / peak with 1x (goal < 1.1x): peak RSS (VmHWM)
    of each child, raw and minus the baseline child (a Python that has imported torch,
    transformers, peft and the engine and done nothing else).
(d) engine peak memory / model size in its load dtype (goal < 1.5x), raw and
    baseline-subtracted.

`--profile` adds a cProfile of one engine run and reports where the time goes (statistics
hooks, ALS, SVDs, block forward, model loading, adapter writing).

    python benchmarks/init_cost.py                          # small model, 128 x 512, rank 16
    python benchmarks/init_cost.py --size medium --samples 64 --seq-len 256
    python benchmarks/init_cost.py --quick                  # smoke test

Results: benchmarks/results/init_cost[-<tag>].json and .md (unless --no-write).
For the Llama-3-8B-shaped GPU measurement see benchmarks/gpu_llama8b.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    bench_model,
    calibration_file,
    layer_grams,
    machine,
    make_config,
    peak_rss_mib,
    write_results,
)

HERE = Path(__file__).resolve()


# ============================================================================ children
def _cfg(a: dict, samples: int, output: str):
    return make_config(
        a["model"], a["calibration"], output, samples, a["seq_len"], a["heldout"],
        lora__rank=a["rank"], lora__alpha=float(a["rank"]), init__method=a["method"],
        init__batch_size=a["batch_size"], quantization__bits=4, quantization__quant_type="nf4",
        init__offload_activations=a.get("offload", False),
    )  # fmt: skip


def child_baseline(a: dict) -> dict:
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import quailora_core.init.pipeline  # noqa: F401

    return {"peak_rss_mib": peak_rss_mib()}


def _model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def child_engine(a: dict, profile: bool = False) -> dict:
    import torch

    from quailora_core.events import Finished, LayerResult, Log, Stage
    from quailora_core.init.pipeline import run_init

    torch.manual_seed(0)
    out = tempfile.mkdtemp(prefix="quailora-cost-")
    marks: dict[str, float] = {}
    warnings: list[str] = []
    shapes = {}

    def on_event(e):
        now = time.perf_counter()
        if isinstance(e, Stage):
            marks.setdefault(e.name, now)
        elif isinstance(e, LayerResult):
            marks.setdefault("first_layer", now)
        elif isinstance(e, Finished):
            marks["finished"] = now
        elif isinstance(e, Log):
            if e.level == "warning":
                warnings.append(e.message)
            else:
                shapes["log"] = e.message

    cfg = _cfg(a, a["samples"], str(Path(out) / "adapter"))
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    t0 = time.perf_counter()
    try:
        if prof:
            prof.enable()
        result = run_init(cfg, on_event)
        if prof:
            prof.disable()
        wall = time.perf_counter() - t0
        meta = json.loads((Path(result.output_dir) / "quailora.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    report = {
        "wall_seconds": wall,
        "peak_rss_mib": peak_rss_mib(),
        "phases": {
            "load_tokenize_capture": marks["calibrate"] - t0,
            "blocks_stats_solve": marks["export"] - marks["calibrate"],
            "write_adapter": marks["finished"] - marks["export"],
        },
        "layer_seconds_sum": result.summary["seconds"],
        "samples_used": meta["calibration"]["samples"],
        "heldout_used": meta["calibration"]["heldout"],
        "mean_cal_err_after": result.summary["mean_cal_err_after"],
        "warnings": warnings,
        "log": shapes.get("log", ""),
    }
    if prof:
        report["profile"] = summarize_profile(prof, wall)
    return report


def _load(a: dict):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
    model.eval()
    return model


def child_forward(a: dict) -> dict:
    import torch
    from transformers import AutoTokenizer

    from quailora_core.sources.packing import pack
    from quailora_core.sources.text import load_texts

    tok = AutoTokenizer.from_pretrained(a["model"])
    data = pack(load_texts(a["calibration"]), tok, a["samples"], a["seq_len"], a["heldout"], 0)
    ids = torch.cat([data.input_ids, data.heldout_input_ids])
    mask = torch.cat([data.attention_mask, data.heldout_attention_mask])
    model = _load(a)
    bs = a["batch_size"]
    times = []
    with torch.no_grad():
        for _ in range(a["repeats"]):
            t0 = time.perf_counter()
            for s in range(0, ids.shape[0], bs):
                model(input_ids=ids[s : s + bs], attention_mask=mask[s : s + bs], use_cache=False)
            times.append(time.perf_counter() - t0)
    return {
        "times": times,
        "median_seconds": statistics.median(times),
        "sequences": int(ids.shape[0]),
        "tokens": int(mask.sum()),
        "model_bytes": _model_bytes(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "hidden_size": int(model.config.hidden_size),
        "peak_rss_mib": peak_rss_mib(),
    }


def _cpu_loftq_init():
    """peft's own `loftq_init`, with its hard-coded compute device "cuda" replaced by "cpu"."""
    import inspect

    import peft.tuners.lora.layer as layer_mod
    import peft.utils.loftq_utils as lu

    src = inspect.getsource(lu.loftq_init)
    old = 'compute_device = "xpu" if is_xpu_available() else "cuda"'
    if src.count(old) != 1:
        raise RuntimeError("peft's loftq_init changed; cannot run it on CPU")
    ns = dict(vars(lu))
    exec(compile(src.replace(old, 'compute_device = "cpu"'), lu.__file__, "exec"), ns)  # noqa: S102
    layer_mod.loftq_init = ns["loftq_init"]


def child_peft_loftq(a: dict) -> dict:
    import torch
    from peft import LoftQConfig, LoraConfig, get_peft_model

    patched = not torch.cuda.is_available()
    if patched:
        _cpu_loftq_init()
    model = _load(a)
    loftq = LoftQConfig(loftq_bits=4, loftq_iter=1)
    scipy_check_skipped = False
    try:
        config = LoraConfig(
            r=a["rank"], lora_alpha=a["rank"], target_modules="all-linear", init_lora_weights="loftq",
            loftq_config=loftq, task_type="CAUSAL_LM",
        )  # fmt: skip
    except ImportError:
        # LoraConfig refuses "loftq" when scipy is not installed, although no peft code imports
        # scipy; set the same two fields after construction instead.
        config = LoraConfig(r=a["rank"], lora_alpha=a["rank"], target_modules="all-linear", task_type="CAUSAL_LM")
        config.init_lora_weights, config.loftq_config = "loftq", vars(loftq)
        scipy_check_skipped = True
    torch.manual_seed(0)
    t0 = time.perf_counter()
    pm = get_peft_model(model, config)
    seconds = time.perf_counter() - t0
    n = sum(1 for name, _ in pm.named_modules() if name.endswith(".lora_A"))
    return {
        "seconds": seconds, "layers": n, "patched_cpu": patched, "scipy_check_skipped": scipy_check_skipped,
        "peak_rss_mib": peak_rss_mib(),
    }  # fmt: skip


def child_solvers(a: dict) -> dict:
    """Time the solvers on real layers of the model (H from a plain forward with hooks):
    quailora (ALS, the engine's iteration cap and tolerance) and exact (closed form), in
    float64 (what the engine uses on CPU) and float32, with 1 and 2 torch threads."""
    import torch
    from transformers import AutoTokenizer

    from quailora_core.config import InitSettings, QuantConfig
    from quailora_core.init import solvers
    from quailora_core.quant.quantizer import quantize_dequantize
    from quailora_core.sources.packing import pack
    from quailora_core.sources.text import load_texts

    tok = AutoTokenizer.from_pretrained(a["model"])
    data = pack(load_texts(a["calibration"]), tok, a["solver_samples"], a["seq_len"], 0, 0)
    model = _load(a)
    n_blocks = model.config.num_hidden_layers
    names = [f"model.layers.{n_blocks // 2}.self_attn.q_proj", f"model.layers.{n_blocks // 2}.mlp.down_proj"]
    grams = layer_grams(model, data.input_ids, names)
    n_tok = data.input_ids.numel()
    iters, tol = InitSettings().als_iters, solvers.ALS_TOL
    rows = []
    for name in names:
        w = model.get_submodule(name).weight.data
        q = quantize_dequantize(w, QuantConfig())
        for dtype in (torch.float64, torch.float32):
            e = (w.double() - q.double()).to(dtype)
            h = (grams[name] / n_tok).to(dtype)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for method in ("quailora", "exact"):
                    best = float("inf")
                    for _ in range(2 if threads == 1 else 1):  # 2 threads can be very slow on a busy machine
                        t0 = time.perf_counter()
                        lora = solvers.solve(method, e, h, a["rank"], 0.01, iters, tol=tol, dtype=dtype)
                        best = min(best, time.perf_counter() - t0)
                    err = solvers.relative_errors(w.double(), e.double(), lora.double(), h.double())["cal_err_after"]
                    rows.append({"layer": name, "shape": list(w.shape), "dtype": str(dtype).removeprefix("torch."),
                                 "threads": threads, "method": method, "seconds": best, "cal_err_after": err})  # fmt: skip
    return {"rows": rows, "als_iters": iters, "tol": tol, "tokens": n_tok}


# ---------------------------------------------------------------------------- profile
PROFILE_BUCKETS = [
    # (label, file suffix, function name): cumulative time of these functions
    ("model load (from_pretrained)", "modeling_utils.py", "from_pretrained"),
    ("tokenize + pack", "sources/packing.py", "pack"),
    ("capture block-0 inputs", "init/activations.py", "capture_block_inputs"),
    ("block forward incl. hooks (run_block)", "init/activations.py", "run_block"),
    ("Gram accumulation (Moment.add, inside the hooks)", "init/stats.py", "add"),
    ("quantize + dequantize (bitsandbytes)", "quant/quantizer.py", "quantize_dequantize"),
    ("solver: safe_solve (all of it)", "init/solvers.py", "safe_solve"),
    ("  ALS (solve_als)", "init/solvers.py", "solve_als"),
    ("  closed form (solve_exact)", "init/solvers.py", "solve_exact"),
    ("  uncalibrated SVD (solve_loftq)", "init/solvers.py", "solve_loftq"),
    ("metrics (relative_errors)", "init/solvers.py", "relative_errors"),
    ("split into A, B (split_lora)", "init/solvers.py", "split_lora"),
    ("write adapter", "adapter/writer.py", "write_adapter"),
]


def summarize_profile(prof, wall: float) -> dict:
    import pstats

    st = pstats.Stats(prof)
    buckets = []
    for label, suffix, fn in PROFILE_BUCKETS:
        ct = sum(v[3] for k, v in st.stats.items() if k[0].endswith(suffix) and k[2] == fn)
        buckets.append({"what": label, "seconds": ct, "fraction": ct / wall})
    top = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    top_items = [
        {"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "calls": v[1], "self_seconds": v[2], "cum_seconds": v[3]}
        for k, v in top
    ]
    return {"buckets": buckets, "top_self": top_items}


CHILDREN = {
    "baseline": child_baseline,
    "engine": child_engine,
    "profile": lambda a: child_engine(a, profile=True),
    "forward": child_forward,
    "peft_loftq": child_peft_loftq,
    "solvers": child_solvers,
}


def child_main(task: str, args_json: str) -> int:
    a = json.loads(args_json)
    if a.get("threads"):
        import torch

        torch.set_num_threads(a["threads"])
    out = CHILDREN[task](a)
    print("@@RESULT@@" + json.dumps(out))
    return 0


# ============================================================================ parent
def spawn(task: str, a: dict, timeout: float = 1800) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", task, json.dumps(a)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise RuntimeError(f"child {task} failed (exit {proc.returncode}):\n{tail}")
    out = json.loads(lines[-1][len("@@RESULT@@") :])
    out["process_seconds"] = time.perf_counter() - t0
    return out


def add_ratios(r: dict) -> dict:
    """The ratios (the claims) from the raw measurements of one run."""
    e1, f = r["engine_1x"], r["forward"]
    f["median_seconds"] = statistics.median(f["times"])
    base = r["baseline"]["peak_rss_mib"]
    mib = f["model_bytes"] / 2**20
    ratios = {
        "engine_over_forward": e1["wall_seconds"] / f["median_seconds"],
        "walk_over_forward": e1["phases"]["blocks_stats_solve"] / f["median_seconds"],
        "peak_over_model_raw": e1["peak_rss_mib"] / mib,
        "peak_over_model_net": (e1["peak_rss_mib"] - base) / mib,
    }
    if "peft" in r:
        ratios["engine_over_peft_loftq"] = e1["wall_seconds"] / r["peft"]["seconds"]
    if "engine_2x" in r:
        e2 = r["engine_2x"]
        ratios["mem_2x_over_1x_raw"] = e2["peak_rss_mib"] / e1["peak_rss_mib"]
        ratios["mem_2x_over_1x_net"] = (e2["peak_rss_mib"] - base) / (e1["peak_rss_mib"] - base)
    r["ratios"] = ratios
    r["stream_mib"] = e1["samples_used"] * r["setting"]["seq_len"] * f["hidden_size"] * 4 / 2**20
    return r


def markdown(r: dict) -> str:
    s, ratios = r["setting"], r["ratios"]
    f = r["forward"]
    e1, e2 = r["engine_1x"], r.get("engine_2x")
    lines = [
        f"Model `{s['model_label']}` ({f['parameters'] / 1e6:.2f} M parameters, {f['model_bytes'] / 2**20:.1f} MiB "
        f"in float32), NF4, rank {s['rank']}, method {s['method']}, {s['samples']} x {s['seq_len']} calibration "
        f"tokens + {s['heldout']} held-out sequences, batch {s['batch_size']}, torch threads {s['threads']}. "
        f"Each figure from a fresh child process, all in one run of the script.",
        "",
        "| measurement | value | goal |",
        "|---|---:|---|",
        f"| (a) engine wall / plain forward pass (same tokens) | {ratios['engine_over_forward']:.2f}x | <= 3x |",
        f"| (a') engine block walk only (stats + solve) / forward | {ratios['walk_over_forward']:.2f}x | |",
    ]
    if "engine_over_peft_loftq" in ratios:
        lines.append(f"| (b) engine wall / peft LoftQ init (get_peft_model) | {ratios['engine_over_peft_loftq']:.2f}x | reported |")
    if e2:
        lines += [
            f"| (c) peak RSS, 2x samples / 1x, raw | {ratios['mem_2x_over_1x_raw']:.3f}x | < 1.1x |",
            f"| (c) peak RSS, 2x samples / 1x, minus baseline | {ratios['mem_2x_over_1x_net']:.3f}x | < 1.1x |",
        ]
    lines += [
        f"| (d) engine peak RSS / model size, raw | {ratios['peak_over_model_raw']:.2f}x | < 1.5x |",
        f"| (d) engine peak RSS minus baseline / model size | {ratios['peak_over_model_net']:.2f}x | < 1.5x |",
        "",
        "Raw figures behind the ratios (seconds and MiB on this noisy machine: only the ratios above are claims):",
        "",
        f"- plain forward over {f['sequences']} sequences ({f['tokens']:,} tokens): runs "
        + ", ".join(f"{t:.2f}" for t in f["times"])
        + f" s (median {f['median_seconds']:.2f} s)",
        f"- engine ({e1['samples_used']} samples): {e1['wall_seconds']:.2f} s wall = load/tokenize/capture "
        f"{e1['phases']['load_tokenize_capture']:.2f} + blocks (stats + solve) {e1['phases']['blocks_stats_solve']:.2f} "
        f"+ write adapter {e1['phases']['write_adapter']:.2f}; per-layer solve seconds sum {e1['layer_seconds_sum']:.2f}",
    ]
    if "peft" in r:
        p = r["peft"]
        lines.append(
            f"- peft LoftQ init: {p['seconds']:.2f} s for {p['layers']} layers"
            + (" (peft's loftq_init run on CPU: its hard-coded 'cuda' device replaced)" if p["patched_cpu"] else "")
        )
    lines.append(
        f"- peak RSS: baseline (torch + transformers + peft + engine imported) {r['baseline']['peak_rss_mib']:.0f} MiB; "
        f"engine 1x {e1['peak_rss_mib']:.0f} MiB"
        + (f", engine 2x ({e2['samples_used']} samples) {e2['peak_rss_mib']:.0f} MiB" if e2 else "")
        + f"; forward-only child {f['peak_rss_mib']:.0f} MiB"
    )
    lines.append(
        f"- one hidden-state stream of the calibration set (samples x seq_len x hidden x 4 bytes): "
        f"{r['stream_mib']:.1f} MiB (the engine holds a block's inputs and outputs for all samples)"
    )
    if "profile" in r:
        pr = r["profile"]
        lines += ["", f"Profile (cProfile, one engine run of {pr['wall']:.1f} s; cumulative time, overlapping rows):", "",
                  "| part | seconds | share of wall |", "|---|---:|---:|"]  # fmt: skip
        for b in pr["buckets"]:
            lines.append(f"| {b['what']} | {b['seconds']:.2f} | {100 * b['fraction']:.1f} % |")
        lines += ["", "Top functions by own time:", "", "| function | calls | own s | cumulative s |", "|---|---:|---:|---:|"]
        for t in pr["top_self"]:
            lines.append(f"| `{t['function']}` | {t['calls']} | {t['self_seconds']:.2f} | {t['cum_seconds']:.2f} |")
    if "solvers" in r:
        sv = r["solvers"]
        lines += ["", f"Solver timings on two real layers (H from {sv['tokens']:,} tokens; rank {s['rank']}, NF4; ALS: "
                  f"at most {sv['als_iters']} iterations, tolerance {sv['tol']:g}; best of 2 with 1 thread, one run with 2):", "",
                  "| layer | shape | dtype | threads | method | seconds | cal err after |",
                  "|---|---|---|---:|---|---:|---:|"]  # fmt: skip
        for x in sv["rows"]:
            lines.append(f"| `{x['layer']}` | {x['shape'][0]}x{x['shape'][1]} | {x['dtype']} | {x['threads']} | "
                         f"{x['method']} | {x['seconds']:.3f} | {x['cal_err_after']:.6e} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1], argv[2])
    p = argparse.ArgumentParser(description="Engine time and memory, as ratios measured in one run.")
    p.add_argument("--size", default="small", help="benchmark model size (pretrain_tiny.py --size)")
    p.add_argument("--model", default=None, help="a model folder (overrides --size)")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--heldout", type=int, default=16)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--method", default="quailora")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads in every child (0: torch's default)")
    p.add_argument("--repeats", type=int, default=3, help="timed forward passes (median)")
    p.add_argument("--no-peft", action="store_true", help="skip (b)")
    p.add_argument("--no-memory-2x", action="store_true", help="skip the 2x-samples run of (c)")
    p.add_argument("--profile", action="store_true", help="add a cProfile run of the engine")
    p.add_argument("--solvers", action="store_true", help="add solver timings (float64/float32, 1/2 threads)")
    p.add_argument("--solver-samples", type=int, default=32, help="sequences for the solver timings' H")
    p.add_argument("--offload", action="store_true", help="engine runs with offload_activations (disk)")
    p.add_argument("--tag", default="", help="suffix of the result files (init_cost-<tag>.json)")
    p.add_argument("--quick", action="store_true", help="smoke test: 8 x 64 tokens, no files written")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--rerender", default=None, metavar="JSON",
                   help="recompute the ratios and the .md from a saved result file (no measuring)")
    args = p.parse_args(argv)
    if args.rerender:
        path = Path(args.rerender)
        r = add_ratios(json.loads(path.read_text(encoding="utf-8")))
        path.write_text(json.dumps(r, indent=1) + "\n", encoding="utf-8")
        path.with_suffix(".md").write_text(markdown(r), encoding="utf-8")
        print(markdown(r))
        return 0
    if args.quick:
        args.samples, args.seq_len, args.heldout, args.repeats, args.no_write = 8, 64, 2, 1, True
    model, label = bench_model(args.size, args.model)
    work = Path(tempfile.mkdtemp(prefix="quailora-bench-cost-"))
    try:
        # The fine-tuning corpus alone has too few 512-token blocks for 2 x 128 + 16 samples:
        # append the pretraining corpus (the text does not change the cost).
        cal = calibration_file(work)
        from quailora_core.sources.corpus import pretraining_corpus

        with cal.open("a", encoding="utf-8") as fh:
            fh.write("\n" + "\n\n".join(pretraining_corpus()) + "\n")
        import torch

        threads = args.threads or torch.get_num_threads()
        a = {
            "model": model, "calibration": str(cal), "samples": args.samples, "seq_len": args.seq_len,
            "heldout": args.heldout, "rank": args.rank, "method": args.method, "batch_size": args.batch_size,
            "threads": threads, "repeats": args.repeats, "solver_samples": args.solver_samples,
            "offload": args.offload,
        }  # fmt: skip
        print(f"model {label} ({model}); {args.samples} x {args.seq_len} tokens + {args.heldout} held out; rank "
              f"{args.rank}, {args.method}, NF4; torch threads {threads}", flush=True)  # fmt: skip
        t_all = time.perf_counter()
        r: dict = {"benchmark": "init_cost", "machine": machine(), "setting": {**a, "model_label": label}}
        r["baseline"] = spawn("baseline", a)
        print(f"baseline child: peak RSS {r['baseline']['peak_rss_mib']:.0f} MiB", flush=True)
        r["forward"] = spawn("forward", a)
        print(f"plain forward: {r['forward']['times']} s over {r['forward']['tokens']:,} tokens", flush=True)
        r["engine_1x"] = spawn("engine", a)
        e1 = r["engine_1x"]
        print(f"engine 1x: {e1['wall_seconds']:.2f} s, peak RSS {e1['peak_rss_mib']:.0f} MiB, "
              f"phases {e1['phases']}", flush=True)  # fmt: skip
        for w in e1["warnings"]:
            print("  engine warning:", w)
        if not args.no_peft:
            r["peft"] = spawn("peft_loftq", a)
            print(f"peft LoftQ: {r['peft']['seconds']:.2f} s ({r['peft']['layers']} layers, "
                  f"patched for CPU: {r['peft']['patched_cpu']})", flush=True)  # fmt: skip
        if not args.no_memory_2x:
            r["engine_2x"] = spawn("engine", {**a, "samples": 2 * args.samples})
            e2 = r["engine_2x"]
            print(f"engine 2x: {e2['wall_seconds']:.2f} s, peak RSS {e2['peak_rss_mib']:.0f} MiB "
                  f"({e2['samples_used']} samples used)", flush=True)  # fmt: skip
            for w in e2["warnings"]:
                print("  engine warning:", w)
        if args.profile:
            pr = spawn("profile", a)
            r["profile"] = {"wall": pr["wall_seconds"], **pr["profile"]}
            print("profile:", json.dumps(r["profile"]["buckets"], indent=0), flush=True)
        if args.solvers:
            r["solvers"] = spawn("solvers", a)
        add_ratios(r)
        r["total_seconds"] = time.perf_counter() - t_all
        md = markdown(r)
        print()
        print(md)
        if not args.no_write:
            path = write_results("init_cost" + (f"-{args.tag}" if args.tag else ""), r, md)
            print(f"wrote {path} and .md")
        print(f"total {time.perf_counter() - t_all:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
