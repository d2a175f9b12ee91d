"""QuAILoRA Studio's engine: quantization-aware, calibrated LoRA initialization for QLoRA.

The public entry point is `quailora_core.engine.run_init(RunConfig, on_event, cancel)`.
This package never imports Qt.
"""

import logging

# On CPUs with AVX512-BF16, bitsandbytes tries to fetch an optional kernel from the
# Hugging Face Hub through the `kernels` package and logs a warning when it cannot (always,
# offline). Its own fallback kernel is used and results are identical, so the warning only
# alarms users; keep real errors.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
