"""The engine's float32 solve against float64, on the demo model's real layers.

The engine solves in float32 on every device (`LayerSolver.work_dtype`), on float32
statistics (`stats.accumulation_dtype`; the float64 reference takes the same ones in float64), with one damped Gram matrix and factor per distinct input, the block Krylov SVD
for `exact` and a randomized SVD start for `quailora`. This is what that costs against the
float64, full-SVD solvers, on every one of the 28 layers of the shipped (pretrained) demo
model with its real NF4 error and real calibration inputs:

- exact: the damped objective of the float32 L is within 1e-6 relative of the float64
  optimum (measured: 2.0e-9 at most);
- quailora: ALS in float32 reaches the float64 optimum to 1e-4 (measured: 9.3e-6;
  ALGORITHM.md asks 1e-3);
- the reported figures, computed in float32, are within 1e-5 relative of the same
  figures computed in float64 for the same L (measured: 2.2e-6 at most); the self-check
  (verify.py) allows 1e-3.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from quailora_core.config import QuantConfig
from quailora_core.init import solvers as S
from quailora_core.init.stats import GramCollector
from quailora_core.quant.quantizer import quantize_dequantize
from quailora_core.sources.packing import pack
from quailora_core.sources.text import load_texts

RANK = 8
F32 = torch.float32


@pytest.fixture(scope="module")
def real_layers(demo_model):
    tok = AutoTokenizer.from_pretrained(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval()
    data = pack(load_texts("demo", "text"), tok, 16, 128, 8, 0)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    collector = GramCollector({n: model.get_submodule(n) for n in names}, torch.device("cpu"))
    with torch.no_grad():
        for key, ids, mask in (
            ("cal", data.input_ids, data.attention_mask),
            ("heldout", data.heldout_input_ids, data.heldout_attention_mask),
        ):
            collector.begin(mask.bool(), key)
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    collector.remove()
    layers = {}
    for n in names:
        w = model.get_submodule(n).weight.data.float()
        q = quantize_dequantize(w, QuantConfig()).float()
        layers[n] = (w, w - q)
    return collector, layers


def _objective(E: torch.Tensor, L: torch.Tensor, H_d: torch.Tensor) -> float:
    R = E.double() - L.double()
    return float(((R @ H_d) * R).sum())


def test_layers_reading_one_input_share_one_factor(real_layers):
    collector, layers = real_layers
    assert len(layers) == 28 and len(collector.groups()) == 16  # per block: qkv, o, gate/up, down

    def make(h):
        return S.DampedGram(h, 0.01, dtype=F32)

    q, k = (collector.derived(f"model.layers.0.self_attn.{p}_proj", "cal", "t", make) for p in "qk")
    o = collector.derived("model.layers.0.self_attn.o_proj", "cal", "t", make)
    assert q is k and q is not o
    assert q.factor is q.factor and q.factor.kind == "cholesky"


def test_float32_engine_path_matches_float64_on_real_layers(real_layers):
    collector, layers = real_layers
    worst = {"exact": 0.0, "quailora": 0.0, "figures": 0.0}
    for name, (w, e) in layers.items():
        # the statistics as the engine accumulates them (float32), in float64 for the reference
        h, h_ho = collector.gram(name, "cal").double(), collector.gram(name, "heldout").double()
        gram = collector.derived(name, "cal", ("damped", F32), lambda m: S.DampedGram(m, 0.01, dtype=F32))
        H_d = S.damp(h, 0.01)
        f64 = _objective(e, S.solve_exact(e, h, RANK), H_d)  # float64, full SVD
        L32 = S.solve_exact(e, gram, RANK, krylov=S.KRYLOV_DEPTH, dtype=F32)
        A32 = S.solve_als(e, gram, RANK, iters=500, tol=S.ALS_TOL, dtype=F32, randomized_init=True)
        assert L32.dtype == A32.dtype == F32
        worst["exact"] = max(worst["exact"], (_objective(e, L32, H_d) - f64) / f64)
        worst["quailora"] = max(worst["quailora"], (_objective(e, A32, H_d) - f64) / f64)
        ref = S.relative_errors(w, e, L32, h, h_ho)  # float64, the plain products
        got = S.relative_errors(w, e, L32, gram, h_ho.to(F32), rank=RANK, dtype=F32)
        assert S.relative_errors(w, e, L32, h, h_ho, rank=RANK) == pytest.approx(ref, rel=1e-12), name
        worst["figures"] = max(worst["figures"], *(abs(got[k] - v) / abs(v) for k, v in ref.items()))
    assert worst["exact"] < 1e-6, worst
    assert worst["quailora"] < 1e-4, worst
    assert worst["figures"] < 1e-5, worst
