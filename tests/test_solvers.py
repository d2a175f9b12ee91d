"""Tests of quailora_core.init.solvers: the optimality, agreement and robustness ALGORITHM.md asks for.

The test layer is small (48 x 64, N = 500) but built like a real one: Q is bitsandbytes
NF4 (a local blockwise 4-bit rounding if bitsandbytes is missing), and the inputs are
correlated with a few large-scale "outlier" channels, so the calibrated and uncalibrated
optima differ a lot and a solver that ignores H cannot pass.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from quailora_core.init import solvers as S

OUT, IN, N, RANK = 48, 64, 500, 8
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _quantize(W: torch.Tensor) -> torch.Tensor:
    """NF4 with blocksize 64 as a QLoRA run does; a crude blockwise 4-bit absmax rounding otherwise."""
    try:
        import bitsandbytes.functional as bnbF

        q, state = bnbF.quantize_4bit(W.float().contiguous(), blocksize=64, quant_type="nf4")
        return bnbF.dequantize_4bit(q, state).float()
    except Exception:  # pragma: no cover - only without a usable bitsandbytes
        blocks = W.float().reshape(-1, 64)
        absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        return (torch.round(blocks / absmax * 7) / 7 * absmax).reshape(W.shape)


def _inputs(n: int, n_in: int, seed: int) -> torch.Tensor:
    """Correlated, anisotropic activations: mixed Gaussian columns plus three outlier channels."""
    g = _gen(seed)
    Z = torch.randn(n, n_in, generator=g, dtype=F64)
    M = torch.eye(n_in, dtype=F64) + torch.randn(n_in, n_in, generator=g, dtype=F64) / math.sqrt(n_in)
    scales = torch.ones(n_in, dtype=F64)
    scales[[3, 17, 40]] = torch.tensor([20.0, 10.0, 15.0], dtype=F64)
    return (Z @ M) * scales


def _gram(X: torch.Tensor) -> torch.Tensor:
    return X.T @ X / X.shape[0]


@pytest.fixture(scope="module")
def layer():
    g = _gen(0)
    W = torch.randn(OUT, IN, generator=g) * 0.05
    W[:, 3] *= 8  # a heavy input column, as next to an outlier channel
    Q = _quantize(W)
    X = _inputs(N, IN, seed=1)
    X_ho = _inputs(200, IN, seed=2)
    E = W.double() - Q.double()
    return {"W": W, "Q": Q, "E": E, "X": X, "H": _gram(X), "H_ho": _gram(X_ho)}


def _obj(E: torch.Tensor, L: torch.Tensor | None, H_d: torch.Tensor) -> float:
    """Damped calibrated objective tr((E - L) H_d (E - L)^T), computed the plain way."""
    R = E if L is None else E - L
    return float(torch.trace(R @ H_d @ R.T))


def _tail_sq(M: torch.Tensor, r: int) -> float:
    return float((torch.linalg.svdvals(M)[r:] ** 2).sum())


def _rank(M: torch.Tensor, rel: float = 1e-10) -> int:
    s = torch.linalg.svdvals(M)
    return int((s > rel * s[0]).sum())


# ---------------------------------------------------------------------------- damp / metrics


def test_damp_adds_relative_diagonal_and_floors_zero_h():
    H = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    assert torch.allclose(S.damp(H, 0.1), H + 0.1 * 2.0 * torch.eye(3, dtype=F64))
    assert torch.equal(S.damp(H, 0.0), H)
    Hz = torch.zeros(4, 4, dtype=F64)
    for d in (0.01, 0.0):
        assert torch.linalg.eigvalsh(S.damp(Hz, d)).min() > 0
    with pytest.raises(ValueError):
        S.damp(H, -1.0)


def test_relative_errors_match_direct_formulas(layer):
    W, E, X, H, H_ho = layer["W"].double(), layer["E"], layer["X"], layer["H"], layer["H_ho"]
    L = S.solve_als(E, H, RANK)
    m = S.relative_errors(W, E, L, H, H_ho)
    ref = torch.linalg.norm(W @ X.T) ** 2
    assert m["cal_err_before"] == pytest.approx(float(torch.linalg.norm(E @ X.T) ** 2 / ref), rel=1e-10)
    assert m["cal_err_after"] == pytest.approx(float(torch.linalg.norm((E - L) @ X.T) ** 2 / ref), rel=1e-10)
    assert m["uncal_err_before"] == pytest.approx(
        float(torch.linalg.norm(E) / torch.linalg.norm(W)), rel=1e-12
    )
    assert m["uncal_err_after"] == pytest.approx(
        float(torch.linalg.norm(E - L) / torch.linalg.norm(W)), rel=1e-12
    )
    ho = float(torch.trace(W @ H_ho @ W.T))
    assert m["heldout_err_before"] == pytest.approx(float(torch.trace(E @ H_ho @ E.T)) / ho, rel=1e-10)
    assert m["heldout_err_after"] == pytest.approx(
        float(torch.trace((E - L) @ H_ho @ (E - L).T)) / ho, rel=1e-10
    )
    # The calibrated start must cut the calibrated error, and by more than the uncalibrated one.
    assert m["cal_err_after"] < 0.2 * m["cal_err_before"]
    assert m["heldout_err_after"] < m["heldout_err_before"]
    assert m["uncal_err_after"] < m["uncal_err_before"]
    assert S.calibrated_error(E, H) == pytest.approx(float(torch.trace(E @ H @ E.T)), rel=1e-12)


def test_relative_errors_qlora_and_degenerate_cases(layer):
    W, E, H = layer["W"], layer["E"], layer["H"]
    m = S.relative_errors(W, E, None, H)
    assert m["cal_err_after"] == m["cal_err_before"] > 0
    assert m["uncal_err_after"] == m["uncal_err_before"] > 0
    assert math.isnan(m["heldout_err_before"]) and math.isnan(m["heldout_err_after"])
    zero = S.relative_errors(torch.zeros_like(W), E, None, H)
    assert math.isnan(zero["cal_err_before"]) and math.isnan(zero["uncal_err_before"])


# ---------------------------------------------------------------------------- solvers


def test_exact_is_the_global_optimum(layer):
    E, H = layer["E"], layer["H"]
    H_d = S.damp(H, 0.01)
    L = S.solve_exact(E, H, RANK)
    f = _obj(E, L, H_d)
    C = torch.linalg.cholesky(H_d)
    # Eckart-Young in the H_d metric: the optimum is the tail energy of E C.
    assert f == pytest.approx(_tail_sq(E @ C, RANK), rel=1e-9)
    assert _rank(L) == RANK
    # Same matrix as the textbook form U S V^T C^-1 (triangular solve).
    U, Sv, Vh = torch.linalg.svd(E @ C, full_matrices=False)
    M = (U[:, :RANK] * Sv[:RANK]) @ Vh[:RANK]
    L_textbook = torch.linalg.solve_triangular(C, M, upper=False, left=False)
    assert torch.allclose(L, L_textbook, rtol=0, atol=1e-9 * float(L.abs().max()))
    # No other solver and no random rank-r perturbation does better.
    for other in (S.solve_als(E, H, RANK), S.solve_loftq(E, RANK), None):
        assert f <= _obj(E, other, H_d) * (1 + 1e-12)
    B = U[:, :RANK] * Sv[:RANK].sqrt()
    A = torch.linalg.solve_triangular(C, Sv[:RANK].sqrt()[:, None] * Vh[:RANK], upper=False, left=False)
    g = _gen(5)
    for i in range(50):
        eps = 10.0 ** (-4 + 3 * i / 49)
        dB = torch.randn(B.shape, generator=g, dtype=F64) * eps * B.abs().mean()
        dA = torch.randn(A.shape, generator=g, dtype=F64) * eps * A.abs().mean()
        assert f <= _obj(E, (B + dB) @ (A + dA), H_d) * (1 + 1e-12)


def test_exact_beats_uncalibrated_by_a_wide_margin(layer):
    # Guards against a solver that silently ignores H (it would tie with loftq).
    E, H = layer["E"], layer["H"]
    H_d = S.damp(H, 0.01)
    assert _obj(E, S.solve_exact(E, H, RANK), H_d) < 0.5 * _obj(E, S.solve_loftq(E, RANK), H_d)


def test_als_monotone_and_reaches_exact(layer):
    E, H = layer["E"], layer["H"]
    H_d = S.damp(H, 0.01)
    L, hist = S.solve_als(E, H, RANK, iters=20, return_history=True)
    assert len(hist) == 21
    assert hist[0] == pytest.approx(_obj(E, S.solve_loftq(E, RANK), H_d), rel=1e-9)
    for a, b in itertools.pairwise(hist):
        assert b <= a * (1 + 1e-12)
    f_als = _obj(E, L, H_d)
    assert f_als == pytest.approx(hist[-1], rel=1e-9)
    f_exact = _obj(E, S.solve_exact(E, H, RANK), H_d)
    assert f_exact <= f_als * (1 + 1e-12)
    assert (f_als - f_exact) / f_exact < 1e-3
    assert _rank(L) == RANK
    # One iteration is not enough on this layer, so the 0.1% check above has teeth.
    assert (hist[1] - f_exact) / f_exact > 1e-3


def test_als_tol_stops_early(layer):
    E, H = layer["E"], layer["H"]
    _, hist = S.solve_als(E, H, RANK, iters=200, tol=1e-4, return_history=True)
    assert 2 < len(hist) < 201
    assert (hist[-2] - hist[-1]) < 1e-4 * hist[-2]


def test_loftq_is_truncated_svd(layer):
    E = layer["E"]
    L = S.solve_loftq(E, RANK)
    assert float(torch.linalg.norm(E - L) ** 2) == pytest.approx(_tail_sq(E, RANK), rel=1e-10)
    assert _rank(L) == RANK
    # Rank above min(out, in) is clamped: the correction is then E itself.
    assert torch.allclose(S.solve_loftq(E, 1000), E, atol=1e-12)


@pytest.mark.parametrize("damping", [0.01, 0.0])
def test_singular_h_gives_finite_optimal_results(layer, damping):
    E = layer["E"]
    X = _inputs(20, IN, seed=3)  # 20 tokens for 64 channels: rank(H) <= 20
    X[:, [5, 6, 30]] = 0.0  # dead channels: exact zero rows/columns in H
    H = _gram(X)
    if damping == 0.0:
        assert S._factor_spd(S.damp(H, 0.0)).kind == "eig"  # Cholesky cannot factor this
    H_d = S.damp(H, damping)
    results = {m: S.solve(m, E, H, RANK, damping=damping) for m in ("exact", "quailora", "loftq")}
    for m, L in results.items():
        assert torch.isfinite(L).all(), m
        A, B = S.split_lora(L, 2.0, RANK)
        assert torch.isfinite(A).all() and torch.isfinite(B).all()
    f = {m: _obj(E, L, H_d) for m, L in results.items()}
    assert f["exact"] <= min(f["quailora"], f["loftq"]) * (1 + 1e-9)
    # The true optimum of the (undamped) objective is the tail of E H^{1/2}; the eigenvalue
    # floor of the damping-0 path costs nothing measurable.
    lam, V = torch.linalg.eigh(H_d)
    root = V * lam.clamp_min(0).sqrt()
    scale = _obj(E, None, H_d)
    assert f["exact"] == pytest.approx(_tail_sq(E @ root, RANK), abs=1e-8 * scale)


def test_ill_conditioned_h(layer):
    E = layer["E"]
    X = _inputs(N, IN, seed=4) * torch.logspace(-6, 3, IN, dtype=F64)  # cond(H) ~ 1e18
    H = _gram(X)
    H_d = S.damp(H, 0.01)
    L_exact = S.solve_exact(E, H, RANK)
    L_als = S.solve_als(E, H, RANK, iters=50)
    assert torch.isfinite(L_exact).all() and torch.isfinite(L_als).all()
    C = torch.linalg.cholesky(H_d)
    assert _obj(E, L_exact, H_d) == pytest.approx(_tail_sq(E @ C, RANK), rel=1e-8)
    assert _obj(E, L_exact, H_d) <= _obj(E, L_als, H_d) * (1 + 1e-12)
    assert _obj(E, L_exact, H_d) < _obj(E, S.solve_loftq(E, RANK), H_d)


def test_zero_error_gives_zero_correction(layer):
    E = torch.zeros(OUT, IN, dtype=F64)
    for m in ("exact", "quailora", "loftq"):
        L = S.solve(m, E, layer["H"], RANK)
        assert torch.isfinite(L).all() and float(L.abs().max()) == 0.0, m


def test_randomized_exact_matches_exact_svd(layer):
    E, H = layer["E"], layer["H"]
    H_d = S.damp(H, 0.01)
    f = _obj(E, S.solve_exact(E, H, RANK), H_d)
    L1 = S.solve_exact(E, H, RANK, randomized=True, niter=4, generator=_gen(7))
    L2 = S.solve_exact(E, H, RANK, randomized=True, niter=4, generator=_gen(7))
    assert torch.equal(L1, L2)  # deterministic given the generator
    assert (_obj(E, L1, H_d) - f) / f < 1e-3
    assert _rank(L1) == RANK
    state = torch.get_rng_state()
    S.solve_exact(E, H, RANK, randomized=True)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


@pytest.fixture(scope="module")
def wide_layer():
    """384 x 384, N = 1500, the same construction: wide enough for the block Krylov SVD
    (which hands a layer this size at rank 8 to the full SVD below 2 * 162 columns)."""
    g = _gen(20)
    W = torch.randn(384, 384, generator=g) * 0.05
    W[:, 3] *= 8
    X = _inputs(1500, 384, seed=21)
    return {"E": W.double() - _quantize(W).double(), "H": _gram(X)}


def test_krylov_exact_matches_full_svd_and_leaves_the_rng_alone(wide_layer):
    E, H = wide_layer["E"], wide_layer["H"]
    H_d = S.damp(H, 0.01)
    f = _obj(E, S.solve_exact(E, H, RANK), H_d)
    L1 = S.solve_exact(E, H, RANK, krylov=S.KRYLOV_DEPTH, generator=_gen(7))
    assert torch.equal(L1, S.solve_exact(E, H, RANK, krylov=S.KRYLOV_DEPTH, generator=_gen(7)))
    assert (_obj(E, L1, H_d) - f) / f < 1e-8
    assert _rank(L1) == RANK
    state = torch.get_rng_state()
    L32 = S.solve_exact(E.float(), H, RANK, krylov=S.KRYLOV_DEPTH, dtype=torch.float32)
    assert torch.equal(state, torch.get_rng_state())
    assert (_obj(E, L32.double(), H_d) - f) / f < 1e-6
    # fewer blocks than it takes: the gap shows, so the bound above has teeth
    assert (_obj(E, S.solve_exact(E, H, RANK, krylov=1), H_d) - f) / f > 1e-6


def test_damped_gram_is_reused_and_gives_the_same_solutions(layer):
    E, H = layer["E"], layer["H"]
    gram = S.DampedGram(H, 0.01)
    assert torch.equal(gram.H_d, S.damp(H, 0.01))
    for m in ("exact", "quailora"):
        assert torch.equal(S.solve(m, E, gram, RANK), S.solve(m, E, H, RANK)), m
    assert gram.factor is gram.factor  # factored once, for every layer that reads this input
    assert gram.like(0.01, F64, E.device) is gram
    other = gram.like(0.1, torch.float32, E.device)
    assert other.dtype == torch.float32 and torch.allclose(other.H_d.double(), S.damp(H, 0.1), rtol=1e-6)
    L0 = S.asymmetric_target(layer["W"].double(), layer["Q"].double(), gram, H, 0.01)
    assert torch.allclose(L0, S.asymmetric_target(layer["W"].double(), layer["Q"].double(), H, H, 0.01))


def test_relative_errors_low_rank_path_and_float32(layer):
    W, E, H, H_ho = layer["W"].double(), layer["E"], layer["H"], layer["H_ho"]
    L = S.solve_exact(E, H, RANK)
    ref = S.relative_errors(W, E, L, H, H_ho)
    assert S.relative_errors(W, E, L, H, H_ho, rank=RANK) == pytest.approx(ref, rel=1e-12)
    # this layer's correction removes over 90 % of its error, the case where the identity's
    # terms cancel most; float32 still keeps every figure to 1e-5
    assert ref["cal_err_after"] < ref["cal_err_before"] / 10
    got = S.relative_errors(W.float(), E.float(), L.float(), H.float(), H_ho.float(), rank=RANK, dtype=torch.float32)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key


def test_float32_working_dtype_agrees(layer):
    # What an accelerator uses: float32 internally.
    E, H = layer["E"], layer["H"]
    H_d = S.damp(H, 0.01)
    L64 = S.solve_exact(E, H, RANK)
    L32 = S.solve_exact(E.float(), H.float(), RANK, dtype=torch.float32)
    A32 = S.solve_als(E.float(), H.float(), RANK, dtype=torch.float32)
    assert L32.dtype == torch.float32
    f64 = _obj(E, L64, H_d)
    assert (_obj(E, L32.double(), H_d) - f64) / f64 < 1e-4
    assert (_obj(E, A32.double(), H_d) - f64) / f64 < 1e-3


def test_solve_dispatch(layer):
    E, H = layer["E"], layer["H"]
    assert S.solve("qlora", E, H, RANK) is None
    assert torch.allclose(S.solve("loftq", E, H, RANK), S.solve_loftq(E, RANK))
    assert torch.allclose(S.solve("exact", E, H, RANK), S.solve_exact(E, H, RANK))
    assert torch.allclose(S.solve("quailora", E, H, RANK, als_iters=3), S.solve_als(E, H, RANK, iters=3))
    with pytest.raises(ValueError):
        S.solve("pissa", E, H, RANK)
    with pytest.raises(ValueError):
        S.solve("exact", E, H, 0)


# ---------------------------------------------------------------------------- asymmetric


def _asym_obj(W, Q, L, X_fp, X_q) -> float:
    """||W X_fp^T - (Q + L) X_q^T||_F^2 / N, straight from the inputs."""
    return float(torch.linalg.norm(W @ X_fp.T - (Q + L) @ X_q.T) ** 2 / X_fp.shape[0])


def test_asymmetric_reduces_to_exact_when_inputs_agree(layer):
    W, Q, E, H = layer["W"].double(), layer["Q"].double(), layer["E"], layer["H"]
    for damping in (0.01, 0.0):
        L_asym = S.solve_asymmetric(W, Q, H, H, RANK, damping)
        L_exact = S.solve_exact(E, H, RANK, damping)
        assert torch.allclose(L_asym, L_exact, rtol=0, atol=1e-8 * float(L_exact.abs().max())), damping


def test_asymmetric_beats_symmetric_when_inputs_differ(layer):
    W, Q, E, X_fp = layer["W"].double(), layer["Q"].double(), layer["E"], layer["X"]
    g = _gen(9)
    # The quantized model's inputs: a correlated distortion of the fp inputs plus noise.
    P = torch.randn(IN, IN, generator=g, dtype=F64) * 0.05
    X_q = X_fp @ (torch.eye(IN, dtype=F64) + P) + 0.1 * torch.randn(N, IN, generator=g, dtype=F64)
    H_fp, H_q, C = _gram(X_fp), _gram(X_q), X_fp.T @ X_q / N
    L_asym = S.solve_asymmetric(W, Q, H_q, C, RANK, 0.01)
    L_sym = S.solve_exact(E, H_fp, RANK, 0.01)
    assert _rank(L_asym) == RANK
    assert _asym_obj(W, Q, L_asym, X_fp, X_q) < 0.9 * _asym_obj(W, Q, L_sym, X_fp, X_q)
    # Any solver fed (L0, H_q) gives its asymmetric answer: ALS lands on the same optimum.
    L0 = S.asymmetric_target(W, Q, H_q, C, 0.01)
    L_als = S.solve_als(L0, H_q, RANK, 0.01, iters=100)
    f_asym = _asym_obj(W, Q, L_asym, X_fp, X_q)
    assert abs(_asym_obj(W, Q, L_als, X_fp, X_q) - f_asym) < 1e-3 * f_asym
    # Full rank, no damping: Q + L is the least-squares fit of W X_fp^T from X_q (checks L0
    # and the orientation of C_cross).
    L_full = S.solve_asymmetric(W, Q, H_q, C, min(OUT, IN), 0.0)
    M_ls = torch.linalg.lstsq(X_q, X_fp @ W.T).solution.T
    assert torch.allclose(Q + L_full, M_ls, rtol=0, atol=1e-8 * float(M_ls.abs().max()))


# ---------------------------------------------------------------------------- split_lora


@pytest.mark.parametrize("scaling", [16 / 8, 16 / math.sqrt(8), 0.25])
def test_split_lora_reproduces_l(layer, scaling):
    L = S.solve_exact(layer["E"], layer["H"], RANK)
    A, B = S.split_lora(L, scaling, RANK)
    assert A.shape == (RANK, IN) and B.shape == (OUT, RANK)
    assert A.dtype == B.dtype == torch.float32 and A.is_contiguous() and B.is_contiguous()
    rebuilt = scaling * (B @ A)  # what peft computes, in float32
    err = torch.linalg.norm(rebuilt.double() - L) / torch.linalg.norm(L)
    assert err < 1e-5
    assert torch.allclose(rebuilt.double(), L, rtol=1e-5, atol=1e-5 * float(L.abs().max()))
    # Even split: A's rows and B's columns carry the same norms.
    assert torch.allclose(A.norm(dim=1), B.norm(dim=0), rtol=1e-4)


def test_split_lora_rank_deficient_and_oversized():
    g = _gen(11)
    L = (torch.randn(OUT, 3, generator=g, dtype=F64) @ torch.randn(3, IN, generator=g, dtype=F64)) * 0.01
    A, B = S.split_lora(L, 2.0, RANK, generator=_gen(1))
    assert torch.allclose(2.0 * (B @ A).double(), L, rtol=1e-5, atol=1e-6 * float(L.abs().max()))
    assert float(B[:, 3:].abs().max()) == 0.0
    assert bool((A[3:].norm(dim=1) > 0).all())  # padded slots keep a random A row: still trainable
    Az, Bz = S.split_lora(L, 2.0, RANK, pad="zeros")
    assert float(Az[3:].abs().max()) == 0.0 and float(Bz[:, 3:].abs().max()) == 0.0
    assert torch.allclose(2.0 * (Bz @ Az).double(), L, rtol=1e-5, atol=1e-6 * float(L.abs().max()))
    # A full-rank L asked for at a rank above min(out, in).
    small = torch.randn(6, 10, generator=g, dtype=F64)
    A, B = S.split_lora(small, 0.5, 16)
    assert A.shape == (16, 10) and B.shape == (6, 16)
    assert torch.allclose(0.5 * (B @ A).double(), small, rtol=1e-5, atol=1e-6)
    # A full-rank L asked for at a smaller rank: the best rank-r part is kept.
    big = torch.randn(OUT, IN, generator=g, dtype=F64)
    A, B = S.split_lora(big, 1.0, RANK)
    assert torch.allclose((B @ A).double(), S.solve_loftq(big, RANK), atol=1e-5)


def test_split_lora_qlora_default_init():
    A, B = S.split_lora(None, 2.0, RANK, shape=(OUT, IN), generator=_gen(3))
    A2, _ = S.split_lora(None, 2.0, RANK, shape=(OUT, IN), generator=_gen(3))
    assert B.shape == (OUT, RANK) and A.shape == (RANK, IN)
    assert A.dtype == B.dtype == torch.float32
    assert float(B.abs().max()) == 0.0
    assert torch.equal(A, A2)
    bound = 1 / math.sqrt(IN)  # kaiming_uniform_(a=sqrt(5)) on an r x in weight
    assert float(A.abs().max()) <= bound and float(A.abs().max()) > 0.8 * bound
    with pytest.raises(ValueError):
        S.split_lora(None, 2.0, RANK)


# ---------------------------------------------------------------------------- safe_solve


def test_safe_solve_falls_back_on_nan_h(layer):
    E, H = layer["E"], layer["H"].clone()
    H[2, 7] = float("nan")
    for method in ("quailora", "exact"):
        L, used, warning = S.safe_solve(method, E, H, RANK, 0.01, 20)
        assert used == "loftq"
        assert warning is not None and method in warning and "NaN" in warning
        assert torch.allclose(L, S.solve_loftq(E, RANK))


def test_safe_solve_passes_through_and_degrades_to_qlora(layer):
    E, H = layer["E"], layer["H"]
    L, used, warning = S.safe_solve("exact", E, H, RANK, 0.01, 20)
    assert used == "exact" and warning is None and torch.allclose(L, S.solve_exact(E, H, RANK))
    assert S.safe_solve("qlora", E, H, RANK, 0.01, 20) == (None, "qlora", None)
    bad = E.clone()
    bad[0, 0] = float("inf")
    L, used, warning = S.safe_solve("quailora", bad, H, RANK, 0.01, 20)
    assert L is None and used == "qlora" and "loftq also failed" in warning
    with pytest.raises(ValueError):
        S.safe_solve("nope", E, H, RANK, 0.01, 20)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(layer):
    E, H = layer["E"], layer["H"]
    H_d = S.damp(H, 0.01)
    f64 = _obj(E, S.solve_exact(E, H, RANK), H_d)
    for m in ("exact", "quailora"):
        L = S.solve(m, E.float().cuda(), H.float().cuda(), RANK)
        assert L.is_cuda and L.dtype == torch.float32
        assert (_obj(E, L.double().cpu(), H_d) - f64) / f64 < 1e-3
    A, B = S.split_lora(L, 2.0, RANK)
    assert A.is_cuda and B.is_cuda
