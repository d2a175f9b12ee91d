"""The demo: the small model that ships in `resources/demo-model/` (`shipped`: found, and
checked byte for byte against the hashes the package expects), and the builder that made it
and makes the tests' and benchmarks' tiny models (`builder`: a tokenizer and a tiny Llama
pretrained on text every machine has)."""

from quailora_core._exports import lazy

_EXPORTS = {
    "shipped": "DEMO_FILES MARKER_FILE MARKER_KIND RESOURCES_PACKAGE demo_model_path ensure_demo_model is_demo_path resources_dir _verified",
    "builder": "build_tiny_llm train_tokenizer",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split() if not n.startswith("_"))
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
