#!/usr/bin/env python3
"""Load generator for the ingestor (no Django needed): `python scripts/load_test.py --stress`.

Run `python scripts/load_test.py --help` for every option; README.md ("Load testing") has examples.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The implementation lives in the `loadgen` package next to this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadgen.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
