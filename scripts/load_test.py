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


def _checkout_database(api_url: str) -> str | None:
    """The database of this checkout's running `make run` when `api_url` is its web server."""
    try:
        from ingestor_site.local_services import local_database_url
    except ImportError:  # the generator copied out of the project, or without its dependencies
        return None
    return local_database_url(api_url)


if __name__ == "__main__":
    sys.exit(main(database_for=_checkout_database))
