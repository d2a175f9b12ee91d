"""The demo: the small model that ships in `resources/demo-model/` (`shipped`: found, and
checked byte for byte against the hashes the package expects), and the builder that made it
and makes the tests' and benchmarks' tiny models (`builder`: a tokenizer and a tiny Llama
pretrained on text every machine has)."""

from quailora_core._exports import lazy

_TABLE = {
    "DEMO_FILES": "shipped",
    "MARKER_FILE": "shipped",
    "MARKER_KIND": "shipped",
    "RESOURCES_PACKAGE": "shipped",
    "demo_model_path": "shipped",
    "ensure_demo_model": "shipped",
    "is_demo_path": "shipped",
    "resources_dir": "shipped",
    "_verified": "shipped",
    "build_tiny_llm": "builder",
    "train_tokenizer": "builder",
}
__all__ = sorted(n for n in _TABLE if not n.startswith("_"))
__getattr__, __dir__ = lazy(__name__, _TABLE)
