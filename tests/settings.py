"""The project's settings as a local run, for pytest and the type checker.

Both load settings without the launcher (`python -m ingestor_site.stack`), which marks its runs
as local; without the mark the settings insist on a real SECRET_KEY. Set here before the import,
it also reaches the servers and workers the tests start as subprocesses.
"""

from __future__ import annotations

import os

os.environ.setdefault("INGESTOR_LOCAL", "true")

from ingestor_site.settings import *  # noqa: E402, F403
