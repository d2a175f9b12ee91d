"""Input statistics: padding excluded, shared inputs share one Gram matrix, memory flat in N."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quailora_core.init.stats import GramCollector


class TwoHeads(nn.Module):
    """q and k read the same tensor (like q/k/v); o reads another one."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.o = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(4, 6)

    def forward(self, x):
        return self.o(self.q(x) * self.k(x))


def test_gram_excludes_padding_and_is_shared_by_layers_reading_the_same_tensor():
    torch.manual_seed(0)
    net = TwoHeads()
    collector = GramCollector({"q": net.q, "k": net.k, "o": net.o}, torch.device("cpu"))
    xs, masks = [torch.randn(2, 5, 6) for _ in range(3)], [torch.rand(2, 5) > 0.3 for _ in range(3)]
    for x, m in zip(xs, masks, strict=True):
        collector.begin(m, "cal")
        net(x)
    collector.remove()
    real = torch.cat([x[m] for x, m in zip(xs, masks, strict=True)]).double()
    expected = real.T @ real / real.shape[0]
    assert collector.gram("q").dtype == torch.float32  # float32 sums: half the memory (stats.accumulation_dtype)
    assert torch.allclose(collector.gram("q").double(), expected)
    assert torch.equal(collector.gram("k"), collector.gram("q"))
    assert collector.group_of["q"] == collector.group_of["k"] != collector.group_of["o"]
    assert len(collector.groups()) == 2


def test_memory_does_not_grow_with_the_number_of_tokens():
    net = TwoHeads()
    collector = GramCollector({"q": net.q, "k": net.k, "o": net.o}, torch.device("cpu"))
    for _ in range(50):
        collector.begin(torch.ones(4, 8, dtype=torch.bool), "cal")
        net(torch.randn(4, 8, 6))
    held = [m.sum for m in collector.moments.values()]
    assert sum(t.numel() for t in held) == 6 * 6 + 4 * 4  # one Gram per distinct input, nothing per token
    assert collector.moments[("cal", collector.group_of["q"])].count == 50 * 32


def test_cross_moment_pairs_full_precision_and_quantized_inputs():
    torch.manual_seed(1)
    net = TwoHeads()
    # paired, as the asymmetric source collects: float64 on the CPU (a difference of sums)
    collector = GramCollector({"q": net.q, "k": net.k, "o": net.o}, torch.device("cpu"), paired=True)
    x_fp, x_q, mask = torch.randn(2, 5, 6), torch.randn(2, 5, 6), torch.ones(2, 5, dtype=torch.bool)
    collector.begin(mask, "cal", mode="stash")
    net(x_fp)
    collector.begin(mask, "cal", mode="cross")
    net(x_q)
    a, b = x_fp.reshape(-1, 6).double(), x_q.reshape(-1, 6).double()
    assert collector.cross("q").dtype == torch.float64
    assert torch.allclose(collector.cross("q"), a.T @ b / 10)
    assert torch.allclose(collector.gram("q", "fp:cal"), a.T @ a / 10)
    assert torch.allclose(collector.gram("q", "cal"), b.T @ b / 10)


def test_what_is_derived_from_a_shared_input_is_made_once_and_refreshed_with_more_tokens():
    torch.manual_seed(2)
    net = TwoHeads()
    collector = GramCollector({"q": net.q, "k": net.k, "o": net.o}, torch.device("cpu"))
    collector.begin(torch.ones(2, 5, dtype=torch.bool), "cal")
    net(torch.randn(2, 5, 6))
    made = []

    def make(h):
        made.append(h)
        return h.trace()

    first = collector.derived("q", "cal", "trace", make)
    assert collector.derived("k", "cal", "trace", make) is first  # q and k read one tensor
    assert collector.derived("o", "cal", "trace", make) is not first
    assert len(made) == 2 and collector.derived("q", "heldout", "trace", make) is None
    collector.begin(torch.ones(2, 5, dtype=torch.bool), "cal")  # more tokens: recomputed
    net(torch.randn(2, 5, 6))
    assert float(collector.derived("k", "cal", "trace", make)) == pytest.approx(float(collector.gram("q").trace()))
    assert len(made) == 3


def test_a_released_input_frees_its_statistics_on_every_stream():
    net = TwoHeads()
    collector = GramCollector({"q": net.q, "k": net.k, "o": net.o}, torch.device("cpu"))
    for key in ("cal", "heldout"):
        collector.begin(torch.ones(2, 5, dtype=torch.bool), key)
        net(torch.randn(2, 5, 6))
    collector.derived("q", "cal", "trace", lambda h: h.trace())
    collector.release("k")  # k reads q's input: both are gone, o's statistics stay
    assert collector.gram("q") is None and collector.gram("q", "heldout") is None
    assert collector.gram("o") is not None and collector.gram("o", "heldout") is not None
    assert collector.derived("q", "cal", "trace", lambda h: h.trace()) is None
