"""Second-moment statistics of layer inputs, accumulated with forward hooks.

For each targeted Linear we need `H = X^T X / N` over the calibration tokens (padding
excluded) without keeping `X`: memory stays constant in N. Layers that read the very
same tensor (q/k/v read the normed hidden state, gate/up read the same MLP input) share
one accumulator, found at run time from tensor identity rather than from a table of
module names, so any architecture works. The asymmetric input source also needs the
cross moment `X_fp^T X_q / N`, for which the hook pairs each layer's full-precision
input with its quantized-path input on the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def accumulation_dtype(device: torch.device, paired: bool = False) -> torch.dtype:
    """float32: ample for sums of per-batch products, each of which is itself computed in
    float32, and half the memory (a 14336-wide MLP input's matrix is 0.8 GB in float32).
    `paired` statistics (the asymmetric source, whose error is a difference of such sums)
    stay float64 on the CPU, where they cost memory but no speed."""
    return torch.float64 if paired and device.type == "cpu" else torch.float32


def token_rows(x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """The rows of a layer input `(batch, ..., seq, in)` that belong to real tokens, as an
    `N x in` matrix. Most inputs are `(batch, seq, in)`; some carry a head axis in between
    (DeepSeek's `kv_b_proj` reads `(batch, 1, seq, rank)`), and the mask is broadcast over it;
    some are flattened to `(batch * seq, in)` (OPT's MLP)."""
    if x.dim() == 2 and x.shape[0] == token_mask.numel():
        return x[token_mask.reshape(-1).to(x.device)]
    if x.dim() < 3 or x.shape[0] != token_mask.shape[0] or x.shape[-2] != token_mask.shape[1]:
        raise ValueError(f"a layer input of shape {tuple(x.shape)} does not line up with the tokens {tuple(token_mask.shape)}")
    mask = token_mask.view(token_mask.shape[0], *([1] * (x.dim() - 3)), token_mask.shape[1]).expand(x.shape[:-1])
    return x[mask.to(x.device)]


class Moment:
    """Running `sum x^T y` and token count; `.mean()` gives the `in x in` moment matrix."""

    def __init__(self, dim: int, device: torch.device, dtype: torch.dtype | None = None,
                 symmetric: bool = True) -> None:  # fmt: skip
        self.sum = torch.zeros(dim, dim, dtype=dtype or accumulation_dtype(device), device=device)
        self.count = 0
        self.symmetric = symmetric  # X^T X (a cross moment X^T Y is not)
        self._is_mean = False

    def add(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        xf = x.float()
        yf = xf if y is None else y.float()
        if self._is_mean:  # more tokens after a mean was taken: back to a sum
            self.sum.mul_(max(self.count, 1))
            self._is_mean = False
        self.sum += (xf.T @ yf).to(self.sum.dtype)
        self.count += x.shape[0]

    def mean(self) -> torch.Tensor:
        """The moment matrix, made once after the last `add` by dividing the sum in place (one
        `in x in` matrix per input, not two; every layer that reads this input shares it); do
        not modify it in place."""
        if not self._is_mean:
            self.sum.div_(max(self.count, 1))
            if self.symmetric:
                _symmetrize_in_place(self.sum)
            self._is_mean = True
        return self.sum


def _symmetrize_in_place(h: torch.Tensor, rows: int = 512) -> None:
    """h <- (h + h^T) / 2 in strips of `rows` rows (X^T X from BLAS is not bitwise symmetric,
    and the solvers want it symmetric), without a second `in x in` matrix."""
    n = h.shape[0]
    for i in range(0, n, rows):
        strip = 0.5 * (h[i : i + rows, i:] + h[i:, i : i + rows].mT)
        h[i : i + rows, i:] = strip
        h[i:, i : i + rows] = strip.mT


class GramCollector:
    """Forward pre-hooks on a block's target Linears that accumulate input moments.

    Usage per batch: `collector.begin(token_mask, key)`, run the block, repeat. `key`
    names the stream ("cal", "heldout", ...), so calibration and held-out statistics are
    kept apart. `shared[name]` tells which accumulator a layer reads (layers with the
    same group index share one Gram matrix).
    """

    def __init__(self, modules: dict[str, nn.Module], device: torch.device, paired: bool = False) -> None:
        self.modules = modules
        self.device = device
        self.dtype = accumulation_dtype(device, paired)
        self.group_of: dict[str, int] = {}
        self.moments: dict[tuple[str, int], Moment] = {}
        self._mask: torch.Tensor | None = None
        self._key = "cal"
        self._seen: dict[int, tuple[int, torch.Tensor]] = {}
        self._stash: dict[str, torch.Tensor] | None = None
        self._mode = "gram"
        self._derived: dict[tuple[str, int, Any], Any] = {}
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in modules.items()]

    def begin(self, token_mask: torch.Tensor, key: str, mode: str = "gram") -> None:
        """Prepare for one batch. mode: "gram" accumulates X^T X; "stash" keeps this batch's
        inputs for a following "cross" pass and accumulates their Gram under "fp:<key>";
        "cross" accumulates X_stash^T X (under "cross:<key>") and X^T X (under <key>)."""
        self._mask = token_mask
        self._key = key
        self._seen = {}
        self._mode = mode
        self._derived = {}  # more tokens are coming: what was derived from the sums is stale
        if mode == "stash":
            self._stash = {}

    def _hook(self, name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            flat = token_rows(x, self._mask)
            if self._mode == "stash":
                assert self._stash is not None
                self._stash[name] = flat
            group = self._group(name, x)
            if group is None:  # another layer already added this very tensor
                return
            if self._mode == "cross":
                assert self._stash is not None
                self._moment(("cross:" + self._key, group), x.shape[-1]).add(self._stash[name], flat)
            key = "fp:" + self._key if self._mode == "stash" else self._key
            self._moment((key, group), x.shape[-1]).add(flat)

        return hook

    def _group(self, name: str, x: torch.Tensor) -> int | None:
        """Group index for this layer; None when another layer already added this very tensor."""
        seen = self._seen.get(id(x))
        if seen is not None and seen[1] is x:
            self.group_of.setdefault(name, seen[0])
            return None
        group = self.group_of.setdefault(name, len(set(self.group_of.values())))
        # keep a reference for the rest of the batch: a freed tensor's id can be reused
        self._seen[id(x)] = (group, x)
        return group

    def _moment(self, key: tuple[str, int], dim: int) -> Moment:
        if key not in self.moments:
            self.moments[key] = Moment(dim, self.device, self.dtype, symmetric=not key[0].startswith("cross:"))
        return self.moments[key]

    def gram(self, name: str, key: str = "cal") -> torch.Tensor | None:
        """`H = X^T X / N` for layer `name` on stream `key` (None if that stream was not run)."""
        m = self.moments.get((key, self.group_of[name]))
        return None if m is None else m.mean()

    def cross(self, name: str, key: str = "cal") -> torch.Tensor | None:
        """`X_stash^T X / N` for layer `name` (asymmetric source)."""
        m = self.moments.get(("cross:" + key, self.group_of[name]))
        return None if m is None else m.mean()

    def derived(self, name: str, key: str, tag: Any, make: Callable[[torch.Tensor], Any]) -> Any:
        """`make(H)` for the input layer `name` reads on stream `key`, computed once per distinct
        input and `tag`: the layers that share one accumulator (q/k/v, gate/up) then share
        what is derived from it too (the damped H and its Cholesky factor: factoring it
        again per layer would repeat identical work). None if that stream was not run."""
        group = self.group_of[name]
        cache_key = (key, group, tag)
        if cache_key not in self._derived:
            h = self.gram(name, key)
            if h is None:
                return None
            self._derived[cache_key] = make(h)
        return self._derived[cache_key]

    def release(self, name: str) -> None:
        """Free the statistics of the input layer `name` reads (every stream), and what was
        derived from them: call it once the last layer that reads that input is solved."""
        group = self.group_of[name]
        for key in [k for k in self.moments if k[1] == group]:
            del self.moments[key]
        for key in [k for k in self._derived if k[1] == group]:
            del self._derived[key]

    def groups(self) -> list[list[str]]:
        out: dict[int, list[str]] = {}
        for name, g in self.group_of.items():
            out.setdefault(g, []).append(name)
        return list(out.values())

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._stash = None

