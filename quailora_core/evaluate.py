"""How much of the quantization loss an adapter recovers: `quailora eval`.

`evaluate_adapter` measures the perplexity of a text set under

  (a) the full-precision base (in the load dtype the adapter was computed for),
  (b) the quantized base, loaded with the BitsAndBytesConfig recorded in the adapter,
  (c) the quantized base plus the adapter (`PeftModel.from_pretrained`),

so a user sees, before any training, how much of the fp -> quantized perplexity gap the
initialization closes. The models are loaded one after the other (the full-precision one
is freed before the quantized one is loaded). The text is packed like calibration text
(`data.pack`: EOS between documents, seeded `samples x seq_len` blocks); use text the
adapter was not calibrated on. Perplexity is exp of the mean next-token loss over all
real (non-padding) tokens, from each model's own loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import Cancelled, InputError
from .events import CancelToken, EventCallback, Log, Stage, ignore_events


@dataclass
class EvalReport:
    """Perplexities of the full-precision base, the quantized base and quantized base + adapter."""

    model: str
    adapter: str
    data: str
    quantization: str  # e.g. "4-bit NF4" or "8-bit LLM.int8"
    method: str  # the adapter's initialization method
    samples: int
    seq_len: int
    tokens: int  # predicted tokens per model
    fp_loss: float
    quantized_loss: float
    adapter_loss: float
    seconds: float
    device: str

    @property
    def fp_perplexity(self) -> float:
        return _ppl(self.fp_loss)

    @property
    def quantized_perplexity(self) -> float:
        return _ppl(self.quantized_loss)

    @property
    def adapter_perplexity(self) -> float:
        return _ppl(self.adapter_loss)

    @property
    def gap_recovered(self) -> float:
        """Share of the fp -> quantized perplexity gap the adapter closes (1 = all, 0 = none,
        < 0 = worse than no adapter); NaN when quantization costs no perplexity."""
        gap = self.quantized_perplexity - self.fp_perplexity
        if not math.isfinite(gap) or abs(gap) < 1e-9 * self.fp_perplexity:
            return float("nan")
        return (self.quantized_perplexity - self.adapter_perplexity) / gap

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "fp_perplexity": self.fp_perplexity,
            "quantized_perplexity": self.quantized_perplexity,
            "adapter_perplexity": self.adapter_perplexity,
            "gap_recovered": self.gap_recovered,
        }

    def table(self) -> str:
        """The small table `quailora eval` prints."""
        rows = [
            ("full precision", self.fp_loss, self.fp_perplexity),
            (self.quantization, self.quantized_loss, self.quantized_perplexity),
            (f"{self.quantization} + adapter ({self.method})", self.adapter_loss, self.adapter_perplexity),
        ]
        width = max(len(r[0]) for r in rows) + 2
        lines = [f"{'model':<{width}}{'loss':>9}{'perplexity':>13}", "-" * (width + 22)]
        lines += [f"{name:<{width}}{loss:>9.4f}{ppl:>13.3f}" for name, loss, ppl in rows]
        lines.append("-" * (width + 22))
        lines.append(f"{self.samples} x {self.seq_len} tokens of {self.data!r} ({self.tokens} predicted tokens)")
        share = self.gap_recovered
        if math.isfinite(share):
            percent = round(100 * share, 1) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0
            lines.append(f"the adapter recovers {percent:.1f}% of the perplexity lost to quantization")
        else:
            lines.append("quantization costs no measurable perplexity on this text")
        return "\n".join(lines)


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def evaluate_adapter(
    adapter: str,
    data: str,
    model: str | None = None,
    samples: int = 32,
    seq_len: int = 256,
    text_column: str = "text",
    batch_size: int = 4,
    device: str = "auto",
    seed: int = 0,
    on_event: EventCallback = ignore_events,
    cancel: CancelToken | None = None,
) -> EvalReport:
    """Perplexity of `data` under the fp base, the quantized base and quantized base + adapter.

    `model` defaults to the base recorded in the adapter's quailora.json. Raises InputError
    (before loading any weights) for a bad adapter, a base the adapter was not computed for,
    unreadable data or bad sizes.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data import load_texts, pack
    from .device import resolve_device
    from .model_info import resolve_model_path
    from .train import check_base, load_quantized_base, read_adapter, recorded_quantization

    cancel = cancel or CancelToken()
    started = time.perf_counter()
    on_event(Stage("load"))
    if samples < 1 or seq_len < 2 or batch_size < 1:
        raise InputError(
            f"Cannot evaluate {samples} samples of {seq_len} tokens in batches of {batch_size}.",
            "Use at least 1 sample, --seq-len 2 or more and a positive batch size.",
        )
    meta = read_adapter(adapter)
    if model is None:
        rec = meta["base_model"]
        model = "demo" if rec.get("reference") == "demo" else rec["path"]
    dev = resolve_device(device)
    model_path = resolve_model_path(model)
    for warning in check_base(model_path, meta, adapter):
        on_event(Log("warning", warning))
    quant, dtype_name = recorded_quantization(meta)
    dtype = getattr(torch, dtype_name)
    if dev.type == "cpu" and dtype != torch.float32:
        on_event(Log("warning", f"the adapter was computed for {dtype_name} weights; evaluating them on CPU is slow"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    cal = pack(load_texts(data, text_column), tokenizer, samples, seq_len, 0, seed)
    for warning in cal.warnings:
        on_event(Log("warning", warning))
    ids, mask = cal.input_ids, cal.attention_mask

    def check() -> None:
        if cancel.cancelled:
            raise Cancelled()

    on_event(Stage("evaluate", total=3))
    check()
    fp = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, low_cpu_mem_usage=True).to(dev)
    fp_loss, n = _mean_loss(fp, ids, mask, batch_size, dev, check)
    on_event(Log("info", f"full precision: loss {fp_loss:.4f}, perplexity {_ppl(fp_loss):.3f}"))
    del fp
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    check()
    quantized = load_quantized_base(model_path, meta, dev if dev.type == "cuda" else None)
    q_loss, _ = _mean_loss(quantized, ids, mask, batch_size, dev, check)
    label = f"{quant.bits}-bit " + (quant.quant_type.upper() if quant.bits == 4 else "LLM.int8")
    on_event(Log("info", f"{label}: loss {q_loss:.4f}, perplexity {_ppl(q_loss):.3f}"))
    check()
    from peft import PeftModel

    with_adapter = PeftModel.from_pretrained(quantized, str(adapter))
    a_loss, _ = _mean_loss(with_adapter, ids, mask, batch_size, dev, check)
    on_event(Log("info", f"{label} + adapter: loss {a_loss:.4f}, perplexity {_ppl(a_loss):.3f}"))
    return EvalReport(
        model=model_path,
        adapter=str(Path(adapter).expanduser().resolve()),
        data=data,
        quantization=label,
        method=str(meta.get("init", {}).get("method", "?")),
        samples=int(ids.shape[0]),
        seq_len=int(ids.shape[1]),
        tokens=n,
        fp_loss=fp_loss,
        quantized_loss=q_loss,
        adapter_loss=a_loss,
        seconds=time.perf_counter() - started,
        device=str(dev),
    )


def _mean_loss(model, ids, mask, batch_size: int, device, check) -> tuple[float, int]:
    """Mean next-token loss over all real tokens, from the model's own (mean) loss per batch
    weighted by the number of predicted tokens in it."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            check()
            x = ids[start : start + batch_size].to(device)
            m = mask[start : start + batch_size].to(device)
            labels = x.masked_fill(m == 0, -100)
            n = int((labels[:, 1:] != -100).sum())
            if n == 0:
                continue
            out = model(input_ids=x, attention_mask=m, labels=labels)
            total += float(out.loss.float()) * n
            count += n
    return total / max(count, 1), count
