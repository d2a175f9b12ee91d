"""`python -m quailora_core` is the `quailora` command."""

import sys

from quailora_core.cli import main

sys.exit(main())
