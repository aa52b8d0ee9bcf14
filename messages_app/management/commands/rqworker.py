"""`manage.py rqworker ingest`, working out of the box for this project's JSON jobs.

django-rq's own command defaults to rq's pickle serializer and the forking Worker, so a plain
`manage.py rqworker ingest` would fail every job with a DeserializationError. This command is
the same one with defaults that fit: the queue's serializer, IngestWorker and a short worker TTL.
No scheduler process: IngestWorker moves due retries back onto the queue itself
(`--with-scheduler` still starts rq's, which then does it instead).
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django_rq.management.commands.rqworker import Command as DjangoRQWorkerCommand

from messages_app.worker import WORKER_TTL_S
from telemetry.collector import collector_settle


class Command(DjangoRQWorkerCommand):
    help = "Run an rq worker for the given queues (default: ingest) with the JSON serializer."

    def add_arguments(self, parser: ArgumentParser) -> None:
        super().add_arguments(parser)  # type: ignore[no-untyped-call]  # django-rq leaves it unannotated
        parser.set_defaults(
            worker_class="messages_app.worker.IngestWorker",
            serializer=settings.RQ_QUEUES["ingest"]["SERIALIZER"],
            worker_ttl=WORKER_TTL_S,
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # Loaded by now: Django, rq, this project's modules (telemetry/collector.py).
        collector_settle()
        super().handle(*(args or ("ingest",)), **options)  # type: ignore[no-untyped-call]  # as above
