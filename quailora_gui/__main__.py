"""`python -m quailora_gui` is the same as `quailora-gui`."""

from quailora_gui.app import main

raise SystemExit(main())
