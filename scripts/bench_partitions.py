#!/usr/bin/env python
"""Measure the partitioned `messages` table: insert throughput before/after, bytes per message,
the upgrade migration's duration, and dropping a full partition while the API is under load.

Starts its own embedded PostgreSQL and Redis-compatible server (fresh, under .data/bench-partitions;
DATABASE_URL / REDIS_URL are ignored) and prints Markdown for BENCHMARKS.md and the README.

    python scripts/bench_partitions.py inserts [--runs 3] [--rows 200000]
    python scripts/bench_partitions.py sizing [--rows 1000000]
    python scripts/bench_partitions.py migration [--rows 3000000]
    python scripts/bench_partitions.py drop [--rows 1000000] [--rate 1000] [--duration 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
sys.path.insert(0, str(BASE_DIR / "scripts"))

import psycopg  # noqa: E402

from ingestor_site.embedded import fresh_services  # noqa: E402

DATA_DIR = BASE_DIR / ".data" / "bench-partitions"
LOAD_TEST = str(BASE_DIR / "scripts" / "load_test.py")
BATCH_SIZES = (50, 1000)  # what single POSTs make under load, and a batch POST's worth


def _runs(values: list[float], spec: str) -> str:
    return ", ".join(spec.format(value) for value in values)


def say(text: str) -> None:
    print(f"[bench-partitions] {text}", file=sys.stderr, flush=True)


def services() -> contextlib.AbstractContextManager[tuple[str, str]]:
    return fresh_services(DATA_DIR)


def django_setup(database_url: str, redis_url: str) -> None:
    os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url, LOG_LEVEL="WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ingestor_site.settings")
    import django

    django.setup()


def migrate(target: str | None = None) -> float:
    from django.core.management import call_command

    started = time.perf_counter()
    if target is None:
        call_command("migrate", verbosity=0)
    else:
        call_command("migrate", "messages_app", target, verbosity=0)
    return time.perf_counter() - started


def sample_texts() -> list[str]:
    from loadgen.engine import SAMPLE_TEXTS

    return list(SAMPLE_TEXTS)


def batches(count: int, size: int, texts: list[str]) -> list[list[list[Any]]]:
    import uuid6

    rng = random.Random(7)  # noqa: S311 - sample data, reproducible
    now = time.time()
    # Every message its own receipt time (as at 4,000 msg/s), or the created_at indexes would
    # shrink by deduplicating one repeated key.
    return [
        [
            [
                str(uuid6.uuid7()),
                rng.randint(1, 10_000),
                rng.randint(1, 100),
                f"{rng.choice(texts)} #bench-{n}",
                now + (number * size + n) / 4000,
            ]
            for n in range(size)
        ]
        for number in range(count)
    ]


PLAIN_TABLE = "messages_unpartitioned_bench"


def plain_table_create() -> None:
    """Today's layout beside the partitioned one: same columns, primary key and indexes."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {PLAIN_TABLE} (LIKE messages INCLUDING DEFAULTS, PRIMARY KEY (id))")
        for columns in ("created_at DESC", "channel_id, created_at DESC", "user_id, created_at DESC"):
            cursor.execute(f"CREATE INDEX ON {PLAIN_TABLE} ({columns})")


def cpu_seconds() -> float:
    """CPU time of this process and of its PostgreSQL backend: the cost of the inserts, which a
    busy neighbour slows down but does not add to."""
    from django.db import connection

    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    backend = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return time.process_time() + backend


def persist_timed(work: list[list[list[Any]]], table: str) -> tuple[float, float]:
    """Wall and CPU seconds messages_persist takes for these batches, the model pointed at `table`."""
    from messages_app import services
    from messages_app.models import Message

    Message._meta.db_table = table
    services._copy_sql.cache_clear()
    services._insert_sql.cache_clear()
    try:
        started, cpu_started = time.perf_counter(), cpu_seconds()
        for batch in work:
            services.messages_persist(batch=batch)
        return time.perf_counter() - started, cpu_seconds() - cpu_started
    finally:
        Message._meta.db_table = "messages"
        services._copy_sql.cache_clear()
        services._insert_sql.cache_clear()


