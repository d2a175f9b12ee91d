"""How fast QuAILoRA's ALS approaches the closed-form optimum on one real layer.

Computes H for the chosen layers of the benchmark model exactly as the engine would see
it (`fp` inputs, the same packed calibration tokens: corpus.finetune_corpus(), seed 0),
quantizes the weight (NF4 by default), then runs `solvers.solve_als` with a large
iteration cap and records the damped objective after every iteration, against the exact
optimum (`solvers.solve_exact`). Prints the relative gap after 10, 20, 50, 100, ...
iterations on the damped objective (what both minimize) and on the reported undamped
calibrated error, and the time per iteration.

    python benchmarks/als_convergence.py --rank 64 --layers model.layers.1.self_attn.k_proj
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_model, calibration_file, layer_grams, machine, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ALS convergence against the closed form on real layers.")
    p.add_argument("--size", default="small")
    p.add_argument("--model", default=None)
    p.add_argument("--layers", default="model.layers.1.self_attn.k_proj,model.layers.1.mlp.down_proj")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--quant", default="nf4", choices=["nf4", "fp4", "int8"])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quailora_core.config import QuantConfig
    from quailora_core.init import solvers
    from quailora_core.quant.quantizer import quantize_dequantize
    from quailora_core.sources.packing import pack
    from quailora_core.sources.text import load_texts

    torch.set_num_threads(args.threads)
    model_path, label = bench_model(args.size, args.model)
    cal = calibration_file()
    tok = AutoTokenizer.from_pretrained(model_path)
    data = pack(load_texts(str(cal)), tok, args.samples, args.seq_len, 0, 0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    names = [n.strip() for n in args.layers.split(",")]
    sums = layer_grams(model, data.input_ids, names)
    qc = QuantConfig(bits=8) if args.quant == "int8" else QuantConfig(quant_type=args.quant)
    n_tok = data.input_ids.numel()
    checkpoints = [c for c in (1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if c <= args.iters]
    out = []
    for name in names:
        w = model.get_submodule(name).weight.data.double()
        e = w - quantize_dequantize(model.get_submodule(name).weight.data, qc).double()
        h = sums[name] / n_tok
        hd = solvers.damp(h, 0.01)
        t0 = time.perf_counter()
        l_exact = solvers.solve_exact(e, h, args.rank, 0.01)
        t_exact = time.perf_counter() - t0
        f_exact = solvers.calibrated_error(e - l_exact, hd)
        t0 = time.perf_counter()
        _, hist = solvers.solve_als(e, h, args.rank, 0.01, iters=args.iters, return_history=True)
        t_als = time.perf_counter() - t0
        den = solvers.calibrated_error(w, h)
        # where the engine's stopping rule (improvement < ALS_TOL relative) would stop
        from quailora_core.init.solvers import ALS_TOL

        stop = next((i for i in range(1, len(hist)) if hist[i - 1] - hist[i] < ALS_TOL * abs(hist[i - 1])), None)
        rows = []
        for c in checkpoints:
            _l = solvers.solve_als(e, h, args.rank, 0.01, iters=c) if c <= 200 else None
            undamped_gap = (
                solvers.calibrated_error(e - _l, h) / solvers.calibrated_error(e - l_exact, h) - 1 if _l is not None else None
            )
            rows.append({"iters": c, "damped_gap": hist[c] / f_exact - 1, "undamped_gap": undamped_gap})
        rec = {
            "layer": name, "shape": list(w.shape), "rank": args.rank, "exact_seconds": t_exact,
            "als_seconds_per_iter": t_als / args.iters, "engine_tol": ALS_TOL, "tol_stop_iteration": stop, "exact_cal_err": solvers.calibrated_error(e - l_exact, h) / den,
            "gaps": rows,
        }  # fmt: skip
        out.append(rec)
        print(f"{name} {tuple(w.shape)} rank {args.rank} {args.quant}: exact {t_exact:.3f} s; ALS "
              f"{1000 * t_als / args.iters:.2f} ms / iteration; the engine's tolerance {ALS_TOL:g} would stop "
              f"at iteration {stop}")  # fmt: skip
        for r in rows:
            ug = "" if r["undamped_gap"] is None else f"   reported (undamped) gap {r['undamped_gap']:.2e}"
            print(f"  after {r['iters']:>5} iterations: damped-objective gap {r['damped_gap']:.2e}{ug}")
    if not args.no_write:
        report = {"benchmark": "als_convergence", "machine": machine(), "model": label, "quant": args.quant,
                  "samples": args.samples, "seq_len": args.seq_len, "layers": out}  # fmt: skip
        write_results("als_convergence", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
