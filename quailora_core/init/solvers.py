"""The numerical core: pure functions on tensors that turn (W, Q, H) into a LoRA start.

Everything here follows docs/ALGORITHM.md. Conventions:

- weights are in PyTorch layout `out x in`; `E = W - Q` is the quantization error;
- `H = X^T X / N` (`in x in`) is symmetric positive semi-definite and may be singular
  (few tokens, dead input channels);
- `L` is the rank-r correction the adapter must add (`L = s * B @ A`, scaling folded in).

Precision: by default, on CPU every solver works in float64 (it makes the tests'
tolerances meaningful); on an accelerator it works in the input's dtype promoted to at
least float32, which is plenty for a rank-r problem and keeps big layers fast. Every
solver takes `dtype=` to override that choice; the engine passes float32 on every device
(2-3x faster on the CPU, and on real layers ~1e-10 relative on the objective and ~1e-7 on
the reported figures: tests/test_solve_precision.py bounds both). Solvers return `L` in the
working dtype; `split_lora` splits in L's precision and is the one place that casts to
the float32 that peft stores.

No function here touches a model, a file or global state: randomized routines use their
own seeded `torch.Generator`, so calling them never shifts the global RNG stream that
the rest of a run (and its reproducibility) depends on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from quailora_core.config import METHODS  # the one list of methods: the CLI's and the app's too

__all__ = [
    "METHODS",
    "damp",
    "calibrated_error",
    "relative_errors",
    "solve_loftq",
    "solve_exact",
    "solve_als",
    "solve",
    "solve_asymmetric",
    "asymmetric_target",
    "split_lora",
    "safe_solve",
    "DampedGram",
    "KRYLOV_DEPTH",
]

# ALS stops once an iteration improves the damped objective by less than this (relative):
# by then it sits within ~1e-5 of the closed form on real layers (tests/test_engine.py).
ALS_TOL = 1e-10

# Depth of the block Krylov SVD the engine's `exact` uses (`_krylov_left_singular`).
KRYLOV_DEPTH = 8

# Used when mean(diag(H)) is 0 or not finite: the damping is then taken relative to 1.0,
# and never smaller than this, so that `damp` still returns a positive definite matrix.
_ABS_FLOOR = 1e-12
# Minimum oversampling of the randomized range finder (Halko, Martinsson and Tropp, 2011).
_OVERSAMPLE = 10


# --------------------------------------------------------------------------- helpers


def _work_dtype(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.dtype:
    """float64 on CPU (exactness is cheap there), else t's dtype promoted to >= float32."""
    if dtype is not None:
        return dtype
    if t.device.type == "cpu":
        return torch.float64
    return torch.promote_types(t.dtype, torch.float32)


def _eig_floor_rel(dtype: torch.dtype) -> float:
    """Relative eigenvalue floor: 1e-10 in float64, ~1e-5 in float32 (below that is noise)."""
    return max(1e-10, 100.0 * torch.finfo(dtype).eps)


def _require_finite(name: str, t: torch.Tensor) -> None:
    """Raise LinAlgError (a RuntimeError, which safe_solve catches) on NaN/Inf input.

    Failing early with a named reason gives a clearer fallback warning than a NaN that
    surfaces three factorizations later.
    """
    if not bool(torch.isfinite(t).all()):
        raise torch.linalg.LinAlgError(f"{name} contains NaN or Inf")


def _clamp_rank(rank: int, E: torch.Tensor) -> int:
    """A rank-r correction of an `out x in` matrix can have rank at most min(out, in)."""
    if int(rank) < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    return min(int(rank), E.shape[0], E.shape[1])


def _symmetrize(H: torch.Tensor) -> torch.Tensor:
    """Average H with its transpose: X^T X from a BLAS call is not bitwise symmetric. An H
    that already is comes back as it is (no copy of an `in x in` matrix)."""
    return H if torch.equal(H, H.mT) else 0.5 * (H + H.mT)


def _damping_shift(H: torch.Tensor, damping: float) -> float:
    """The scalar `damping * mean(diag(H))` (with the floor described in `damp`)."""
    if damping < 0 or not math.isfinite(damping):
        raise ValueError(f"damping must be a finite number >= 0, got {damping}")
    mean_diag = float(torch.diagonal(H).mean()) if H.shape[0] else 0.0
    if math.isfinite(mean_diag) and mean_diag > 0:
        return damping * mean_diag
    return max(damping, _ABS_FLOOR)


def _add_to_diag(H: torch.Tensor, shift: float) -> torch.Tensor:
    out = H.clone()
    if shift:
        out.diagonal().add_(shift)
    return out


@dataclass
class _Factor:
    """`H_d = C C^T`, from Cholesky (C lower triangular) or from a floored eigendecomposition.

    With eigh, `C = V diag(sqrt(lam))` and `H_d` is replaced by `V diag(lam) V^T` with the
    eigenvalues floored at `max(lam) * rel`: the smallest change that makes it positive
    definite, and one that only matters in directions the inputs never excite.
    """

    C: torch.Tensor
    kind: str  # "cholesky" or "eig"
    lam: torch.Tensor | None = None
    V: torch.Tensor | None = None

    def right_solve(self, R: torch.Tensor) -> torch.Tensor:
        """R @ H_d^-1 without ever forming the inverse."""
        if self.kind == "cholesky":
            return torch.cholesky_solve(R.mT, self.C).mT
        assert self.lam is not None and self.V is not None
        return ((R @ self.V) / self.lam) @ self.V.mT


