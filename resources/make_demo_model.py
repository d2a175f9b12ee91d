"""Make the demo model that ships in `resources/demo-model/` (run once by a maintainer).

    python resources/make_demo_model.py                  # about 25 minutes on one CPU core
    python resources/make_demo_model.py --out /tmp/demo  # somewhere else, to compare

Why a shipped model: a model trained on each user's machine comes out different on every
machine (other CPU, other library versions), so no figure in the README or in a test could
be relied on, and the first Run waited minutes for the build. This script is the recipe;
its output is committed once and every machine then loads the very same bytes.

What it does, all offline:

1. the broad corpus (`corpus.broad_pretraining_corpus`: docstrings of the standard library
   and of large installed packages, parsed with `ast`, about 7 M tokens);
2. a byte-level BPE tokenizer and a 1.8 M-parameter Llama pretrained on it with
   `demo.build_tiny_llm` (the `broad-xs` recipe of `benchmarks/pretrain_tiny.py`, which
   measured NF4 costing about +11 % perplexity: a model with a real 4-bit gap to recover);
3. the weights cast to bfloat16 (half the size; the engine loads them in float32 on CPU,
   which represents every bfloat16 value exactly);
4. the NF4 and LLM.int8 perplexity cost on the built-in sample text, measured with the
   engine's own `BitsAndBytesConfig` and recorded in the marker file;
5. the folder written atomically, and the SHA-256 of every file printed in the form
   `quailora_core/demo/shipped.py` expects (`DEMO_FILES`): paste it there, so that the package
   and a test notice any file that changes without the package knowing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The broad-xs recipe (benchmarks/pretrain_tiny.py): ~10.6 M training tokens, held-out loss
# about 2.85 against ln(4000) = 8.29.
RECIPE = dict(
    hidden_size=128, intermediate_size=352, layers=4, heads=4, kv_heads=2, vocab_size=4000,
    steps=2600, seq_len=256, batch_size=16, lr=3e-3, seed=0,
)  # fmt: skip


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _perplexities(folder: Path, texts: list[str], samples: int, seq_len: int) -> dict[str, float]:
    """Perplexity of `texts` under the model in float32, NF4 (double quant) and LLM.int8,
    each loaded the way a fine-tuning run loads it, measured as `quailora eval` measures."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quailora_core.config import QuantConfig
    from quailora_core.evaluate import _mean, _sample_losses
    from quailora_core.model.base import disable_cpu_packing
    from quailora_core.quant.quantizer import bnb_config
    from quailora_core.sources.packing import pack

    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = pack(texts, tokenizer, samples, seq_len, 0, 0)
    out: dict[str, float] = {}
    for name, quant in (("float32", None), ("nf4", QuantConfig(bits=4)), ("int8", QuantConfig(bits=8))):
        kwargs = {} if quant is None else {"quantization_config": bnb_config(quant, torch.float32)}
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
        disable_cpu_packing(model)  # compute with exactly Q, as the engine and training do
        sums, counts = _sample_losses(model, batch.input_ids, batch.attention_mask, 8, "cpu", lambda: None)
        out[name] = math.exp(_mean(sums, counts))
    return out


def make(out: Path, threads: int) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from quailora_core.demo import MARKER_FILE, MARKER_KIND, build_tiny_llm
    from quailora_core.sources import corpus
    from quailora_core.sources.text import _paragraphs, default_text, load_texts

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".demo-model.work-", dir=out.parent))
    try:
        texts = corpus.broad_pretraining_corpus()
        versions = {}
        for pkg in corpus.BROAD_PACKAGES:
            if pkg == "stdlib":
                versions[pkg] = sys.version.split()[0]
            else:
                try:
                    versions[pkg] = __import__(pkg).__version__
                except Exception:  # not installed: the corpus skipped it
                    versions[pkg] = None
        print(f"corpus: {len(texts):,} documents, {sum(map(len, texts)):,} characters", flush=True)
        stats = build_tiny_llm(
            work / "fp32", texts=texts, num_threads=threads, on_log=lambda m: print(m, flush=True), **RECIPE
        )

        final = work / "bf16"
        model = AutoModelForCausalLM.from_pretrained(work / "fp32", dtype=torch.float32)
        model.to(torch.bfloat16).save_pretrained(final)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (work / "fp32" / name).exists():
                shutil.copy2(work / "fp32" / name, final / name)
        measured = {
            "sample_text": _perplexities(final, _paragraphs(default_text()), samples=16, seq_len=128),
            "demo_calibration": _perplexities(final, load_texts("demo"), samples=16, seq_len=128),
            "finetune_corpus": _perplexities(final, corpus.finetune_corpus(60_000), samples=16, seq_len=128),
        }
        for where, ppl in measured.items():
            print(
                f"{where}: perplexity float32 {ppl['float32']:.2f}, NF4 {ppl['nf4']:.2f} "
                f"({100 * (ppl['nf4'] / ppl['float32'] - 1):+.2f} %), int8 {ppl['int8']:.2f} "
                f"({100 * (ppl['int8'] / ppl['float32'] - 1):+.2f} %)",
                flush=True,
            )
        marker = {
            "kind": MARKER_KIND,
            "description": (
                "The QuAILoRA Studio demo model: a 1.8 M-parameter Llama pretrained by "
                "resources/make_demo_model.py on docstrings of the Python standard library and "
                "large Python packages, stored in bfloat16. For trying the app, not for real use."
            ),
            "made_by": "resources/make_demo_model.py",
            "recipe": RECIPE,
            "corpus": {"name": "broad", "documents": len(texts), "characters": sum(map(len, texts)),
                       "package_versions": versions},  # fmt: skip
            "stored_dtype": "bfloat16",
            "perplexity_16x128": measured,
            "made_with": {"torch": torch.__version__, "transformers": transformers.__version__},
            **{k: v for k, v in stats.items() if k not in ("transformers", "torch")},
        }
        (final / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        (final / "README.md").write_text(
            "# QuAILoRA Studio demo model\n\n"
            "A tiny Llama (hidden 128, 4 blocks, vocabulary 4000) pretrained on Python docstrings by\n"
            "`resources/make_demo_model.py`, shipped so that `quailora-gui --demo`, `quailora init\n"
            "--model demo` and the tests load the same bytes on every machine. Quantizing it to NF4\n"
            "costs real perplexity, so the initialization has something to recover. Not for real use.\n",
            encoding="utf-8",
        )
        if out.exists():
            shutil.rmtree(out)
        final.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = {p.name: _sha256(p) for p in sorted(out.iterdir()) if p.is_file()}
    print("\nDEMO_FILES = {")
    for name, digest in manifest.items():
        print(f'    "{name}": "{digest}",')
    print("}")
    return marker


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "resources" / "demo-model", help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    make(args.out, args.threads)
    print(f"done in {time.perf_counter() - t0:.0f} s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
