"""`quailora` command line: `init`, `train`, `eval`, `export-run`, `merge`, `export-gguf`, `queue`.

Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure.
Every command runs through one error and signal path (`reporting.run_reporting`): on a
terminal a progress bar (`progress`), with `--json` every engine event as one JSON line on
stdout (then Finished, or Failed on an error); Ctrl-C or SIGTERM stops at the next check.
Flags, their help and usual values come from the config's own field help (`flags`).
Nothing in the engine imports this package: the command line sits on top.
"""

from __future__ import annotations

import sys

from quailora_core.cli.commands import make_parser
from quailora_core.library_noise import quiet_library_noise


def main(argv: list[str] | None = None) -> int:
    quiet_library_noise()
    parser = make_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
