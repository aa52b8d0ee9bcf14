#!/usr/bin/env python
"""What waiting for a replica costs: INGEST_REDIS_MIN_REPLICAS 0 and 1 side by side.

Starts its own embedded PostgreSQL, a Redis master, its replica and three sentinels (Debian's
redis-server and redis-sentinel, loopback ports of their own), and the web server and one worker
as `make run` does, with REDIS_SENTINELS: one such stack for each setting, taking turns run by
run. Runs the load generator with single messages (one connection, then 64) and batches of 100,
and prints a Markdown table (throughput, client p50/p99, lost).

    python scripts/bench_redis_ha.py [--runs 3] [--messages 6000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
sys.path.insert(0, str(BASE_DIR / "scripts"))

from bench import Stack, drain_wait, load_test, say  # noqa: E402

from ingestor_site.embedded import EmbeddedPostgres  # noqa: E402
from ingestor_site.replicated_redis import ReplicatedRedis, missing_binaries  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario; figures are medians")
    parser.add_argument("--messages", type=int, default=6000, help="messages per single-message run")
    args = parser.parse_args()
    if missing_binaries():
        say(f"missing: {', '.join(missing_binaries())} (Debian: apt-get install redis-server redis-sentinel)")
        return 2
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        postgres = EmbeddedPostgres(base / "postgres", database="bench").start()
        servers = ReplicatedRedis(base / "redis")
        try:
            servers.start()
            subprocess.run(  # noqa: S603
                [sys.executable, str(BASE_DIR / "manage.py"), "migrate", "--noinput", "-v", "0"],
                check=True, cwd=BASE_DIR, env={**os.environ, "DATABASE_URL": postgres.url},
            )  # fmt: skip
            # Both settings run side by side and take turns, run by run: on a shared machine the
            # background load drifts, and alternating spreads the drift over both.
            stacks: dict[int, Stack] = {}
            try:
                for min_replicas in (0, 1):
                    stack = Stack(
                        database_url=postgres.url, redis_url="redis://sentinel-managed/0", log_dir=base
                    )
                    stack.env.update(
                        REDIS_SENTINELS=servers.sentinel_setting,
                        REDIS_MASTER_NAME=servers.master_name,
                        INGEST_REDIS_MIN_REPLICAS=str(min_replicas),
                    )
                    stack.start(workers=1)
                    stacks[min_replicas] = stack
                scenarios = {
                    # Light load: the answer's latency shows the replication round trip itself.
                    "single messages, 1 connection": [
                        "--messages", str(args.messages // 6), "--concurrent", "1", "--verify",
                    ],
                    "single messages, 64 connections": [
                        "--messages", str(args.messages), "--concurrent", "64", "--verify",
                    ],
                    "batches of 100, 8 connections": [
                        "--messages", str(args.messages * 20), "--concurrent", "8", "--batch-size", "100", "--verify",
                    ],
                }  # fmt: skip
                for name, load_args in scenarios.items():
                    reports: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
                    for _ in range(args.runs):
                        for min_replicas, stack in stacks.items():
                            drain_wait(stack.url)
                            reports[min_replicas].append(
                                load_test(stack.url, postgres.url, *load_args).report
                            )
                    for min_replicas in stacks:
                        rows.append(_row(name, min_replicas, reports[min_replicas]))
                        say(rows[-1])
            finally:
                for stack in stacks.values():
                    stack.stop()
        finally:
            servers.stop()
            postgres.stop()
    print("| load | INGEST_REDIS_MIN_REPLICAS | msg/s | client p50 ms | client p99 ms | lost |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    return 0


def _row(name: str, min_replicas: int, reports: list[dict[str, Any]]) -> str:
    def median(values: list[float]) -> str:
        return f"{statistics.median(values):,.1f}" if values else "–"

    throughput = [report["throughput_msgs_per_s"] for report in reports]
    p50 = [report["latency_ms"]["p50"] for report in reports]
    p99 = [report["latency_ms"]["p99"] for report in reports]
    verified = [report["lost"] for report in reports if report.get("lost") is not None]
    lost = f"{sum(verified)}" if verified else "–"
    return (
        f"| {name} | {min_replicas} | {median(throughput)} ({min(throughput):,.0f}–{max(throughput):,.0f}) "
        f"| {median(p50)} | {median(p99)} | {lost} |"
    )


if __name__ == "__main__":
    sys.exit(main())
