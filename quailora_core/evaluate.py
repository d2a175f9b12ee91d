"""How much of the quantization loss an adapter recovers: `quailora eval`.

`evaluate_adapter` measures the perplexity of a text set under

  (a) the full-precision base (in the load dtype the adapter was computed for),
  (b) the quantized base, loaded with the BitsAndBytesConfig recorded in the adapter,
  (c) the quantized base plus the adapter (`PeftModel.from_pretrained`),

so a user sees, before any training, how much of the fp -> quantized perplexity gap the
initialization closes. The models are loaded one after the other (the full-precision one
is freed before the quantized one is loaded; its blocks are read from the checkpoint as they
run, so host memory stays flat). The text is packed like calibration text
(`sources.packing.pack`: EOS between documents, seeded `samples x seq_len` blocks); use text the
adapter was not calibrated on; `demo` is the built-in fine-tuning text (the Python language
reference, as for `quailora train --data demo`), which the demo calibration text does not
contain. Perplexity is exp of the mean next-token loss over all real (non-padding) tokens.

A share of the quantization gap is only meaningful when the gap itself is measurable on
the text: the per-token losses are averaged per sample, the quantized-minus-fp
difference of those means gives the gap's standard error across samples (a paired
estimate: both models see the same tokens), and the share is reported only when the gap
exceeds `MEASURABLE_SE` standard errors. Below that the report says the gap is too small
to measure, and how to get a bigger text.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quailora_core.config import DEMO_CALIBRATION
from quailora_core.errors import Cancelled, InputError
from quailora_core.events import CancelToken, EventCallback, Log, Stage, ignore_events

# The quantization gap (in mean loss) must exceed this many standard errors for a share of
# it to be reported: about a 2.5 % chance of calling noise a gap, one-sided.
MEASURABLE_SE = 2.0


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
    # standard error of (quantized_loss - fp_loss) across samples, paired; NaN for 1 sample
    gap_stderr: float = float("nan")

    @property
    def gap_measurable(self) -> bool:
        """True when quantization costs loss by more than `MEASURABLE_SE` standard errors."""
        gap = self.quantized_loss - self.fp_loss
        return math.isfinite(self.gap_stderr) and math.isfinite(gap) and gap > MEASURABLE_SE * self.gap_stderr

    @property
    def fp_perplexity(self) -> float:
        return perplexity(self.fp_loss)

    @property
    def quantized_perplexity(self) -> float:
        return perplexity(self.quantized_loss)

    @property
    def adapter_perplexity(self) -> float:
        return perplexity(self.adapter_loss)

    @property
    def gap_recovered(self) -> float:
        """Share of the fp -> quantized perplexity gap the adapter closes (1 = all, 0 = none,
        < 0 = worse than no adapter); NaN when the gap is not measurable on this text."""
        if not self.gap_measurable:
            return float("nan")
        gap = self.quantized_perplexity - self.fp_perplexity
        return (self.quantized_perplexity - self.adapter_perplexity) / gap

    def to_dict(self) -> dict[str, Any]:
        """The report as plain values; unknown figures (no measurable gap, one sample) are
        None, so that the JSON stays strict."""
        out = {
            **asdict(self),
            "fp_perplexity": self.fp_perplexity,
            "quantized_perplexity": self.quantized_perplexity,
            "adapter_perplexity": self.adapter_perplexity,
            "gap_measurable": self.gap_measurable,
            "gap_recovered": self.gap_recovered,
        }
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}

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
        gap, se = self.quantized_loss - self.fp_loss, self.gap_stderr
        if self.gap_measurable:
            percent = round(100 * self.gap_recovered, 1) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0
            lines.append(f"quantization costs {gap:+.4f} loss (± {se:.4f} standard error over {self.samples} samples);")
            lines.append(f"the adapter recovers {percent:.1f}% of the perplexity lost to quantization")
        elif not math.isfinite(se):
            lines.append(f"quantization changes the loss by {gap:+.4f}; with one sample its uncertainty is unknown,")
            lines.append("so no share of it is given: use --samples 8 or more")
        elif gap < -MEASURABLE_SE * se:
            lines.append(f"quantization lowers the loss on this text ({gap:+.4f} ± {se:.4f} standard error over "
                         f"{self.samples} samples): there is no gap to close, so no share of it is given")  # fmt: skip
        else:
            lines.append(f"quantization changes the loss by {gap:+.4f} ± {se:.4f} (standard error over "
                         f"{self.samples} samples): too small to measure on this text,")  # fmt: skip
            lines.append("so no share of it is given: use more text (--samples, --seq-len) or text the model knows")
        return "\n".join(lines)


def perplexity(loss: float) -> float:
    """exp(mean loss), inf where it would overflow: the one perplexity of eval and training."""
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
    from quailora_core.adapter.record import AdapterRecord
    from quailora_core.sources.references import check_data_source, resolve_model_path

    cancel = cancel or CancelToken()
    started = time.perf_counter()
    on_event(Stage("load"))
    if samples < 1 or seq_len < 2 or batch_size < 1:
        raise InputError(
            f"Cannot evaluate {samples} samples of {seq_len} tokens in batches of {batch_size}.",
            "Use at least 1 sample, --seq-len 2 or more and a positive batch size.",
        )
    # the checks of small files first: a missing path is refused before torch is imported
    record = AdapterRecord.load(adapter)
    if model is None:
        rec = record.base_model
        model = "demo" if rec.reference == "demo" else rec.path
    model_path = resolve_model_path(model)
    check_data_source(data)

    import torch
    from transformers import AutoTokenizer

    from quailora_core.device import resolve_device
    from quailora_core.model.base import auto_class, load_quantized_base
    from quailora_core.model.fingerprint import check_base
    from quailora_core.model.streamed import load_streamed
    from quailora_core.sources.packing import pack
    from quailora_core.sources.text import load_texts
    from quailora_core.sources.training_data import load_training_data

    dev = resolve_device(device)
    for warning in check_base(model_path, record, adapter):
        on_event(Log("warning", warning))
    dtype_name = record.quantization.load_dtype
    dtype = record.quantization.dtype()
    if dev.type == "cpu" and dtype != torch.float32:
        on_event(Log("warning", f"the adapter was computed for {dtype_name} weights; evaluating them on CPU is slow"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    texts = load_training_data(data).texts if data == DEMO_CALIBRATION else load_texts(data, text_column)
    cal = pack(texts, tokenizer, samples, seq_len, 0, seed)
    for warning in cal.warnings:
        on_event(Log("warning", warning))
    ids, mask = cal.input_ids, cal.attention_mask

    def check() -> None:
        if cancel.cancelled:
            raise Cancelled()

    on_event(Stage("evaluate", total=3))
    check()
    # the full-precision model with its blocks read from the checkpoint as they run, so that
    # host memory stays flat whatever the model's size (model/streamed.py)
    with tempfile.TemporaryDirectory(prefix="quailora-weights-") as offload:
        fp = load_streamed(model_path, auto_class(record), dtype, dev, offload).model
        fp_sums, counts = _sample_losses(fp, ids, mask, batch_size, dev, check)
        del fp
    fp_loss, n = _mean(fp_sums, counts), int(counts.sum())
    on_event(Log("info", f"full precision: loss {fp_loss:.4f}, perplexity {perplexity(fp_loss):.3f}"))
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    check()
    quantized = load_quantized_base(model_path, record, dev if dev.type == "cuda" else None)
    q_sums, _ = _sample_losses(quantized, ids, mask, batch_size, dev, check)
    q_loss = _mean(q_sums, counts)
    label = record.quantization.label()
    on_event(Log("info", f"{label}: loss {q_loss:.4f}, perplexity {perplexity(q_loss):.3f}"))
    check()
    from peft import PeftModel

    with_adapter = PeftModel.from_pretrained(quantized, str(adapter))
    a_sums, _ = _sample_losses(with_adapter, ids, mask, batch_size, dev, check)
    a_loss = _mean(a_sums, counts)
    on_event(Log("info", f"{label} + adapter: loss {a_loss:.4f}, perplexity {perplexity(a_loss):.3f}"))
    return EvalReport(
        model=model_path,
        adapter=str(Path(adapter).expanduser().resolve()),
        data=data,
        quantization=label,
        method=str(record.init.get("method", "?")),
        samples=int(ids.shape[0]),
        seq_len=int(ids.shape[1]),
        tokens=n,
        fp_loss=fp_loss,
        quantized_loss=q_loss,
        adapter_loss=a_loss,
        seconds=time.perf_counter() - started,
        device=str(dev),
        gap_stderr=_paired_stderr(q_sums, fp_sums, counts),
    )


def _sample_losses(model, ids, mask, batch_size: int, device, check):
    """(sum of next-token losses, number of predicted tokens) per sample, over real tokens,
    as float64 tensors on the CPU."""
    import torch

    model.eval()
    sums, counts = [], []
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            check()
            x = ids[start : start + batch_size].to(device)
            m = mask[start : start + batch_size].to(device)
            logits = model(input_ids=x, attention_mask=m).logits[:, :-1].float()
            target = x[:, 1:].masked_fill(m[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
            ).view(target.shape)
            sums.append(loss.double().sum(dim=1).cpu())
            counts.append((target != -100).sum(dim=1).double().cpu())
    return torch.cat(sums), torch.cat(counts)


def _mean(sums, counts) -> float:
    """Mean loss per predicted token."""
    return float(sums.sum() / counts.sum().clamp(min=1))


def _paired_stderr(q_sums, fp_sums, counts) -> float:
    """Standard error of the mean per-token loss difference (quantized - fp), from the
    spread of the per-sample differences (samples with no predicted token left out)."""
    keep = counts > 0
    if int(keep.sum()) < 2:
        return float("nan")
    diff = (q_sums[keep] - fp_sums[keep]) / counts[keep]
    return float(diff.std(unbiased=True) / math.sqrt(diff.numel()))
