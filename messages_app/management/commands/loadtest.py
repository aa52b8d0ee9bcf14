"""`manage.py loadtest`: the load generator of scripts/load_test.py, as a management command.

A thin door: the options and the run are loadgen.cli's, shared with the script, which needs no
Django; this command only hands them its own output streams.
"""

from __future__ import annotations

import logging
import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from loadgen.cli import add_arguments, load_test_run


class Command(BaseCommand):
    help = (
        "Send messages to a running ingestor and report throughput, latency percentiles and failures; "
        "--verify checks that every acknowledged message was stored exactly once. "
        "Exits 1 when a threshold fails, 2 when the API is unreachable, 130 on Ctrl-C."
    )
    # The generator talks to a server over HTTP; it needs no system checks of this project.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: ArgumentParser) -> None:
        add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        # The project logs httpx's requests at INFO; the health and stats calls are not news here.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # The progress line redraws itself with "\r": write exactly what the generator writes.
        self.stdout.ending = ""
        self.stderr.ending = ""
        exit_code = load_test_run(options, stdout=self.stdout, stderr=self.stderr)  # type: ignore[arg-type]
        if exit_code:
            sys.exit(exit_code)
