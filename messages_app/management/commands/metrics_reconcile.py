"""`manage.py metrics_reconcile`: the stored-message and dead-letter counters set from the tables.

A worker killed after its batch's commit and before that batch's metrics leaves the counters
short of the table; `make run` (and compose's migrate step) run this at every start, before the
workers, so the figures the dashboard and /stats show start from the table again.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from messages_app.services import counters_reconcile


class Command(BaseCommand):
    help = (
        "Set the stored-message and dead-letter counters to the tables' counts (run with no worker writing)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        messages, dead_letters = counters_reconcile()
        if options["verbosity"] > 0:
            self.stdout.write(
                f"counters set from the tables: {messages} messages, {dead_letters} dead letters"
            )