class DampedGram:
    """One layer input's statistics, prepared once for every layer that reads that input.

    q/k/v read one tensor and so share one `H`, as do gate/up: the damped matrix
    `H_d = H + shift * I` and its factor (Cholesky, or the floored eigendecomposition) are
    then the same for all of them, and factoring `H_d` again per layer is pure waste. Pass a
    `DampedGram` wherever a solver takes `H`; it is used as is when its working dtype,
    device and damping are the ones asked for, and rebuilt from its `H` otherwise.

    The factor is computed on first use, inside the solver, so that a failed factorization
    is one more numerical failure that `safe_solve` turns into a fallback. `H_d` itself is
    never kept: the Cholesky factor is computed in its storage, and products with it are
    `X @ H + shift * X` (`times`). Kept, it was a third `in x in` matrix per input beside H
    and the factor: 127 MB at 5632 inputs in float32, 822 MB at Llama-3-8B's 14336.
    """

    def __init__(self, H: torch.Tensor, damping: float, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:  # fmt: skip
        H = H.to(device=device if device is not None else H.device, dtype=_work_dtype(H, dtype))
        self.H = _symmetrize(H)
        self.damping = float(damping)
        self.shift = _damping_shift(self.H, damping)
        self._factor: _Factor | None = None
        self._finite: bool | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.H.dtype

    @property
    def device(self) -> torch.device:
        return self.H.device

    @property
    def H_d(self) -> torch.Tensor:
        """`H + shift * I`, formed anew each time (a temporary the caller owns)."""
        return _add_to_diag(self.H, self.shift)

    def times(self, X: torch.Tensor) -> torch.Tensor:
        """`X @ H_d`, without forming H_d."""
        return (X @ self.H).add_(X, alpha=self.shift)

    def require_finite(self) -> None:
        """Raise LinAlgError when H has NaN or Inf (checked once)."""
        if self._finite is None:
            self._finite = bool(torch.isfinite(self.H).all()) and math.isfinite(self.shift)
        if not self._finite:
            raise torch.linalg.LinAlgError("H contains NaN or Inf")

    @property
    def factor(self) -> _Factor:
        """`H_d = C C^T` (see `_Factor`), computed once."""
        if self._factor is None:
            self._factor = _factor_spd(self.H_d, remake=lambda: self.H_d)
        return self._factor

    def like(self, damping: float, dtype: torch.dtype, device: torch.device) -> DampedGram:
        """This statistic for (damping, dtype, device): itself when they match, else rebuilt."""
        if self.damping == float(damping) and self.dtype == dtype and self.device == device:
            return self
        return DampedGram(self.H, damping, dtype=dtype, device=device)


GramLike = torch.Tensor | DampedGram


def _plain(H: GramLike) -> torch.Tensor:
    """The undamped H of a tensor or a `DampedGram`."""
    return H.H if isinstance(H, DampedGram) else H


def _factor_spd(H_d: torch.Tensor, remake: Callable[[], torch.Tensor] | None = None) -> _Factor:
    """Factor a symmetric PSD matrix; Cholesky first, floored eigendecomposition if it fails.

    With `remake` (which forms H_d again), H_d is a temporary: Cholesky overwrites it with
    its factor, so no second `in x in` matrix is allocated, and the eigendecomposition, if
    needed, starts from a fresh one.
    """
    _require_finite("H", H_d)
    if remake is None:
        C, info = torch.linalg.cholesky_ex(H_d)
    else:
        C, info = torch.linalg.cholesky_ex(H_d, out=(H_d, torch.empty((), dtype=torch.int32, device=H_d.device)))
    if int(info) == 0 and bool(torch.isfinite(C).all()):
        return _Factor(C=C, kind="cholesky")
    if remake is not None:
        del C
        H_d = remake()
    lam, V = torch.linalg.eigh(H_d)
    top = float(lam.max()) if lam.numel() else 0.0
    floor = max(top, 0.0) * _eig_floor_rel(H_d.dtype)
    if not floor > 0:
        floor = _ABS_FLOOR
    lam = lam.clamp_min(floor)
    return _Factor(C=V * lam.sqrt(), kind="eig", lam=lam, V=V)


def _solve_small_spd(G: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Solve G X = R for a small (r x r) symmetric PSD G, adding a ridge only if singular.

    The ridge is what keeps ALS defined when E has rank < r (e.g. an all-zero error):
    the degenerate columns then stay exactly zero instead of becoming NaN.
    """
    G = _symmetrize(G)
    Lc, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0 and bool(torch.isfinite(Lc).all()):
        return torch.cholesky_solve(R, Lc)
    r = G.shape[0]
    scale = float(torch.diagonal(G).abs().mean()) if r else 0.0
    if not (math.isfinite(scale) and scale > 0):
        scale = 1.0
    eye = torch.eye(r, dtype=G.dtype, device=G.device)
    for rel in (1e-12, 1e-9, 1e-6, 1e-3):
        Lc, info = torch.linalg.cholesky_ex(G + (rel * scale) * eye)
        if int(info) == 0 and bool(torch.isfinite(Lc).all()):
            return torch.cholesky_solve(R, Lc)
    return torch.linalg.pinv(G, hermitian=True) @ R


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _randomized_range(M: torch.Tensor, q: int, niter: int, generator: torch.Generator | None) -> torch.Tensor:
    """Orthonormal basis (m x q) of the dominant range of M, with `niter` power iterations.

    The same algorithm as torch.svd_lowrank (Halko et al. 2011, Alg. 4.4, QR between every
    product), written out so that it draws from a private generator (on CPU, then moved)
    instead of the global RNG.
    """
    g = _default_generator(generator)
    omega = torch.randn(M.shape[1], q, generator=g, dtype=M.dtype).to(M.device)
    Qm = torch.linalg.qr(M @ omega).Q
    for _ in range(niter):
        Z = torch.linalg.qr(M.mT @ Qm).Q
        Qm = torch.linalg.qr(M @ Z).Q
    return Qm


def _top_left_singular(
    M: torch.Tensor, k: int, randomized: bool, niter: int, generator: torch.Generator | None
) -> torch.Tensor:
    """The top-k left singular vectors of M (m x k), exactly or by a randomized SVD.

    The sketch has 3k columns (at least k + 10). Quantization error is close to white, so
    E C has a flat spectrum, the hard case for randomized SVD: on a 4096 x 4096 NF4 layer
    with r = 64 and 4 power iterations, k + 10 columns left a 6.7e-3 relative objective gap
    to the exact SVD, 2k columns 1.5e-3, 3k columns 3.2e-4 (r = 16: 2.7e-4, r = 128: 5.9e-5),
    i.e. inside the 1e-3 that ALGORITHM.md allows.
    """
    if randomized:
        q = min(k + max(_OVERSAMPLE, 2 * k), M.shape[0], M.shape[1])
        if q < min(M.shape):
            Qm = _randomized_range(M, q, niter, generator)
            Ub = torch.linalg.svd(Qm.mT @ M, full_matrices=False).U
            return Qm @ Ub[:, :k]
    return torch.linalg.svd(M, full_matrices=False).U[:, :k]


def _krylov_left_singular(
    M: torch.Tensor, k: int, depth: int, generator: torch.Generator | None, tol: float = 1e-6
) -> torch.Tensor:
    """The top-k left singular vectors of M (m x k) from a block Krylov space.

    Randomized block Krylov (Musco and Musco, 2015): the span of `M Omega, (M M^T) M Omega,
    ..., (M M^T)^depth M Omega` with `b = max(k + 10, 2k)` Gaussian columns, each block
    orthogonalized against the earlier ones twice (once is not enough in float32), then
    Rayleigh-Ritz. Unlike the power iterations of `_top_left_singular`, it keeps every
    block, which is what makes it fast on the flat spectra of quantization error: on a
    1024 x 1024 layer with three outlier input channels (r = 16), depth 8 left a 4e-8
    relative objective gap to the full SVD where 16 power iterations left 3e-6, at about a
    sixth of the full SVD's time in float32 (tests/test_solvers.py bounds it on such a
    layer). It stops before `depth` once a block adds less than `tol` (relative to the
    objective, the energy outside the top k) to the energy the best k directions of the
    space capture: that left gaps of 2e-9 or less on real layers after 3 to 5 blocks. When the space would span half
    of M anyway, the full SVD is cheaper.
    """
    m, n = M.shape
    b = max(k + _OVERSAMPLE, 2 * k)
    if b * (depth + 1) > min(m, n) // 2:
        return torch.linalg.svd(M, full_matrices=False).U[:, :k]
    g = _default_generator(generator)
    omega = torch.randn(n, b, generator=g, dtype=M.dtype).to(M.device)
    basis = torch.linalg.qr(M @ omega).Q
    block = basis
    total = float(torch.linalg.norm(M)) ** 2
    rows = (M.mT @ basis).mT  # basis^T M, one block of rows per block of the basis
    captured = float(torch.linalg.eigvalsh(rows @ rows.mT)[-k:].sum())
    for _ in range(depth):
        Z = M @ rows[-block.shape[1]:].mT
        size = float(torch.linalg.norm(Z))
        for _ in range(2):
            Z = Z - basis @ (basis.mT @ Z)
        if not float(torch.linalg.norm(Z)) > 1e3 * torch.finfo(M.dtype).eps * size:
            break  # the space is invariant: M has no further directions to add
        block = torch.linalg.qr(Z).Q
        block = torch.linalg.qr(block - basis @ (basis.mT @ block)).Q
        basis = torch.cat([basis, block], dim=1)
        rows = torch.cat([rows, (M.mT @ block).mT], dim=0)
        now = float(torch.linalg.eigvalsh(rows @ rows.mT)[-k:].sum())
        done = now - captured <= tol * max(total - now, 0.0)
        captured = now
        if done:
            break
    Ub = torch.linalg.svd(rows, full_matrices=False).U
    return basis @ Ub[:, :k]


def _prepare(
    E: torch.Tensor, H: GramLike, damping: float, dtype: torch.dtype | None
) -> tuple[torch.Tensor, DampedGram]:
    wd = _work_dtype(E, dtype)
    E = E.to(wd)
    _require_finite("E", E)
    if isinstance(H, DampedGram):
        gram = H.like(damping, wd, E.device)
    else:
        gram = DampedGram(H, damping, dtype=wd, device=E.device)
    gram.require_finite()
    return E, gram


# --------------------------------------------------------------------------- objectives


def damp(H: torch.Tensor, damping: float) -> torch.Tensor:
    """`H_d = H + damping * mean(diag(H)) * I` (the GPTQ convention, default 0.01).

    Damping is a mixture of the calibrated and uncalibrated objectives: it keeps the
    problem well posed when H is singular and stops the start from over-fitting the
    calibration tokens. The shift is relative to mean(diag(H)), so it does not depend on
    the activation scale. If that mean is 0 (a layer that saw only zeros) or not finite,
    the shift is `max(damping, 1e-12)` in absolute terms so that H_d is still positive
    definite (with NaN in H the result keeps the NaN; the solvers then refuse it).
    With `damping=0` and a healthy diagonal, H is returned unchanged (symmetrized): the
    solvers then deal with a singular H through an eigenvalue floor.
    """
    H = _symmetrize(H)
    return _add_to_diag(H, _damping_shift(H, damping))


def calibrated_error(D: torch.Tensor, H: torch.Tensor) -> float:
    """`tr(D H D^T)` = `||D X^T||_F^2 / N`, as `sum((D @ H) * D)` (never forms D H D^T).

    That costs one `out x in x in` product and O(out * in) memory instead of an extra
    `out x out` matrix.
    """
    wd = _work_dtype(D)
    D = D.to(wd)
    H = H.to(device=D.device, dtype=wd)
    return float(((D @ H) * D).sum())


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 and math.isfinite(den) else float("nan")


def _low_rank_factors(L: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(P, Z)` with `L = P @ Z` to round-off (`P` orthonormal, rank + 10 columns), or None
    when L is not of rank <= rank + 10 (the range check of `_low_rank_svd`) or when the
    sketch would be too wide to save anything."""
    m, n = L.shape
    q = int(rank) + _OVERSAMPLE
    if q > min(m, n) // 4:
        return None
    P = _randomized_range(L, q, 0, None)
    Z = P.mT @ L
    scale = float(torch.linalg.norm(L))
    if not float(torch.linalg.norm(L - P @ Z)) <= 1e3 * torch.finfo(L.dtype).eps * max(scale, 1e-300):
        return None
    return P, Z


def _inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """sum(a * b) without the elementwise product as a temporary matrix."""
    return float(torch.dot(a.reshape(-1), b.reshape(-1)))


def relative_errors(
    W: torch.Tensor,
    E: torch.Tensor,
    L: torch.Tensor | None,
    H: GramLike,
    H_heldout: GramLike | None = None,
    *,
    rank: int | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Per-layer metrics of ALGORITHM.md, relative to the weight itself.

    - `cal_err_before = tr(E H E^T) / tr(W H W^T)`, `cal_err_after` the same with E - L
      (ratios of squared norms: fraction of output energy lost);
    - `uncal_err_before = ||E||_F / ||W||_F`, `uncal_err_after = ||E - L||_F / ||W||_F`
      (ratios of norms, as the spec defines them);
    - `heldout_err_before/after`: the calibrated figures with `H_heldout`, NaN without it.

    `L=None` means no correction (plain QLoRA): after == before. The undamped H is used
    on purpose: these numbers are what the adapter really achieves on the tokens. A zero
    denominator (a zero weight, or inputs that never excite it) gives NaN rather than a
    made-up 0 or inf, so charts show a gap instead of a lie.

    Cost: `tr(D H D^T) = <H, D^T D>`, so `W^T W` and `E^T E` (two `out x in x in` products,
    the same as two `D @ H`) serve the calibration and the held-out figures alike, each
    figure then an O(in^2) sum; a layer narrower out than in (a down projection) takes
    `<D H, D>` instead, whose temporary is `out x in`, not `in x in`. With `rank` (L has rank <= rank, as every solver's L has),
    L is factored as `P Z` by a sketch and the after-figure is
    `tr(E H E^T) - 2 <Z H, P^T E> + <P^T P, Z H Z^T>`, O(rank * in^2). That subtracts
    nearly equal terms when the correction removes most of the error, so where the result
    is below 1/16 of the before-figure it is recomputed as `<H, R^T R>` (a third product):
    the cancellation then costs at most 16x the working precision, ~1e-6 relative in float32
    (`dtype`: what the engine passes; tests/test_solvers.py bounds it against float64). The
    default dtype is the solvers' usual: float64 on the CPU.
    """
    wd = _work_dtype(E, dtype)
    W = W.to(wd)
    dev = W.device
    E = E.to(device=dev, dtype=wd)
    Lw = None if L is None else L.to(device=dev, dtype=wd)
    R = E if Lw is None else E - Lw
    # <H, D^T D> through D^T D (in x in) when the layer is at least as wide out as in, else
    # through D H (out x in): the smaller matrix, for the memory of down projections
    gram_form = W.shape[0] >= W.shape[1]
    WtW, EtE = (W.mT @ W, E.mT @ E) if gram_form else (W, E)

    def quad(D: torch.Tensor, Hm: torch.Tensor) -> float:
        """<H, D^T D> = tr(D H D^T), with D given as D^T D (gram_form) or as D itself; no
        in x in temporary."""
        return _inner(Hm, D) if gram_form else _inner(D @ Hm, D)
    factors = _low_rank_factors(Lw, rank) if Lw is not None and rank is not None else None
    if factors is not None:
        P, Z = factors
        PtE, PtP = P.mT @ E, P.mT @ P
    direct: list[torch.Tensor] = []  # R^T R, made only when a figure needs it

    def after_direct(Hm: torch.Tensor) -> float:
        if not direct:
            direct.append(R.mT @ R if gram_form else R)
        return quad(direct[0], Hm)

    def cal(Hm: GramLike) -> tuple[float, float]:
        Hm = _plain(Hm).to(device=dev, dtype=wd)
        den = quad(WtW, Hm)
        before = quad(EtE, Hm)
        if Lw is None:
            after = before
        elif factors is not None:
            ZH = Z @ Hm
            after = float(before - 2.0 * _inner(ZH, PtE) + _inner(PtP, ZH @ Z.mT))
            if not after > before / 16:
                after = after_direct(Hm)
        else:
            after = after_direct(Hm)
        return _ratio(before, den), _ratio(after, den)

    cal_before, cal_after = cal(H)
    if H_heldout is not None:
        ho_before, ho_after = cal(H_heldout)
    else:
        ho_before = ho_after = float("nan")
    w_norm = float(torch.linalg.norm(W))
    return {
        "cal_err_before": cal_before,
        "cal_err_after": cal_after,
        "uncal_err_before": _ratio(float(torch.linalg.norm(E)), w_norm),
        "uncal_err_after": _ratio(float(torch.linalg.norm(R)), w_norm),
        "heldout_err_before": ho_before,
        "heldout_err_after": ho_after,
    }


# --------------------------------------------------------------------------- solvers


def solve_loftq(E: torch.Tensor, rank: int, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uncalibrated optimum `argmin_{rank L <= r} ||E - L||_F`: the rank-r truncated SVD.

    This is LoftQ with one alternation and Q held fixed (Q must stay what bitsandbytes
    produces, so it cannot be re-optimized). Eckart-Young: the residual is the sum of the
    squared tail singular values.
    """
    E = E.to(_work_dtype(E, dtype))
    _require_finite("E", E)
    k = _clamp_rank(rank, E)
    U, S, Vh = torch.linalg.svd(E, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


def solve_exact(
    E: torch.Tensor,
    H: GramLike,
    rank: int,
    damping: float = 0.01,
    randomized: bool = False,
    niter: int = 4,
    *,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    krylov: int | None = None,
) -> torch.Tensor:
    """Global optimum of the damped calibrated objective `tr((E - L) H_d (E - L)^T)`.

    With `H_d = C C^T`, the objective is `||E C - L C||_F^2`, so by Eckart-Young the best
    rank-r `L C` is the truncated SVD `U_r S_r V_r^T` of `E C` and `L* = U_r S_r V_r^T C^-1`
    (the CLoQ / EoRA closed form). Because `U_r S_r V_r^T = U_r U_r^T E C`, that is
    algebraically the same matrix as `L* = U_r (U_r^T E)`, which is what we compute: no
    triangular solve with C (so no amplification by a badly conditioned C), and
    O(out * in * r) instead of O(out * in^2) for the last step. The optimal value is the
    sum of the squared tail singular values of `E C`.

    C is the Cholesky factor of H_d; if Cholesky fails (damping 0 with a singular H) it is
    `V diag(sqrt(lam))` from eigh with eigenvalues floored at `max(lam) * 1e-10` (float64).
    `randomized=True` replaces the full SVD of E C by a randomized range finder with
    `niter` power iterations and a private seeded generator (deterministic); `krylov=depth`
    replaces it by a block Krylov space of that depth (`_krylov_left_singular`), which is
    what the engine uses: as accurate as the full SVD on real layers at a fraction of its cost.
    `H` may be a `DampedGram`, whose factor is then reused (one per distinct input).
    """
    E, gram = _prepare(E, H, damping, dtype)
    k = _clamp_rank(rank, E)
    return _exact_core(E, gram.factor, k, randomized, niter, generator, krylov)


def _exact_core(
    E: torch.Tensor,
    fac: _Factor,
    k: int,
    randomized: bool,
    niter: int,
    generator: torch.Generator | None,
    krylov: int | None = None,
) -> torch.Tensor:
    M = E @ fac.C
    if krylov:
        U = _krylov_left_singular(M, k, krylov, generator)
    else:
        U = _top_left_singular(M, k, randomized, niter, generator)
    return U @ (U.mT @ E)


def _als_objective(c: torch.Tensor, B: torch.Tensor, EHAt: torch.Tensor, G: torch.Tensor) -> float:
    """`tr((E - BA) H_d (E - BA)^T) = tr(E H_d E^T) - 2 tr(B^T E H_d A^T) + tr(B G B^T)`.

    With `G = A H_d A^T` and `E H_d A^T` already at hand this costs O(out * r^2).
    """
    return float(c - 2.0 * (B * EHAt).sum() + ((B @ G) * B).sum())


def solve_als(
    E: torch.Tensor,
    H: GramLike,
    rank: int,
    damping: float = 0.01,
    iters: int = 20,
    tol: float = 0.0,
    return_history: bool = False,
    *,
    dtype: torch.dtype | None = None,
    randomized_init: bool = False,
    generator: torch.Generator | None = None,
):
    """QuAILoRA's alternating least squares on `tr((E - B A) H_d (E - B A)^T)`.

    Start: the uncalibrated rank-r SVD of E, split evenly (`B = U sqrt(S)`,
    `A = sqrt(S) V^T`), as the paper does. Then alternate the two exact block minimizers:

    - `B <- E H_d A^T (A H_d A^T)^-1` (set d/dB = 0);
    - `A <- (B^T B)^-1 B^T E`: d/dA gives `B^T (E - B A) H_d = 0`, and since H_d is
      positive definite this is the unweighted least-squares step, H_d drops out.

    Each step is an exact minimization over one block, so the objective cannot increase.
    Only r x r systems are solved (Cholesky, ridge only if singular). `E H_d` is formed once
    (O(out * in^2)); an iteration then costs three O(out * in * r)-sized products.

    Order: the SVD start is already A-optimal for its B (the A-step above returns it
    unchanged), so each iteration does the B-step first and then the A-step; this is the
    paper's alternation with the no-op step left out.

    `tol > 0` stops when an iteration improves the objective by less than `tol`
    (relative). Returns `L = B A`, or `(L, history)` with `history[0]` the objective of the
    SVD start and `history[i]` the objective after iteration i. If round-off ever makes an
    iterate worse, the best one seen is returned.
    """
    E, gram = _prepare(E, H, damping, dtype)
    k = _clamp_rank(rank, E)
    if randomized_init:
        # A randomized rank-k SVD of E: B = U (orthonormal), A = U^T E is its best A.
        B = _top_left_singular(E, k, True, 4, generator)
        A = B.mT @ E
    else:
        U, S, Vh = torch.linalg.svd(E, full_matrices=False)
        sq = S[:k].sqrt()
        B = U[:, :k] * sq
        A = sq[:, None] * Vh[:k]

    EH = gram.times(E)
    c = (EH * E).sum()

    def quantities(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        EHAt = EH @ A.mT  # out x r
        G = A @ gram.times(A).mT  # r x r: A H_d A^T, H_d symmetric
        return EHAt, G

    EHAt, G = quantities(A)
    best_f = _als_objective(c, B, EHAt, G)
    best = (B, A)
    history = [best_f]
    prev = best_f
    for _ in range(int(iters)):
        B = _solve_small_spd(G, EHAt.mT).mT
        A = _solve_small_spd(B.mT @ B, B.mT @ E)
        EHAt, G = quantities(A)
        f = _als_objective(c, B, EHAt, G)
        history.append(f)
        if f <= best_f:
            best_f, best = f, (B, A)
        if tol > 0 and (prev - f) < tol * abs(prev):
            break
        prev = f
    L = best[0] @ best[1]
    return (L, history) if return_history else L


def solve(
    method: str,
    E: torch.Tensor,
    H: GramLike,
    rank: int,
    damping: float = 0.01,
    als_iters: int = 20,
    *,
    randomized: bool = False,
    tol: float = 0.0,
    dtype: torch.dtype | None = None,
    krylov: int | None = None,
) -> torch.Tensor | None:
    """Dispatch on the run's `method`; `None` means "no correction" (plain QLoRA, B = 0).

    - `qlora`: None; `loftq`: truncated SVD of E; `quailora`: ALS (`als_iters`, `tol`);
    - `exact`: the closed form (`randomized` picks the randomized SVD, `krylov` a block
      Krylov SVD of that depth; for `quailora`, `randomized` picks a randomized SVD start).
    """
    if method == "qlora":
        return None
    if method == "loftq":
        return solve_loftq(E, rank, dtype=dtype)
    if method == "quailora":
        return solve_als(
            E, H, rank, damping=damping, iters=als_iters, tol=tol, dtype=dtype, randomized_init=randomized
        )
    if method == "exact":
        return solve_exact(E, H, rank, damping=damping, randomized=randomized, dtype=dtype, krylov=krylov)
    raise ValueError(f"Unknown method {method!r}; expected one of {', '.join(METHODS)}.")


def solve_asymmetric(
    W: torch.Tensor,
    Q: torch.Tensor,
    H_q: GramLike,
    C_cross: torch.Tensor,
    rank: int,
    damping: float = 0.01,
    *,
    randomized: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Best rank-r L for `min_L ||W X_fp^T - (Q + L) X_q^T||_F^2 / N` (the `asymmetric` source).

    The layer is asked to produce the full-precision output from the input that the
    quantized model really feeds it. With `H_q = X_q^T X_q / N` and
    `C_cross = X_fp^T X_q / N` (both `in x in`; note the order), the objective is
    `const - 2 tr(W C (Q+L)^T) + tr((Q+L) H_q (Q+L)^T)`, whose unconstrained minimizer is
    `L0 = (W C - Q H_q) H_q^-1`; the objective equals `const + tr((L - L0) H_q (L - L0)^T)`,
    so the rank-r optimum is `solve_exact(L0, H_q, rank)`.

    Damping: we add `lambda * mu * ||E - L||_F^2` (mu = mean(diag(H_q))), i.e. the same
    shift on H_q *and* on C: `L0 = (W (C + shift I) - Q H_qd) H_qd^-1`. That is the
    calibrated/uncalibrated mixture of `damp`, and it makes the method coincide exactly
    with `solve_exact(E, H, rank, damping)` when `X_q == X_fp`. (Damping only H_q would
    instead shrink `Q + L` towards zero.)
    """
    k = _clamp_rank(rank, W)
    L0, fac = _asymmetric_target(W, Q, H_q, C_cross, damping, dtype)
    return _exact_core(L0, fac, k, randomized, 4, None)


def asymmetric_target(
    W: torch.Tensor,
    Q: torch.Tensor,
    H_q: GramLike,
    C_cross: torch.Tensor,
    damping: float = 0.01,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The unconstrained damped optimum `L0 = (W (C + shift I) - Q H_qd) H_qd^-1` (see above).

    Since the asymmetric objective is `const + tr((L - L0) H_qd (L - L0)^T)`, feeding
    `(L0, H_q)` to any solver in place of `(E, H)` (`solve(method, L0, H_q, ...)`, the same
    `damping`) gives that method's asymmetric answer; `solve_asymmetric` is the `exact` case.
    """
    return _asymmetric_target(W, Q, H_q, C_cross, damping, dtype)[0]


def _asymmetric_target(W, Q, H_q, C_cross, damping, dtype) -> tuple[torch.Tensor, _Factor]:
    wd = _work_dtype(W, dtype)
    W = W.to(wd)
    dev = W.device
    Q = Q.to(device=dev, dtype=wd)
    gram = H_q.like(damping, wd, dev) if isinstance(H_q, DampedGram) else DampedGram(H_q, damping, dtype=wd, device=dev)
    C_cross = C_cross.to(device=dev, dtype=wd)
    for name, t in (("W", W), ("Q", Q), ("H_q", gram.H), ("C_cross", C_cross)):
        _require_finite(name, t)
    fac = gram.factor
    return fac.right_solve(W @ _add_to_diag(C_cross, gram.shift) - gram.times(Q)), fac


# --------------------------------------------------------------------------- peft factors


def _kaiming_a(rank: int, n_in: int, generator: torch.Generator | None) -> torch.Tensor:
    """peft's default lora_A init: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in))."""
    A = torch.empty(rank, n_in, dtype=torch.float32)
    torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
    return A


def _low_rank_svd(L: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k SVD of L, cheaply when L has rank <= k (which every solver's output has).

    A Gaussian sketch `L Omega` with k + 10 columns spans range(L) exactly when rank(L) <= k,
    so the SVD of the small `(k + 10) x in` matrix `Q^T L` is L's SVD: O(out * in * k)
    instead of a full SVD. If the residual `L - Q Q^T L` is not at round-off level (L was
    not low-rank), fall back to the full SVD and truncate.
    """
    m, n = L.shape
    q = min(k + _OVERSAMPLE, m, n)
    if q < min(m, n):
        Qm = _randomized_range(L, q, 1, None)
        P = Qm.mT @ L
        resid = float(torch.linalg.norm(L - Qm @ P))
        scale = float(torch.linalg.norm(L))
        if resid <= 1e3 * torch.finfo(L.dtype).eps * max(scale, 1e-300):
            Ub, S, Vh = torch.linalg.svd(P, full_matrices=False)
            return (Qm @ Ub)[:, :k], S[:k], Vh[:k]
    U, S, Vh = torch.linalg.svd(L, full_matrices=False)
    return U[:, :k], S[:k], Vh[:k]


def split_lora(
    L: torch.Tensor | None,
    scaling: float,
    rank: int,
    *,
    shape: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    pad: str = "trainable",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split L into peft's `(A, B)` (float32, contiguous) with `scaling * B @ A == L`.

    With `L = U S V^T`: `B = U sqrt(S) / sqrt(s)` (`out x r`), `A = sqrt(S) V^T / sqrt(s)`
    (`r x in`). The even split gives A and B the same scale, which keeps both learning at
    the same rate; dividing out `s` (alpha/r or alpha/sqrt(r) for rsLoRA) is the step
    peft's own LoftQ init forgets.

    Missing directions (L has rank < r, singular values below float32 resolution, or
    r > min(out, in)): B gets zero columns, so `B @ A` is unchanged. With the default
    `pad="trainable"` the matching rows of A get peft's default kaiming-uniform init, so
    those directions learn exactly as in plain LoRA; with `pad="zeros"` they are zero in
    both A and B, which reproduces L just as well but leaves those rank slots with zero
    gradient for the whole run.

    `L=None` (plain QLoRA) gives peft's default init: `B = 0`, `A` kaiming-uniform with
    `a=sqrt(5)`; `shape=(out, in)` is then required. Random draws use `generator` (CPU)
    when given, so the adapter is reproducible.
    """
    if not (math.isfinite(scaling) and scaling > 0):
        raise ValueError(f"LoRA scaling must be a finite number > 0, got {scaling}")
    if int(rank) < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if pad not in ("trainable", "zeros"):
        raise ValueError(f"pad must be 'trainable' or 'zeros', got {pad!r}")
    r = int(rank)
    if L is None:
        if shape is None:
            raise ValueError("split_lora(None, ...) needs shape=(out, in)")
        n_out, n_in = int(shape[0]), int(shape[1])
        dev = torch.device(device) if device is not None else torch.device("cpu")
        A = _kaiming_a(r, n_in, generator).to(dev)
        B = torch.zeros(n_out, r, dtype=torch.float32, device=dev)
        return A.contiguous(), B.contiguous()

    dev = torch.device(device) if device is not None else L.device
    # L's own precision (at least float32): an L solved in float32 is of rank r only to
    # float32 round-off, so a float64 split would miss `_low_rank_svd`'s range check and
    # fall back to a full SVD (0.6 s on a 1024 x 1024 layer, more than the solve itself)
    wd = torch.promote_types(L.dtype, torch.float32)
    Lw = L.to(wd)
    _require_finite("L", Lw)
    n_out, n_in = Lw.shape
    k = min(r, n_out, n_in)
    U, S, Vh = _low_rank_svd(Lw, k)
    s_max = float(S[0]) if S.numel() else 0.0
    keep = int((S > s_max * torch.finfo(torch.float32).eps).sum()) if s_max > 0 else 0
    root = (S[:keep] / scaling).sqrt()
    B = torch.zeros(n_out, r, dtype=torch.float32, device=dev)
    B[:, :keep] = (U[:, :keep] * root).to(device=dev, dtype=torch.float32)
    if keep < r and pad == "trainable":
        A = _kaiming_a(r, n_in, generator).to(dev)
    else:
        A = torch.zeros(r, n_in, dtype=torch.float32, device=dev)
    A[:keep] = (root[:, None] * Vh[:keep]).to(device=dev, dtype=torch.float32)
    return A.contiguous(), B.contiguous()


# --------------------------------------------------------------------------- safety net


def _finite(L: torch.Tensor | None) -> bool:
    return L is None or bool(torch.isfinite(L).all())


def safe_solve(
    method: str,
    E: torch.Tensor,
    H: GramLike,
    rank: int,
    damping: float = 0.01,
    als_iters: int = 20,
    **options,
) -> tuple[torch.Tensor | None, str, str | None]:
    """`solve`, but numerical trouble degrades the layer instead of killing the run.

    Returns `(L, used_method, warning)`. If the chosen method raises a linear-algebra or
    runtime error, or returns NaN/Inf, the layer falls back to `loftq` (which needs no H,
    the usual culprit) and `warning` says which method failed and why; if even that fails
    (E itself is not finite) it falls back to `qlora` (L = None, B = 0). Configuration
    mistakes (unknown method, rank < 1) still raise ValueError, and running out of memory
    still raises torch.OutOfMemoryError: those are not numerical and the caller must see them.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {', '.join(METHODS)}.")
    if int(rank) < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    reason = ""
    try:
        L = solve(method, E, H, rank, damping=damping, als_iters=als_iters, **options)
        if _finite(L):
            return L, method, None
        reason = "the result contained NaN or Inf"
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:  # torch.linalg.LinAlgError is a RuntimeError
        reason = f"{type(exc).__name__}: {exc}".strip()
    if method != "loftq":
        try:
            L = solve_loftq(E, rank, dtype=options.get("dtype"))
            if _finite(L):
                return L, "loftq", f"{method} failed ({reason}); fell back to loftq (uncalibrated SVD)."
            reason2 = "the result contained NaN or Inf"
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            reason2 = f"{type(exc).__name__}: {exc}".strip()
        reason = f"{reason}; loftq also failed ({reason2})"
    return None, "qlora", f"{method} failed ({reason}); fell back to qlora (B = 0)."
