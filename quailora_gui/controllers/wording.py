"""The core's refusals in the window's words.

The engine words one hint for every face, and many name what a command-line user changes:
"use --model demo", "Use --rank 8, 16 or 64", "Set [train] data in the run file, or use --data
PATH". A user of the window sees no flags and no run-file sections, so every error text the app
shows (the form's red labels, the error dialogs, the Training tab) goes through `app_words`,
which names the setting instead. The setting a flag sets comes from the core's own field help
(`config.section_help`: `FieldHelp.flag`), so a new flag needs no entry here.
"""

from __future__ import annotations

import re
from functools import cache

# whole phrases first (a flag with a placeholder value); a run file's own sections stay named
# in errors about a run file the user opened
_PHRASES: tuple[tuple[str, str], ...] = (
    (r"Set \[train\] data in the run file, or use --data PATH\.", "Choose the training data."),
    (r'use \[train\] launch = "ddp" to train data parallel', 'choose the run kind "data parallel" to train'),
    (r"--model demo\b", "the demo model"),
    (r"--model PATH\b", "a model folder"),
    (r"--calibration PATH\b", "a calibration file or folder"),
    (r"--data PATH\b", "a training data file or folder"),
    (r"--output FILE\.gguf\b", "an output file"),
    (r"--output PATH\b", "an output folder"),
)
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)")


@cache
def _flag_words() -> dict[str, str]:
    """flag -> the setting it sets, in words ("--max-steps" -> "max steps")."""
    from quailora_core.config import SECTIONS, section_help

    words: dict[str, str] = {}
    for section in (*SECTIONS, None):
        for h in section_help(section):
            if h.flag:
                words.setdefault(h.flag, h.path.rpartition(".")[2].replace("_", " "))
    words.update({"--lr": "learning rate", "--output": "output folder", "--resume": "Resume",
                  "--overwrite": "Overwrite", "--targets": "targets"})  # fmt: skip
    return words


def app_words(text: str) -> str:
    """`text` (a core message or hint) with its command-line terms replaced by the settings' names."""
    if not text or ("--" not in text and "[" not in text):  # no flag, no run-file setting
        return text
    for pattern, replacement in _PHRASES:
        text = re.sub(pattern, replacement, text)
    words = _flag_words()
    return _FLAG.sub(lambda m: words.get(m.group(0), m.group(1).replace("-", " ")), text)
