"""Quiet the messages of the libraries underneath that a user can do nothing about.

Entry points call `quiet_library_noise()` (the `quailora` command line, the training child,
the app); importing the engine changes no process-wide logging or warning state, so a
program that uses it as a library keeps its own settings.
"""

from __future__ import annotations

import logging
import warnings


class _DropExpected(logging.Filter):
    """Drop one expected message of a logger and keep its other warnings."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


_EXPECTED = {
    # bitsandbytes logs this on EVERY forward of an 8-bit layer whose input is not float16
    # (float32 on CPU, bfloat16 on GPU): hundreds of identical lines per training run. The
    # cast is how LLM.int8 works, not a problem.
    "bitsandbytes.autograd._functions": _DropExpected("MatMul8bitLt: inputs will be cast"),
    # accelerate says so each time a model is loaded with its blocks left on disk, which is
    # how the engine always loads the full-precision model (model/streamed.py).
    "accelerate.big_modeling": _DropExpected("Some parameters are on the meta device because they were offloaded"),
}


def quiet_library_noise() -> None:
    """Idempotent; see the module docstring."""
    # On CPUs with AVX512-BF16, bitsandbytes tries to fetch an optional kernel from the
    # Hugging Face Hub through the `kernels` package and logs a warning when it cannot
    # (always, offline). Its own fallback kernel is used and results are identical.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    for name, expected in _EXPECTED.items():
        logger = logging.getLogger(name)
        if expected not in logger.filters:
            logger.addFilter(expected)
    # peft (0.21) reads `model.is_gradient_checkpointing` when it wraps a model, which
    # transformers 5 has deprecated: a FutureWarning in every training log. Exactly that one.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
