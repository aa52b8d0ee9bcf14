"""The pipeline against this machine's own limits, for `make bench` (scripts/bench.py).

Each goal is a ratio taken in one sitting, so it holds on a noisy machine:
- light load: one connection's `POST /messages` p50 against the no-op's (`GET /health/live`);
- the single-message path: `POST /messages` req/s against the no-op's, 64 connections;
- the batch path: messages persisted end to end a second, over a sustained load and its drain,
  against what PostgreSQL takes with binary `COPY` into the same table and indexes;
- the worker table: the same batch load with 1, 2 and 4 workers, and where the CPU went.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg

WrkRun = Callable[..., dict[str, float]]

LIGHT_LOAD_GOAL = 3.0  # POST p50 <= 3x the no-op's, one connection
SINGLE_PATH_GOAL = 0.5  # POST req/s >= 0.5 of the no-op's, 64 connections
# The ceiling's no-op run again, right after the POST run: the goal takes the two no-ops' mean.
NOOP_AFTER = "wrk GET /health/live, again after the POST"
BATCH_PATH_GOAL = 0.8  # persisted msg/s >= 0.8 of COPY's rows/s, one worker
MEMORY_GOAL_MB = 250.0  # `make run` at rest, RSS of every process

# The most rows a worker commits in one transaction (messages_app.jobs.ABSORB_MAX_ROWS, which
# tests/test_bench_report.py checks this against): COPY's reference commits as often.
WORKER_MAX_TRANSACTION_ROWS = 20_000

SUSTAINED_S = 10
# The COPY reference until 2026-12-01: this many rows into the empty table. The batch load stores
# ~2,000,000, and COPY slows as the table grows (300,000 rows into the empty table at 3.6-4.8 µs of
# PostgreSQL's CPU a row, the same into a table of 1,000,000 at 5.6-7.4), so the goal's reference
# is now COPY of as many rows as the load stored; this one is still reported beside it.
COPY_SMALL_ROWS = 300_000
SUSTAINED_CONNECTIONS = 8

_COPY_SQL = (
    "COPY messages (id, user_id, channel_id, content, created_at, inserted_at) FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ["uuid", "int8", "int8", "text", "timestamptz", "timestamptz"]


# The batch load's request bodies (scripts/bench_stages.py BATCH_LUA): this many bodies of
# BATCH_ITEMS messages, each message a random user of 10,000 and channel of 100, sent in turn.
LOAD_BODIES = 8
BATCH_ITEMS = 1_000
# Time between two requests' receipt times in the reference rows (~200 batch requests a second).
REQUEST_GAP = timedelta(milliseconds=5)


def load_like_rows(rows: int, *, seed: int = 1, first: int = 0) -> list[tuple[Any, ...]]:
    """The rows the batch load stores, in COPY's column order: the same users, channels and
    contents as its bodies, one receipt time (created_at) per request, UUIDv7 ids of now. With
    `first`, rows `first` to `first + rows` of that sequence.

    The indexes' cost depends on these values: rows with one created_at for all and the users in
    sequence (this reference until 2026-11-30) went in 1.12x faster (five alternating runs,
    159,782 against 142,929 rows/s), a rate the load's own rows do not allow."""
    from messages_app.partitions import uuid7_strings  # noqa: PLC0415  # keeps Django out of bench's imports

    rng = random.Random(seed)  # noqa: S311  # benchmark data, not security
    bodies = [
        [(rng.randint(1, 10_000), rng.randint(1, 100)) for _ in range(BATCH_ITEMS)]
        for _ in range(LOAD_BODIES)
    ]
    now = datetime.now(tz=UTC)
    data = []
    for index, message_id in enumerate(uuid7_strings(rows), first):
        request, item = divmod(index, BATCH_ITEMS)
        user_id, channel_id = bodies[request % LOAD_BODIES][item]
        received = now + request * REQUEST_GAP
        data.append(
            (uuid.UUID(message_id), user_id, channel_id, f"wrk batch message {item + 1}", received, now)
        )
    return data


def copy_rate(
    database_url: str, *, rows: int = COPY_SMALL_ROWS, chunk: int = WORKER_MAX_TRANSACTION_ROWS
) -> float:
    """Rows a second PostgreSQL takes with binary COPY into `messages` (same table, same indexes),
    one writer, a transaction per `chunk` rows (the worker's largest transaction), of the rows
    the batch load stores (load_like_rows), into the table emptied first (and after). Each
    transaction's rows are made before its clock starts; only the COPYs are timed."""
    elapsed = 0.0
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE messages")
        for start in range(0, rows, chunk):
            data = load_like_rows(min(chunk, rows - start), first=start)
            started = time.perf_counter()
            with conn.transaction(), conn.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
                copy.set_types(_COPY_TYPES)
                for row in data:
                    copy.write_row(row)
            elapsed += time.perf_counter() - started
        conn.execute("TRUNCATE messages")
    return rows / elapsed