def inserts(options: argparse.Namespace) -> None:
    """Both layouts in one database, fed alternately a few batches at a time: on a shared, noisy
    machine each layout meets the same neighbours, so the ratio means something."""
    from django.db import connection

    texts = sample_texts()
    layouts = {"unpartitioned": PLAIN_TABLE, "partitioned": "messages"}
    figures: dict[tuple[str, int], list[float]] = {}
    cpu_figures: dict[tuple[str, int], list[float]] = {}
    with services() as (database_url, redis_url):
        django_setup(database_url, redis_url)
        migrate()
        plain_table_create()
        for run in range(options.runs):
            for size in BATCH_SIZES:
                with connection.cursor() as cursor:
                    cursor.execute(f"TRUNCATE messages, {PLAIN_TABLE}")
                per_chunk = max(20_000 // size, 1)
                chunks = options.rows // (per_chunk * size)
                seconds = dict.fromkeys(layouts, 0.0)
                cpu = dict.fromkeys(layouts, 0.0)
                for chunk in range(chunks):
                    order = list(layouts) if chunk % 2 == 0 else list(reversed(layouts))
                    for layout in order:
                        wall, used = persist_timed(batches(per_chunk, size, texts), layouts[layout])
                        seconds[layout] += wall
                        cpu[layout] += used
                rows = chunks * per_chunk * size
                for layout in layouts:
                    rate = rows / seconds[layout]
                    figures.setdefault((layout, size), []).append(rate)
                    cpu_figures.setdefault((layout, size), []).append(cpu[layout] / rows * 1e6)
                    say(
                        f"run {run + 1}: {layout}, batches of {size}: {rate:,.0f} rows/s, "
                        f"{cpu[layout] / rows * 1e6:.1f} µs CPU a row"
                    )
    print(
        "| batch size | unpartitioned rows/s: median (runs) | partitioned rows/s: median (runs) | "
        "partitioned / unpartitioned: median of the runs' ratios (runs) |"
    )
    print("|---:|---|---|---|")
    for size in BATCH_SIZES:
        before, after = figures[("unpartitioned", size)], figures[("partitioned", size)]
        ratios = [b / a for a, b in zip(before, after, strict=True)]
        print(
            f"| {size} | **{statistics.median(before):,.0f}** ({_runs(before, '{:,.0f}')}) | "
            f"**{statistics.median(after):,.0f}** ({_runs(after, '{:,.0f}')}) | "
            f"**{statistics.median(ratios):.2f}** ({', '.join(f'{ratio:.2f}' for ratio in ratios)}) |"
        )
    print()
    print(
        "| batch size | unpartitioned µs CPU a row: median (runs) | partitioned µs CPU a row: median (runs) | ratio |"
    )
    print("|---:|---|---|---:|")
    for size in BATCH_SIZES:
        before, after = cpu_figures[("unpartitioned", size)], cpu_figures[("partitioned", size)]
        print(
            f"| {size} | **{statistics.median(before):.1f}** ({_runs(before, '{:.1f}')}) | "
            f"**{statistics.median(after):.1f}** ({_runs(after, '{:.1f}')}) | "
            f"{statistics.median(after) / statistics.median(before):.2f} |"
        )


def sizing(options: argparse.Namespace) -> None:
    texts = sample_texts()
    with services() as (database_url, redis_url):
        django_setup(database_url, redis_url)
        migrate()
        from django.db import connection

        from messages_app.services import messages_persist

        for batch in batches(options.rows // 1000, 1000, texts):
            messages_persist(batch=batch)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE messages")
            cursor.execute(
                "SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid), c.reltuples::bigint "
                "FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid "
                "WHERE i.inhparent = 'messages'::regclass ORDER BY 4 DESC LIMIT 1"
            )
            name, table_bytes, index_bytes, rows = cursor.fetchone()
            cursor.execute(f"SELECT avg(octet_length(content)) FROM {name}")  # noqa: S608
            content_bytes = float(cursor.fetchone()[0])
    per_message = (table_bytes + index_bytes) / rows
    print(
        f"partition {name}: {rows:,} rows, table {table_bytes / 2**20:.1f} MiB, indexes {index_bytes / 2**20:.1f} MiB"
    )
    print(f"content {content_bytes:.0f} bytes on average; {per_message:.0f} bytes per message on disk")
    print("| rate | rows per day | GB per day | 7 days | 30 days | 90 days |")
    print("|---:|---:|---:|---:|---:|---:|")
    for rate in (1_000, 4_000, 50_000):
        day_rows = rate * 86_400
        day_gb = day_rows * per_message / 1e9
        print(
            f"| {rate:,} msg/s | {day_rows / 1e6:,.1f} M | {day_gb:,.0f} GB | {7 * day_gb:,.0f} GB | "
            f"{30 * day_gb:,.0f} GB | {90 * day_gb:,.0f} GB |"
        )


def migration(options: argparse.Namespace) -> None:
    with services() as (database_url, redis_url):
        django_setup(database_url, redis_url)
        migrate()
        migrate("0001_initial")
        with psycopg.connect(database_url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            # Ids spread over the last 7 days (as a week of traffic), the content of the load generator.
            conn.execute(
                "INSERT INTO messages SELECT id, (random() * 10000)::bigint + 1, (random() * 100)::bigint + 1, "
                "'Deploy finished without errors #bench-' || g, uuid_extract_timestamp(id), "
                "uuid_extract_timestamp(id) + interval '20 ms' "
                "FROM (SELECT uuidv7(-(random() * interval '7 days')) AS id, g FROM generate_series(1, %s) g) s",
                [options.rows],
            )
            conn.execute("VACUUM ANALYZE messages")
            (size,) = conn.execute("SELECT pg_total_relation_size('messages')").fetchone() or (0,)
        say(f"{options.rows:,} rows ({size / 2**30:.2f} GiB with indexes); migrating")
        seconds = migrate()
        print(f"{options.rows:,} rows ({size / 2**30:.2f} GiB with indexes) converted in {seconds:.1f} s")


def load_run(url: str, database_url: str, rate: int, duration: int) -> dict[str, Any]:
    completed = subprocess.run(  # noqa: S603
        [sys.executable, LOAD_TEST, "--url", url, "--json", "--no-progress", "--rate", str(rate),
         "--duration", f"{duration}s", "--concurrent", "200", "--verify", "--database-url", database_url],
        capture_output=True, text=True, cwd=BASE_DIR, timeout=600,
    )  # fmt: skip
    if completed.returncode not in (0, 1):
        raise RuntimeError(f"load_test.py exited {completed.returncode}: {completed.stderr[-2000:]}")
    return dict(json.loads(completed.stdout))


def partition_fill(dsn: str, day: datetime, rows: int) -> tuple[str, int, int]:
    """Create the partition of `day` and fill it with `rows` messages of that day."""
    from messages_app import partitions

    one_day = timedelta(days=1)
    name = partitions.partition_name(day, day + one_day)
    low, high = partitions.uuid_floor(day), partitions.uuid_floor(day + one_day)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} PARTITION OF messages FOR VALUES FROM ('{low}') TO ('{high}')")
        conn.execute(
            "INSERT INTO messages SELECT id, (random() * 10000)::bigint + 1, (random() * 100)::bigint + 1, "
            "'Deploy finished without errors #fill-' || g, uuid_extract_timestamp(id), "
            "uuid_extract_timestamp(id) + interval '20 ms' "
            "FROM (SELECT uuidv7(%s - now() + g * interval '80 ms') AS id, g FROM generate_series(1, %s) g) s",
            [day, rows],
        )
        conn.execute(f"VACUUM ANALYZE {name}")
        count, size = conn.execute(
            f"SELECT count(*), pg_total_relation_size('{name}') FROM {name}"  # noqa: S608
        ).fetchone() or (0, 0)
    return name, int(count), int(size)


def drop(options: argparse.Namespace) -> None:
    """Per repeat: a load run, then the same load with a full partition dropped at half time (by
    the function maintenance uses), each run verified (nothing lost or duplicated)."""
    from bench import Stack, drain_wait

    from messages_app import partitions

    results: list[tuple[str, int, int, dict[str, float], dict[str, Any], dict[str, Any]]] = []
    with services() as (database_url, redis_url):
        django_setup(database_url, redis_url)
        migrate()
        dsn = database_url.replace("postgres://", "postgresql://")
        stack = Stack(database_url=database_url, redis_url=redis_url, log_dir=DATA_DIR)
        stack.start(workers=1)
        try:
            for repeat in range(options.repeats):
                day = partitions.interval_start(datetime.now(tz=UTC), timedelta(days=1)) - (
                    5 + repeat
                ) * timedelta(days=1)
                name, rows, size = partition_fill(dsn, day, options.rows)
                say(f"{name}: {rows:,} rows, {size / 2**20:.0f} MiB with indexes")
                timing: dict[str, float] = {}

                def drop_midway(name: str = name, timing: dict[str, float] = timing) -> None:
                    time.sleep(options.duration / 2)
                    target = next(p for p in partitions.partitions_list() if p.name == name)
                    timing["detach_s"], timing["drop_s"] = partitions.partition_drop(target)

                # Every other repeat measures the drop first, so the order favours neither.
                if repeat % 2 == 0:
                    baseline = load_run(stack.url, database_url, options.rate, options.duration)
                    drain_wait(stack.url)
                dropper = threading.Thread(target=drop_midway)
                dropper.start()
                during = load_run(stack.url, database_url, options.rate, options.duration)
                dropper.join()
                drain_wait(stack.url)
                if repeat % 2 == 1:
                    baseline = load_run(stack.url, database_url, options.rate, options.duration)
                    drain_wait(stack.url)
                say(
                    f"{name}: detached in {timing['detach_s'] * 1000:.0f} ms, dropped in {timing['drop_s'] * 1000:.0f} ms"
                )
                results.append((name, rows, size, timing, baseline, during))
        finally:
            stack.stop()
    print(
        "| repeat | partition dropped | DETACH / DROP took | run | acknowledged msg/s | lost / duplicated | "
        "API p50 | API p99 | API max | receipt → commit p99 |"
    )
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for number, (name, rows, size, timing, baseline, during) in enumerate(results, start=1):
        for label, report in (("no drop", baseline), ("drop at half time", during)):
            latency, e2e = report["latency_ms"], report.get("e2e_latency_ms") or {}
            dropped = f"{name} ({rows:,} rows, {size / 2**20:.0f} MiB)" if label == "no drop" else ""
            took = (
                f"{timing['detach_s'] * 1000:.0f} / {timing['drop_s'] * 1000:.0f} ms"
                if label != "no drop"
                else ""
            )
            print(
                f"| {number} | {dropped} | {took} | {label} | {report['throughput_msgs_per_s']:,.0f} | "
                f"{report.get('lost')} / {report.get('duplicated')} | {latency['p50']:.1f} ms | "
                f"{latency['p99']:.1f} ms | {latency['max']:.1f} ms | {e2e.get('p99', float('nan')):.1f} ms |"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("inserts", help="insert throughput, unpartitioned vs partitioned")
    command.add_argument("--runs", type=int, default=3, help="runs of each layout (medians reported)")
    command.add_argument("--rows", type=int, default=200_000, help="rows per measurement")
    command = commands.add_parser("sizing", help="bytes per message on disk and the daily volume")
    command.add_argument("--rows", type=int, default=1_000_000, help="rows to measure on")
    command = commands.add_parser("migration", help="time to convert an unpartitioned table")
    command.add_argument("--rows", type=int, default=3_000_000, help="rows in the table to convert")
    command = commands.add_parser("drop", help="drop a full partition while the API is under load")
    command.add_argument("--rows", type=int, default=1_000_000, help="rows in the partition dropped")
    command.add_argument("--rate", type=int, default=300, help="messages per second the load sends")
    command.add_argument("--repeats", type=int, default=3, help="pairs of runs (without, with a drop)")
    command.add_argument("--duration", type=int, default=20, help="seconds each load run lasts")
    options = parser.parse_args()
    {"inserts": inserts, "sizing": sizing, "migration": migration, "drop": drop}[options.command](options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
