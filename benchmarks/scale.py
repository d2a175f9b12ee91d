"""Host memory and time of an initialization as the model grows: the weights stream block by block.

Builds random-weight Llamas at three sizes (float32 on disk, sharded safetensors; the
largest has TinyLlama-1.1B's shape: hidden 2048, intermediate 5632, 22 blocks, 4 kv heads,
vocab 32000) with a word-level tokenizer, and a calibration text of random words. For each
size, in fresh child processes (so every peak includes the imports, as a user's run does):

- `quailora init` at 16 x 256 calibration tokens, rank 16, `--method exact`, on the CPU:
  peak RSS of the process (from `wait4`) / model size on disk, and wall time;
- one plain forward pass of the whole model, loaded in memory as usual, over the same
  calibration tokens: its wall time (the unit of the wall-time ratio) and its peak RSS;

then, for the largest size, the same `quailora init` inside a memory cgroup whose hard limit
is smaller than the model (`memory.max` on cgroup v2, `memory.limit_in_bytes` on v1; needs
root, skipped with a note otherwise): it completes, or the report says how it failed.

Goal (issue 12): peak RSS <= 0.35 x the model's size at the largest. Ratios are from one run.

    python benchmarks/scale.py                 # all sizes (~40 min on 2 busy cores) -> results/scale.json, docs/scale.png
    python benchmarks/scale.py --sizes s m     # a subset;  --quick: the smallest size only, no cap
    python benchmarks/scale.py --replot        # redraw docs/scale.png from results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, line_plot, machine, write_results  # noqa: E402
from gpu_llama8b import random_text, word_tokenizer  # noqa: E402

SIZES = {
    "s": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
              num_key_value_heads=8, vocab_size=32000),
    "m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
              num_key_value_heads=4, vocab_size=32000),
    "l": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
              num_key_value_heads=4, vocab_size=32000),
}  # fmt: skip
SAMPLES, SEQ_LEN, HELDOUT, RANK, METHOD = 16, 256, 4, 16, "exact"
CAP_SHARE = 0.5  # the capped run's hard limit, as a share of the model's size on disk
GOAL = 0.35
DOC_PLOT = Path(__file__).resolve().parent.parent / "docs" / "scale.png"

_FORWARD = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text, samples, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(torch.get_num_threads())
tok = AutoTokenizer.from_pretrained(folder)
ids = tok(open(text).read(), return_tensors="pt").input_ids[0][: samples * seq_len].view(samples, seq_len)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
start = time.perf_counter()
with torch.no_grad():
    for b in range(0, samples, 8):
        model.model(input_ids=ids[b : b + 8])
print(json.dumps({"forward_seconds": time.perf_counter() - start}))
"""


def build(folder: Path, shape: dict) -> dict:
    """The random Llama of `shape` in `folder` (reused when it is already there)."""
    stats_file = folder / "bench_model_stats.json"
    if stats_file.is_file() and json.loads(stats_file.read_text()).get("shape") == shape:
        return json.loads(stats_file.read_text())
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**shape, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model = LlamaForCausalLM(config).to(torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, max_shard_size="1GB")
    word_tokenizer(shape["vocab_size"]).save_pretrained(folder)
    stats = {"shape": shape, "parameters": sum(p.numel() for p in model.parameters()),
             "disk_bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors"))}  # fmt: skip
    stats_file.write_text(json.dumps(stats))
    return stats


class AnonSampler(threading.Thread):
    """The largest anonymous resident memory (RssAnon) of a process, sampled every 0.2 s.

    ru_maxrss also counts file pages mapped from the checkpoint, which the kernel can drop at
    any time; RssAnon is the memory that cannot be reclaimed without swap. Sampled, so a peak
    shorter than the interval can be missed: it is reported beside ru_maxrss, not instead.
    """

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.path, self.peak, self.done = Path(f"/proc/{pid}/status"), 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            try:
                for line in self.path.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except OSError:
                return


