"""Pretrain a small Llama-architecture causal LM for the benchmarks (CPU, no download).

The model is trained on natural-language text that exists on every machine: the
docstrings of Python's standard library (`quailora_core.sources.corpus.pretraining_corpus`), with
`quailora_core.demo.build_tiny_llm` (a byte-level BPE tokenizer trained here, then the
transformers `Trainer`). Two sizes, so that table benchmarks have a smaller and a bigger
model to compare:

    small   hidden 256, 6 layers, intermediate 688, 8 heads / 4 kv heads, vocab 4000
    medium  hidden 384, 8 layers, intermediate 1024, 12 heads / 4 kv heads, vocab 4000

The result is an ordinary Hugging Face model folder, written to
`$QUAILORA_CACHE/bench-models/<name>` (default `~/.cache/quailora/bench-models/<name>`),
outside git. An existing build is reused unless `--force`. The build is atomic (temporary
folder, then rename). `--max-minutes` caps the training time on a slow or busy machine:
training then stops early and `bench_model.json` says so.

    python benchmarks/pretrain_tiny.py --size small
    python benchmarks/pretrain_tiny.py --size medium --steps 600 --force
    python benchmarks/pretrain_tiny.py --size broad-xs --max-minutes 45   # ~25 min each
    python benchmarks/pretrain_tiny.py --size broad-s --max-minutes 45
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MARKER = "bench_model.json"
MARKER_KIND = "quailora-bench-model"

# "small" / "medium": stdlib docstrings (164 k tokens), each about 8-10 minutes on two busy
# CPU cores. They see that text about 5 and 2 times and stay far from converged, which leaves
# them nearly insensitive to 4-bit quantization (see docs/benchmarks.md, section 4).
# "broad-xs" / "broad-s": the broad corpus (docstrings of the stdlib and of large installed
# packages, about 6.7 M tokens), about 25 minutes each on one core of this machine (both
# at once): broad-xs sees ~10.6 M tokens, broad-s ~3.3 M, so both are far better trained.
SIZES: dict[str, dict] = {
    "small": dict(
        hidden_size=256, intermediate_size=688, layers=6, heads=8, kv_heads=4, vocab_size=4000,
        steps=500, seq_len=256, batch_size=8, lr=2e-3, corpus="stdlib",
    ),
    "medium": dict(
        hidden_size=384, intermediate_size=1024, layers=8, heads=12, kv_heads=4, vocab_size=4000,
        steps=160, seq_len=256, batch_size=8, lr=2e-3, corpus="stdlib",
    ),
    "broad-xs": dict(
        hidden_size=128, intermediate_size=352, layers=4, heads=4, kv_heads=2, vocab_size=4000,
        steps=2600, seq_len=256, batch_size=16, lr=3e-3, corpus="broad",
    ),
    "broad-s": dict(
        hidden_size=256, intermediate_size=688, layers=6, heads=8, kv_heads=4, vocab_size=4000,
        steps=1600, seq_len=256, batch_size=8, lr=2e-3, corpus="broad",
    ),
}  # fmt: skip


def corpus_texts(name: str, max_chars: int | None = None) -> list[str]:
    """The pretraining text of a recipe: "stdlib" docstrings or the "broad" corpus."""
    from quailora_core.sources.corpus import broad_pretraining_corpus, pretraining_corpus

    return broad_pretraining_corpus(max_chars) if name == "broad" else pretraining_corpus(max_chars)


def model_pretraining_text(model: str | Path, max_chars: int | None = None) -> tuple[str, list[str]]:
    """(corpus name, documents) a built benchmark model was pretrained on, from its marker;
    the stdlib docstrings for models built before the broad corpus existed, or for any other
    model folder."""
    try:
        corpus = json.loads((Path(model) / MARKER).read_text(encoding="utf-8")).get("corpus", "stdlib")
    except (OSError, ValueError, AttributeError):
        corpus = "stdlib"
    return corpus, corpus_texts(corpus, max_chars)


def bench_root() -> Path:
    from quailora_core.files import cache_root

    return cache_root() / "bench-models"


def model_dir(size: str, out: str | None = None) -> Path:
    """Where the model of this size lives (whether built or not)."""
    return Path(out).expanduser() if out else bench_root() / f"llama-{size}"


def is_built(path: Path) -> bool:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8")).get("kind") == MARKER_KIND
    except (OSError, ValueError, AttributeError):
        return False


def find_model(size: str = "small") -> Path | None:
    """The built benchmark model of this size, or None (the other scripts call this)."""
    path = model_dir(size)
    return path if is_built(path) else None


def build(size: str, steps: int | None, out: str | None, force: bool, max_minutes: float, threads: int) -> dict:
    from quailora_core.demo import build_tiny_llm

    final = model_dir(size, out)
    if is_built(final) and not force:
        stats = json.loads((final / MARKER).read_text(encoding="utf-8"))
        print(f"{final} is already built (use --force to rebuild).")
        return stats
    recipe = dict(SIZES[size])
    corpus = recipe.pop("corpus")
    if steps:
        recipe["steps"] = steps
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    t0 = time.perf_counter()
    try:
        texts = corpus_texts(corpus)
        stats = build_tiny_llm(
            tmp, texts=texts, seed=0, num_threads=threads, max_seconds=max_minutes * 60.0,
            on_log=lambda m: print(m, flush=True), **recipe,
        )  # fmt: skip
        stats = {"kind": MARKER_KIND, "size": size, "corpus": corpus, "corpus_documents": len(texts),
                 "corpus_chars": sum(map(len, texts)), "threads": threads, "max_minutes": max_minutes,
                 **stats}  # fmt: skip
        stats["wall_seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / MARKER).write_text(json.dumps(stats, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"Saved to {final}")
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the size's recipe)")
    p.add_argument("--out", default=None, help="model folder (default: $QUAILORA_CACHE/bench-models/llama-<size>)")
    p.add_argument("--force", action="store_true", help="rebuild even if already built")
    p.add_argument("--max-minutes", type=float, default=12.0, help="stop training after this long (default 12)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: best on a shared 2-core box)")
    args = p.parse_args(argv)
    stats = build(args.size, args.steps, args.out, args.force, args.max_minutes, args.threads)
    print(
        f"{args.size}: {stats['parameters'] / 1e6:.2f} M parameters, {stats['steps']}/{stats['steps_planned']} steps "
        f"of {stats['batch_size']} x {stats['seq_len']} tokens; final train loss {stats['final_loss']:.3f}, "
        f"held-out loss {stats['heldout_loss']:.3f} (uniform guess ln V = {stats['ln_vocab']:.2f}); "
        f"train {stats['train_seconds']:.0f} s, build {stats['build_seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
