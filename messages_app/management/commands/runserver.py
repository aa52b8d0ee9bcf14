"""`manage.py runserver` on daphne: pages, the API and the dashboard's WebSocket, with autoreload.

This is daphne's own command. daphne itself is not in INSTALLED_APPS: its app imports Twisted and
autobahn when Django starts, about 27 MB in every process (each web process, each worker) although
only this command serves through daphne.
"""

from __future__ import annotations

from daphne.management.commands.runserver import Command

__all__ = ["Command"]
