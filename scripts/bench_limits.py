"""The pipeline against this machine's own limits, for `make bench` (scripts/bench.py).

Each figure is a ratio taken in one sitting, so it holds on a noisy machine:
- light load: one connection's `POST /messages` p50 against the no-op's (`GET /health/live`);
- the batch path: messages persisted end to end a second, over a sustained load and its drain,
  against what PostgreSQL takes with binary `COPY` into the same table and indexes;
- the worker table: the same batch load with 1, 2 and 4 workers, and which process saturates.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import uuid6

# The columns COPY fills, in the order it sends them.
_COPY_SQL = (
    "COPY messages (id, user_id, channel_id, content, created_at, inserted_at) FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ["uuid", "int8", "int8", "text", "timestamptz", "timestamptz"]


def copy_rate(database_url: str, *, rows: int = 300_000, chunk: int = 5_000) -> float:
    """Rows a second PostgreSQL takes with binary COPY into `messages` (same table, same indexes),
    one writer, one transaction per `chunk` rows (the worker's largest transaction); the table is
    emptied before and after. The rows are built before the clock starts."""
    now = datetime.now(tz=UTC)
    data = [
        (
            uuid6.uuid7(),  # as the API mints them: each row lands in today's partition
            1 + index % 10_000,
            1 + index % 100,
            f"copy message {index}",
            now,
            now,
        )
        for index in range(rows)
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE messages")
        started = time.perf_counter()
        for start in range(0, rows, chunk):
            with conn.transaction(), conn.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
                copy.set_types(_COPY_TYPES)
                for row in data[start : start + chunk]:
                    copy.write_row(row)
        elapsed = time.perf_counter() - started
        conn.execute("TRUNCATE messages")
    return rows / elapsed


@dataclass(frozen=True)
class Sustained:
    """A sustained batch load and its drain."""

    workers: int
    accepted: int  # messages stored by the end of the drain
    persisted_per_s: float  # stored / (last commit - first receipt)
    cpu_percent: dict[str, float]  # process group -> % of one core, over the load and its drain


def persisted_figures(database_url: str) -> tuple[int, float]:
    """Rows in `messages`, and their rate from the first receipt to the last commit."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(inserted_at) - min(created_at)) FROM messages"
        ).fetchone()
    assert row is not None
    count, span = int(row[0]), float(row[1] or 0.0)
    return count, (count / span if span > 0 else 0.0)


class CpuWatch:
    """CPU used by named groups of processes between start() and stop(), in % of one core."""

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]]) -> None:
        self.groups = groups
        self._before: dict[tuple[str, int], float] = {}
        self._started = 0.0

    def _read(self) -> dict[tuple[str, int], float]:
        seen: dict[tuple[str, int], float] = {}
        for name, find in self.groups.items():
            for process in find():
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    seen[(name, process.pid)] = times.user + times.system
        return seen

    def start(self) -> None:
        self._before = self._read()
        self._started = time.monotonic()

    def stop(self) -> dict[str, float]:
        after = self._read()
        elapsed = time.monotonic() - self._started
        used: dict[str, float] = dict.fromkeys(self.groups, 0.0)
        for (name, pid), seconds in after.items():
            used[name] += seconds - self._before.get((name, pid), 0.0)
        return {name: 100.0 * seconds / elapsed for name, seconds in used.items()}


def process_tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def listening_tree(port: int) -> list[psutil.Process]:
    """The process listening on `port` (an embedded server) and its children."""
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
            if connection.pid is not None:
                return process_tree(connection.pid)
    return []


@contextlib.contextmanager
def watching(groups: dict[str, Callable[[], list[psutil.Process]]]) -> Iterator[dict[str, float]]:
    """CPU % per group over the block, filled in when it ends."""
    figures: dict[str, float] = {}
    watch = CpuWatch(groups)
    watch.start()
    try:
        yield figures
    finally:
        figures.update(watch.stop())


def write_lua(scratch: Path, name: str, text: str) -> Path:
    path = scratch / name
    path.write_text(text)
    return path


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def median_of(figures: list[dict[str, Any]], key: str) -> float | None:
    values = sorted(float(entry[key]) for entry in figures if entry.get(key) is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
