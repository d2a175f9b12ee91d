"""Helpers shared by the benchmark scripts (not a benchmark itself).

- `bench_model(size)`: the pretrained benchmark model (from `pretrain_tiny.py`), or the
  demo model with a printed warning when it has not been built;
- `calibration_file()`: the fine-tuning-domain text (`corpus.finetune_corpus()`, the
  Python language reference) written once to a temporary `.txt` file, one paragraph per
  document, which the engine reads like any user file;
- `make_config(...)`: a `RunConfig` for a CPU benchmark run;
- `machine()`: a short description of where a benchmark ran (goes into every result file);
- `peak_rss_mib()`: this process's peak resident memory (VmHWM);
- `line_plot(...)`: a PNG line chart with pyqtgraph (a project dependency; offscreen Qt).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bench_model(size: str = "small", model: str | None = None) -> tuple[str, str]:
    """(model folder, label). An explicit `model` wins; else the pretrained bench model of
    `size`; else the demo model, with a warning on stdout."""
    if model:
        return model, Path(model).name
    from pretrain_tiny import find_model

    path = find_model(size)
    if path is not None:
        return str(path), f"llama-{size}"
    from quailora_core.demo import ensure_demo_model

    print(
        f"WARNING: the {size} benchmark model is not built (run `python benchmarks/pretrain_tiny.py "
        f"--size {size}`); falling back to the demo model, whose figures are NOT the documented ones.",
        flush=True,
    )
    return str(ensure_demo_model()), "demo"


def calibration_file(folder: str | os.PathLike[str] | None = None) -> Path:
    """The fine-tuning-domain text as a .txt file (blank line between paragraphs)."""
    from quailora_core.sources.corpus import finetune_corpus

    folder = Path(folder or tempfile.mkdtemp(prefix="quailora-bench-cal-"))
    path = folder / "finetune_corpus.txt"
    if not path.exists():
        path.write_text("\n\n".join(finetune_corpus()) + "\n", encoding="utf-8")
    return path


def make_config(model: str, calibration: str, output: str, samples: int, seq_len: int, heldout: int, **changes):
    from quailora_core.config import RunConfig

    cfg = RunConfig(output=str(output), overwrite=True)
    cfg.model.path = str(model)
    cfg.model.dtype = "float32"
    cfg.calibration.source = str(calibration)
    cfg.calibration.samples, cfg.calibration.seq_len, cfg.calibration.heldout_samples = samples, seq_len, heldout
    cfg.init.device = "cpu"
    for key, value in changes.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def write_results(stem: str, report: dict, md: str | None = None) -> Path:
    """benchmarks/results/<stem>.json (and .md): every figure in the docs comes from one of these."""
    import json

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{stem}.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if md is not None:
        (RESULTS / f"{stem}.md").write_text(md, encoding="utf-8")
    return path


def layer_grams(model, input_ids, names: list[str], batch: int = 8) -> dict:
    """Sum of x^T x (float64) over all tokens for the inputs of the named Linear layers,
    from a plain forward pass with hooks (independent of the engine's own statistics)."""
    import torch

    sums: dict = {}

    def hook(name):
        def fn(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x

        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for s in range(0, input_ids.shape[0], batch):
                model(input_ids=input_ids[s : s + batch], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return sums


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": mem_gib,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM from /proc, else ru_maxrss), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# A colour-blind-safe palette (Okabe-Ito).
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999", "#882255"]


def line_plot(path: Path, panels: list[dict], title: str, width: int = 1500, height: int = 640) -> Path:
    """Write a PNG with one panel per entry of `panels`:
    {"title", "x_label", "y_label", "log_x", "log_y", "series": [(name, xs, ys), ...], "x_ticks"}
    (points with y <= 0 are dropped unless the panel sets "allow_nonpositive" on a linear y axis).
    Uses pyqtgraph (already a dependency of the app) with the offscreen Qt platform."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import math

    import pyqtgraph as pg
    import pyqtgraph.exporters  # noqa: F401  (registers the exporters)
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    pg.setConfigOptions(antialias=True, background="w", foreground="k")
    win = pg.GraphicsLayoutWidget()
    win.resize(width, height)
    win.addLabel(title, row=0, col=0, colspan=len(panels), size="13pt")
    symbols = ["o", "s", "t", "d", "+", "x", "star", "h", "p"]
    for i, panel in enumerate(panels):
        plot = win.addPlot(row=1, col=i, title=panel.get("title", ""))
        plot.setLogMode(x=panel.get("log_x", False), y=panel.get("log_y", False))
        plot.setLabel("bottom", panel.get("x_label", ""))
        plot.setLabel("left", panel.get("y_label", ""))
        plot.showGrid(x=True, y=True, alpha=0.25)
        plot.getAxis("left").enableAutoSIPrefix(False)
        plot.getAxis("bottom").enableAutoSIPrefix(False)
        legend = plot.addLegend(offset=panel.get("legend_offset", (5, -5)), labelTextSize="8pt")
        legend.setBrush(pg.mkBrush(255, 255, 255, 210))
        for j, (name, xs, ys) in enumerate(panel["series"]):
            keep = panel.get("allow_nonpositive", False) and not panel.get("log_y", False)
            pts = [(x, y) for x, y in zip(xs, ys, strict=True)
                   if y is not None and math.isfinite(y) and (keep or y > 0)]  # fmt: skip
            if not pts:
                continue
            colour = PALETTE[j % len(PALETTE)]
            plot.plot(
                [p[0] for p in pts], [p[1] for p in pts], name=name,
                pen=pg.mkPen(colour, width=2), symbol=symbols[j % len(symbols)], symbolSize=8,
                symbolBrush=colour, symbolPen=colour,
            )  # fmt: skip
        if panel.get("x_ticks"):
            ticks = [(math.log10(v) if panel.get("log_x") else v, str(v)) for v in panel["x_ticks"]]
            plot.getAxis("bottom").setTicks([ticks])
    win.show()  # lays the panels out over the full width (offscreen: nothing appears)
    app.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = pg.exporters.ImageExporter(win.scene())
    exporter.parameters()["width"] = width
    exporter.export(str(path))
    win.close()
    return path
