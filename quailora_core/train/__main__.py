"""`python -m quailora_core.train run.toml [flags]`: `quailora train` without the console script."""

import sys

from quailora_core.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
