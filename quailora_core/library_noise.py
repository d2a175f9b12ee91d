"""Quiet the messages of the libraries underneath that a user can do nothing about.

Entry points call `quiet_library_noise()` (the `quailora` command line, the training child,
the app); importing the engine changes no process-wide logging or warning state, so a
program that uses it as a library keeps its own settings.
"""

from __future__ import annotations

import logging
import warnings


class _DropExpectedCast(logging.Filter):
    """bitsandbytes logs "MatMul8bitLt: inputs will be cast from ... to float16" on EVERY
    forward of an 8-bit layer whose input is not float16 (float32 on CPU, bfloat16 on GPU):
    hundreds of identical lines per training run. The cast is how LLM.int8 works, not a
    problem; drop just that message and keep the logger's other warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


_FILTER = _DropExpectedCast()


def quiet_library_noise() -> None:
    """Idempotent; see the module docstring."""
    # On CPUs with AVX512-BF16, bitsandbytes tries to fetch an optional kernel from the
    # Hugging Face Hub through the `kernels` package and logs a warning when it cannot
    # (always, offline). Its own fallback kernel is used and results are identical.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    cast_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if _FILTER not in cast_logger.filters:
        cast_logger.addFilter(_FILTER)
    # peft (0.21) reads `model.is_gradient_checkpointing` when it wraps a model, which
    # transformers 5 has deprecated: a FutureWarning in every training log. Exactly that one.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
