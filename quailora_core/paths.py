"""Where the app's outputs go by default: one rule, read by the app and by the run history.

The app proposes new adapters and run folders under this root, and its History lists what
is found there, so both must agree on it: `$QUAILORA_GUI_OUTPUT_ROOT` when set (tests and
users who keep their runs elsewhere), else `~/QuAILoRA`.
"""

from __future__ import annotations

import os
from pathlib import Path

OUTPUT_ROOT_ENV = "QUAILORA_GUI_OUTPUT_ROOT"


def output_root() -> Path:
    """The folder new runs are written under unless the user picks another one."""
    return Path(os.environ.get(OUTPUT_ROOT_ENV) or Path.home() / "QuAILoRA").expanduser()
