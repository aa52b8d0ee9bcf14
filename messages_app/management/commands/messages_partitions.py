"""`manage.py messages_partitions`: the partition maintenance the workers run, by hand.

Lists the partitions of `messages`, creates those due ahead and drops those past
MESSAGE_RETENTION; `--dry-run` only says what it would do.
"""

from __future__ import annotations

from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from messages_app import partitions


def _duration(value: timedelta) -> str:
    """As the settings spell it: 30d, 6h."""
    hours = int(value.total_seconds()) // 3600
    return f"{hours // 24}d" if hours % 24 == 0 else f"{hours}h"


class Command(BaseCommand):
    help = "Create the messages table's partitions ahead and drop the expired ones (what workers do)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Say which partitions would be created and dropped; change nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not partitions.is_partitioned():
            raise CommandError("the messages table is not partitioned yet: run `manage.py migrate` first")
        dry_run: bool = options["dry_run"]
        retention = settings.MESSAGE_RETENTION
        self.stdout.write(
            f"interval {_duration(settings.MESSAGE_PARTITION_INTERVAL)}, {settings.MESSAGE_PARTITIONS_AHEAD} ahead, "
            f"retention {_duration(retention) if retention else 'none (keep everything)'}"
        )
        report = partitions.partitions_maintain(dry_run=dry_run)
        if not report.ran:
            raise CommandError("another maintainer (a worker) holds the lock; try again in a moment")
        verb = "would " if dry_run else ""
        for name in report.created:
            self.stdout.write(f"{verb}create {name}")
        for name in report.dropped:
            self.stdout.write(f"{verb}drop {name}")
        for error in report.errors:
            self.stderr.write(f"failed: {error}")
        self.stdout.write(self._listing())
        if report.default_rows:
            self.stderr.write(
                f"{partitions.DEFAULT_PARTITION} holds {report.default_rows} rows with no partition"
            )
        if report.errors:
            raise CommandError(f"{len(report.errors)} action(s) failed")

    def _listing(self) -> str:
        lines = ["partition                      from (UTC)            to (UTC)              rows (est.)"]
        with connection.cursor() as cursor:
            for partition in partitions.partitions_list():
                cursor.execute(
                    "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE relname = %s", [partition.name]
                )
                row = cursor.fetchone()
                estimate = row[0] if row else 0
                start = f"{partition.start:%Y-%m-%d %H:%M}" if partition.start else "(default)"
                end = f"{partition.end:%Y-%m-%d %H:%M}" if partition.end else ""
                lines.append(f"{partition.name:<30} {start:<21} {end:<21} {estimate}")
        return "\n".join(lines)
