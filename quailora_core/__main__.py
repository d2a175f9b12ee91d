"""`python -m quailora_core` is the `quailora` command."""

import sys

from .cli import main

sys.exit(main())
