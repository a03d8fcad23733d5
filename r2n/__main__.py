"""``python -m r2n ...``: the command line of :mod:`r2n.cli`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
