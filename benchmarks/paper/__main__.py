"""``python -m benchmarks.paper`` (from the repository root), or ``python benchmarks/paper``."""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as ``python benchmarks/paper``: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.paper.cli import main

if __name__ == "__main__":
    sys.exit(main())