def persisted_figures(database_url: str) -> tuple[int, float]:
    """Rows in `messages`, and their rate from the first receipt to the last commit."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(inserted_at) - min(created_at)) FROM messages"
        ).fetchone()
    assert row is not None
    count, span = int(row[0]), float(row[1] or 0.0)
    return count, (count / span if span > 0 else 0.0)


# --- CPU of groups of processes ------------------------------------------------------------------

ProcessGroups = dict[str, Callable[[], list[psutil.Process]]]


def process_tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def _cpu_read(groups: ProcessGroups) -> dict[tuple[str, int], float]:
    seen: dict[tuple[str, int], float] = {}
    for name, find in groups.items():
        for process in find():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seen[(name, process.pid)] = times.user + times.system
    return seen


@contextlib.contextmanager
def cpu_watched(groups: ProcessGroups) -> Any:
    """CPU each group used over the block, in % of one core: a dict filled in when it ends."""
    figures: dict[str, float] = {}
    before, started = _cpu_read(groups), time.monotonic()
    try:
        yield figures
    finally:
        after, elapsed = _cpu_read(groups), time.monotonic() - started
        figures["elapsed_s"] = elapsed
        for name in groups:
            used = sum(seconds - before.get(key, 0.0) for key, seconds in after.items() if key[0] == name)
            figures[name] = 100.0 * used / elapsed


# --- the measurements ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LightLoad:
    """One connection, closed loop: the no-op and POST /messages on the same server."""

    noop: dict[str, float]
    post: dict[str, float]

    @property
    def ratio(self) -> float:
        return self.post["p50"] / self.noop["p50"]


def light_load(url: str, *, wrk: WrkRun, post_lua: Path, fresh: Callable[[], None]) -> LightLoad:
    fresh()
    noop = wrk(f"{url}/health/live", connections=1, duration_s=5)
    post = wrk(f"{url}/messages", connections=1, duration_s=5, script=post_lua)
    return LightLoad(noop=noop, post=post)


@dataclass(frozen=True)
class Sustained:
    """A sustained batch load (wrk, 1,000 messages a request) and its drain."""

    workers: int
    stored: int
    persisted_per_s: float  # stored / (last commit - first receipt)
    acknowledged_per_s: float  # during the load
    cpu_percent: dict[str, float]  # process group -> % of one core, over the load and its drain
    # Messages a second the API refused during the load (503: the backlog reached INGEST_MAX_BACKLOG).
    refused_per_s: float = 0.0


def sustained_batch(
    url: str,
    database_url: str,
    *,
    workers: int,
    wrk: WrkRun,
    batch_lua: Path,
    groups: ProcessGroups,
    drain: Callable[[], None],
) -> Sustained:
    """SUSTAINED_S of batch requests on SUSTAINED_CONNECTIONS connections, then the drain, from an
    empty table."""
    with cpu_watched(groups) as cpu:
        load = wrk(f"{url}/messages/batch", connections=SUSTAINED_CONNECTIONS, duration_s=SUSTAINED_S,
                   script=batch_lua)  # fmt: skip
        drain()
    stored, rate = persisted_figures(database_url)
    acknowledged, refused = messages_answered(load)
    # wrk is gone by now: its share comes from its own CPU time over the load.
    cpu["wrk"] = load["cpu_percent"] * SUSTAINED_S / cpu.pop("elapsed_s")
    return Sustained(
        workers=workers,
        stored=stored,
        persisted_per_s=rate,
        acknowledged_per_s=acknowledged,
        refused_per_s=refused,
        cpu_percent=cpu,
    )


def messages_answered(load: dict[str, float]) -> tuple[float, float]:
    """Messages a second the batch load had acknowledged (2xx) and refused (any other answer: a
    503 once the backlog is full), from wrk's figures; wrk's requests/s counts both."""
    requests = load["requests_per_s"] * SUSTAINED_S
    refused = min(load.get("non_2xx", 0.0), requests)
    return (requests - refused) * BATCH_ITEMS / SUSTAINED_S, refused * BATCH_ITEMS / SUSTAINED_S


@dataclass(frozen=True)
class BatchVsCopy:
    """The batch load against COPY of as many rows as it stored (the goal's reference), and
    against COPY of COPY_SMALL_ROWS rows into the empty table (the reference until 2026-12-01)."""

    copy_rows_per_s: float
    pipeline: Sustained
    copy_small_rows_per_s: float | None = None

    @property
    def ratio(self) -> float:
        return self.pipeline.persisted_per_s / self.copy_rows_per_s


# --- the report ------------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _spread(values: list[float], digits: int = 0) -> str:
    if not values:
        return "–"
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def goal_rows(
    *,
    light: list[LightLoad],
    ceiling: dict[str, list[dict[str, float]]],
    batch: list[BatchVsCopy],
    memory_rss_mb: float | None,
) -> list[str]:
    """The goals table: each goal, the ratio measured in one sitting, and whether it is met."""
    rows = []
    if light:
        ratios = [run.ratio for run in light]
        post = _median([run.post["p50"] for run in light])
        noop = _median([run.noop["p50"] for run in light])
        worst = max(ratios)
        rows.append(
            f"| light load: one connection's `POST /messages` p50 ≤ {LIGHT_LOAD_GOAL:g}× the no-op's "
            f"| {_spread(ratios, 1)}× ({post:.2f} against {noop:.2f} ms) "
            f"| {'yes' if worst <= LIGHT_LOAD_GOAL else 'no'} |"
        )
    posts, noops = ceiling.get("wrk POST /messages", []), ceiling.get("wrk GET /health/live", [])
    if posts and noops:
        ratios = single_path_ratios(posts, noops, ceiling.get(NOOP_AFTER, []))
        rows.append(
            f"| single-message path: `POST /messages` req/s ≥ {SINGLE_PATH_GOAL:g} of the no-op's (wrk, 64 "
            f"connections; the no-op right before and right after, their mean) | {_spread(ratios, 2)} "
            f"| {'yes' if min(ratios) >= SINGLE_PATH_GOAL else 'no'} |"
        )
    if batch:
        ratios = [run.ratio for run in batch]
        persisted = _median([run.pipeline.persisted_per_s for run in batch])
        copied = _median([run.copy_rows_per_s for run in batch])
        stored = _median([run.pipeline.stored for run in batch])
        small = [
            run.pipeline.persisted_per_s / run.copy_small_rows_per_s
            for run in batch
            if run.copy_small_rows_per_s
        ]
        against_small = (
            f"; against {COPY_SMALL_ROWS:,} rows into the empty table {_spread(small, 2)}" if small else ""
        )
        rows.append(
            f"| batch path: persisted msg/s (10 s load + drain, 1 worker) ≥ {BATCH_PATH_GOAL:g} of COPY's rows/s "
            f"| {_spread(ratios, 2)} ({persisted:,.0f} against {copied:,.0f}, COPY of as many rows as the load "
            f"stored, {stored:,.0f}){against_small} | {'yes' if min(ratios) >= BATCH_PATH_GOAL else 'no'} |"
        )
    if memory_rss_mb is not None:
        rows.append(
            f"| `make run` at rest ≤ {MEMORY_GOAL_MB:.0f} MB RSS, every process | {memory_rss_mb:,.0f} MB "
            f"| {'yes' if memory_rss_mb <= MEMORY_GOAL_MB else 'no'} |"
        )
    return rows


def single_path_ratios(
    posts: list[dict[str, float]], before: list[dict[str, float]], after: list[dict[str, float]]
) -> list[float]:
    """Each run's POST req/s over its no-op's: the mean of the no-op run right before and the one
    right after the POST run (only the one before, for runs measured without the second)."""
    ratios = []
    for index, post in enumerate(posts):
        noops = [run[index]["requests_per_s"] for run in (before, after) if index < len(run)]
        ratios.append(post["requests_per_s"] / statistics.mean(noops))
    return ratios


def light_rows(light: list[LightLoad]) -> list[str]:
    rows = []
    for label, pick in (("`GET /health/live` (no-op)", "noop"), ("`POST /messages`", "post")):
        runs = [getattr(run, pick) for run in light]
        rows.append(
            f"| {label} | {_spread([run['requests_per_s'] for run in runs])} "
            f"| {_spread([run['p50'] for run in runs], 2)} | {_spread([run['p99'] for run in runs], 2)} |"
        )
    return rows


def worker_rows(table: list[Sustained], cores: int) -> list[str]:
    rows = []
    for run in table:
        cpu = run.cpu_percent
        total = sum(cpu.values())
        busiest = max(cpu, key=lambda name: cpu[name])
        refused = f" ({run.refused_per_s:,.0f} refused)" if run.refused_per_s else ""
        rows.append(
            f"| {run.workers} | {run.persisted_per_s:,.0f} | {run.acknowledged_per_s:,.0f}{refused} "
            f"| {cpu.get('web', 0):.0f}% | {cpu.get('workers', 0):.0f}% | {cpu.get('PostgreSQL', 0):.0f}% "
            f"| {cpu.get('Redis', 0):.0f}% | {cpu.get('wrk', 0):.0f}% | {total:.0f}% of {cores * 100}% | {busiest} |"
        )
    return rows


def stage_rows(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """Stage by stage, µs of CPU a message, before and after, for each workload (medians)."""
    names = list(after)
    rows = []
    stages = list(after[names[0]]["stages"])
    for stage in [*stages, "total"]:
        cells = []
        for name in names:
            now = (
                after[name]["stages"].get(stage) if stage != "total" else sum(after[name]["stages"].values())
            )
            then = None
            if before and name in before:
                then_stages = before[name]["median"]["stages"]
                then = then_stages.get(stage) if stage != "total" else sum(then_stages.values())
            cells.append(f"{'–' if then is None else f'{then:,.1f}'} → {now:,.1f}")
        label = f"**{stage}**" if stage == "total" else stage
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows
