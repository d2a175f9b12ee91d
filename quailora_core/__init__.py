"""QuAILoRA Studio's engine: quantization-aware, calibrated LoRA initialization for QLoRA.

The public entry point is `quailora_core.init.pipeline.run_init(RunConfig, on_event, cancel)`.
This package never imports Qt.
"""

import logging
import warnings

# On CPUs with AVX512-BF16, bitsandbytes tries to fetch an optional kernel from the
# Hugging Face Hub through the `kernels` package and logs a warning when it cannot (always,
# offline). Its own fallback kernel is used and results are identical, so the warning only
# alarms users; keep real errors.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class _DropExpectedCast(logging.Filter):
    """bitsandbytes logs "MatMul8bitLt: inputs will be cast from ... to float16" on EVERY
    forward of an 8-bit layer whose input is not float16 (float32 on CPU, bfloat16 on GPU):
    hundreds of identical lines per training run. The cast is how LLM.int8 works, not a
    problem; drop just that message and keep the logger's other warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


logging.getLogger("bitsandbytes.autograd._functions").addFilter(_DropExpectedCast())

# peft (0.21) reads `model.is_gradient_checkpointing` when it wraps a model, which
# transformers 5 has deprecated: a FutureWarning in every training log that the user can do
# nothing about. Silence exactly that message.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

__version__ = "0.1.0"