def measured(cmd: list[str], cgroup: Path | None = None) -> dict:
    """Run `cmd`; its wall time, exit status, peak RSS (wait4's ru_maxrss), sampled peak
    anonymous RSS and output tail."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(proc.pid))
        sampler = AnonSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        sampler.done.set()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        tail = out.read().decode(errors="replace")[-3000:]
    return {"returncode": proc.returncode, "wall_seconds": time.perf_counter() - start,
            "peak_rss_bytes": usage.ru_maxrss * 1024, "peak_anon_bytes": sampler.peak or None,
            "output_tail": tail}  # fmt: skip


def init_command(model: Path, text: Path, output: Path) -> list[str]:
    return [sys.executable, "-c", "import sys; from quailora_core.cli import main; sys.exit(main(sys.argv[1:]))",
            "init", "--model", str(model), "--calibration", str(text), "--samples", str(SAMPLES),
            "--seq-len", str(SEQ_LEN), "--heldout", str(HELDOUT), "--rank", str(RANK), "--method", METHOD,
            "--device", "cpu", "--output", str(output)]  # fmt: skip


def make_cgroup(limit: int) -> tuple[Path | None, str]:
    """A fresh memory cgroup with a hard limit of `limit` bytes (v2 or v1), or None and why not."""
    name = f"quailora-scale-{uuid.uuid4().hex[:8]}"
    v2 = Path("/sys/fs/cgroup")
    try:
        if (v2 / "cgroup.controllers").is_file() and "memory" in (v2 / "cgroup.controllers").read_text():
            group = v2 / name
            group.mkdir()
            (group / "memory.max").write_text(str(limit))
            (group / "memory.swap.max").write_text("0")
            return group, "cgroup v2 memory.max"
        v1 = v2 / "memory"
        if v1.is_dir():
            group = v1 / name
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(str(limit))
            return group, "cgroup v1 memory.limit_in_bytes"
    except OSError as exc:
        return None, f"no memory cgroup could be made ({exc}); run as root"
    return None, "no memory cgroup controller on this machine"


def group_peak(group: Path) -> int | None:
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        if (group / name).is_file():
            return int((group / name).read_text())
    return None


def run_size(size: str, root: Path, text: Path, cap: bool) -> dict:
    shape = SIZES[size]
    folder = root / f"llama-{size}"
    t0 = time.perf_counter()
    stats = build(folder, shape)
    print(f"[{size}] {stats['parameters'] / 1e6:.0f} M parameters, {stats['disk_bytes'] / 2**30:.2f} GiB "
          f"on disk (built in {time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    row: dict = {"size": size, **stats, "measured": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory(prefix="quailora-scale-") as work:
        out = Path(work) / "adapter"
        run = measured(init_command(folder, text, out))
        if run["returncode"] != 0:
            raise SystemExit(f"[{size}] quailora init failed:\n{run['output_tail']}")
        summary = json.loads((out / "quailora.json").read_text())["summary"]
        row["init"] = {k: run[k] for k in ("wall_seconds", "peak_rss_bytes", "peak_anon_bytes")}
        row["init"]["solve_seconds"] = sum(layer["seconds"] for layer in
                                           json.loads((out / "quailora.json").read_text())["layers"])  # fmt: skip
        row["init"]["mean_cal_improvement"] = summary.get("mean_cal_improvement")
        print(
            f"[{size}] init {run['wall_seconds']:.0f} s, peak RSS {run['peak_rss_bytes'] / 2**30:.2f} GiB "
            f"(anonymous, sampled: {(run['peak_anon_bytes'] or 0) / 2**30:.2f} GiB)",
            flush=True,
        )
        fwd = measured([sys.executable, "-c", _FORWARD, str(folder), str(text), str(SAMPLES), str(SEQ_LEN)])
        if fwd["returncode"] != 0:
            raise SystemExit(f"[{size}] the forward pass failed:\n{fwd['output_tail']}")
        forward_seconds = json.loads(fwd["output_tail"].strip().splitlines()[-1])["forward_seconds"]
        row["forward"] = {"seconds": forward_seconds, "peak_rss_bytes": fwd["peak_rss_bytes"]}
        row["rss_over_size"] = run["peak_rss_bytes"] / stats["disk_bytes"]
        row["whole_model_rss_over_size"] = fwd["peak_rss_bytes"] / stats["disk_bytes"]
        row["wall_over_forward"] = run["wall_seconds"] / forward_seconds
        print(f"[{size}] forward {forward_seconds:.1f} s; peak RSS / size {row['rss_over_size']:.2f} "
              f"(whole model in memory: {row['whole_model_rss_over_size']:.2f}); init / forward "
              f"{row['wall_over_forward']:.1f}", flush=True)  # fmt: skip
        if cap:
            row["capped"] = [capped_run(folder, text, stats["disk_bytes"], CAP_SHARE, Path(work))]
    return row


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), so that the checkpoint's pages the capped run
    reads are charged to its cgroup: a page already cached by an earlier run stays charged to
    the cgroup that first read it, and the limit would then not cover it."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def capped_run(folder: Path, text: Path, disk_bytes: int, share: float, work: Path) -> dict:
    """`quailora init` on `folder` inside a memory cgroup whose hard limit is `share` x the
    model's size on disk: did it complete, and with what peaks."""
    limit = int(share * disk_bytes)
    group, how = make_cgroup(limit)
    result: dict = {"share": share, "limit_bytes": limit, "how": how, "page_cache_dropped": drop_page_cache(),
                    "measured": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    if group is not None:
        out = work / f"adapter-capped-{share}"
        try:
            run = measured(init_command(folder, text, out), cgroup=group)
            result.update(
                completed=run["returncode"] == 0 and (out / "quailora.json").is_file(),
                returncode=run["returncode"], wall_seconds=run["wall_seconds"],
                peak_rss_bytes=run["peak_rss_bytes"], peak_anon_bytes=run["peak_anon_bytes"],
                cgroup_peak_bytes=group_peak(group),
            )  # fmt: skip
            if not result["completed"]:
                result["output_tail"] = run["output_tail"]
        finally:
            group.rmdir()
    print(f"[{folder.name}] capped at {limit / 2**30:.2f} GiB ({how}): "
          f"{ {k: v for k, v in result.items() if k != 'output_tail'} }", flush=True)  # fmt: skip
    return result


def plot(report: dict) -> None:
    rows = report["rows"]
    params = [r["parameters"] / 1e6 for r in rows]
    line_plot(DOC_PLOT, [
        {"title": "peak host memory / model size on disk", "x_label": "parameters (M)", "y_label": "ratio",
         "log_x": True, "series": [("quailora init (streamed), ru_maxrss", params, [r["rss_over_size"] for r in rows]),
                                   ("quailora init, anonymous (sampled)", params,
                                    [(r["init"].get("peak_anon_bytes") or 0) / r["disk_bytes"] for r in rows]),
                                   ("whole model loaded (one forward pass)", params,
                                    [r["whole_model_rss_over_size"] for r in rows]),
                                   (f"goal {GOAL}", params, [GOAL] * len(rows))]},
        {"title": "init wall time / one forward pass", "x_label": "parameters (M)", "y_label": "ratio",
         "log_x": True, "series": [("quailora init", params, [r["wall_over_forward"] for r in rows])]},
    ], f"Initialization at scale: random Llamas, float32 on disk, {SAMPLES} x {SEQ_LEN} tokens, rank {RANK}, "
       f"{METHOD}, CPU")  # fmt: skip


def markdown(report: dict) -> str:
    lines = [
        "| size | parameters | on disk | init peak RSS | / size | anonymous peak / size | whole model loaded / size "
        "| init wall | solve share | forward pass | init / forward |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        gib = 2**30
        lines.append(
            f"| {r['size']} | {r['parameters'] / 1e6:.0f} M | {r['disk_bytes'] / gib:.2f} GiB | "
            f"{r['init']['peak_rss_bytes'] / gib:.2f} GiB | **{r['rss_over_size']:.2f}** | "
            f"{(r['init'].get('peak_anon_bytes') or 0) / r['disk_bytes']:.2f} | "
            f"{r['whole_model_rss_over_size']:.2f} | {r['init']['wall_seconds']:.0f} s | "
            f"{r['init']['solve_seconds'] / r['init']['wall_seconds']:.0%} | {r['forward']['seconds']:.1f} s | "
            f"{r['wall_over_forward']:.1f} |"
        )
    for r in report["rows"]:
        for c in r.get("capped", []):
            state = ("completed" if c.get("completed") else f"did not complete (exit {c.get('returncode')})"
                     ) if "completed" in c else f"not run: {c['how']}"  # fmt: skip
            lines.append(f"\nCapped run ({r['size']}): hard limit {c['limit_bytes'] / 2**30:.2f} GiB "
                         f"({c['share']:.0%} of the model's size, {c['how']}): {state}"
                         + (f", peak RSS {c['peak_rss_bytes'] / 2**30:.2f} GiB (anonymous, sampled: "
                            f"{(c.get('peak_anon_bytes') or 0) / 2**30:.2f} GiB), {c['wall_seconds']:.0f} s"
                            if c.get("completed") else "") + ".")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--quick", action="store_true", help="the smallest size only, no capped run")
    parser.add_argument("--no-cap", action="store_true", help="skip the run under a memory limit")
    parser.add_argument("--workdir", default=None, help="where the models are kept (default: a cache folder)")
    parser.add_argument("--replot", action="store_true")
    parser.add_argument("--cap-only", type=float, default=None, metavar="SHARE",
                        help="only a capped run of the largest size at SHARE x its size, added to results/scale.json")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.replot:  # the plot and the table again, from the saved figures
        report = json.loads((RESULTS / "scale.json").read_text())
        plot(report)
        (RESULTS / "scale.md").write_text(markdown(report), encoding="utf-8")
        return 0
    sizes = ["s"] if args.quick else args.sizes
    from quailora_core.files import cache_root

    root = Path(args.workdir) if args.workdir else cache_root() / "scale-models"
    root.mkdir(parents=True, exist_ok=True)
    text = random_text(
        root / "calibration.txt", SIZES["s"]["vocab_size"], (SAMPLES + HELDOUT + 4) * SEQ_LEN * 2
    )
    if args.cap_only is not None:
        report = json.loads((RESULTS / "scale.json").read_text())
        row = report["rows"][-1]
        if isinstance(row.get("capped"), dict):  # written by the script before it kept a list
            row["capped"] = [{"share": CAP_SHARE, **row["capped"]}]
        with tempfile.TemporaryDirectory(prefix="quailora-scale-") as work:
            result = capped_run(root / f"llama-{row['size']}", text, row["disk_bytes"], args.cap_only, Path(work))
        row.setdefault("capped", []).append(result)
        write_results("scale", report, markdown(report))
        print(markdown(report))
        return 0
    rows = [run_size(s, root, text, cap=not (args.quick or args.no_cap) and s == sizes[-1]) for s in sizes]
    if args.sizes != list(SIZES) and not args.quick and (RESULTS / "scale.json").is_file():
        # a subset: the other sizes' rows are kept from the last run (each row says when it was measured)
        done = {r["size"] for r in rows}
        old = json.loads((RESULTS / "scale.json").read_text())["rows"]
        kept = [r for r in old if r["size"] not in done]
        for r in rows:  # a rerun without a capped run keeps the earlier capped runs of its size
            r.setdefault("capped", next((o.get("capped", []) for o in old if o["size"] == r["size"]), []))
        rows = sorted(kept + rows, key=lambda r: list(SIZES).index(r["size"]))
    report = {"setting": {"samples": SAMPLES, "seq_len": SEQ_LEN, "heldout": HELDOUT, "rank": RANK,
                          "method": METHOD, "device": "cpu", "on_disk": "float32 safetensors, 1 GB shards",
                          "cap_share": CAP_SHARE, "goal_rss_over_size": GOAL},
              "machine": machine(), "rows": rows}  # fmt: skip
    if not args.no_write:
        write_results("scale" if not args.quick else "scale-quick", report, markdown(report))
        if not args.quick:
            plot(report)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
