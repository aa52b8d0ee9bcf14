#!/usr/bin/env python
"""Benchmark the ingest path end to end: `make bench-ingest`.

Starts its own embedded PostgreSQL and Redis (never touches DATABASE_URL / REDIS_URL), the web
server and workers as `make run` does, and drives them with wrk (Debian/Ubuntu: `apt-get install
wrk`). For each scenario it prints accepted requests/s and client latency (wrk), persisted
messages/s end to end (rows / time from the first receipt to the last commit) and receipt ->
commit latency p50/p99 (from the rows' created_at and inserted_at). Each figure is the median of
--runs runs.

    python scripts/bench_ingest.py [--runs 3] [--duration 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

import httpx  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402

from ingestor_site.embedded import EmbeddedPostgres, EmbeddedRedis, free_port  # noqa: E402

SINGLE_LUA = """
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"user_id": %d, "channel_id": %d, "content": "bench message %d"}',
                             math.random(1, 10000), math.random(1, 100), counter)
  return wrk.format("POST", "/messages", {["Content-Type"] = "application/json"}, body)
end
"""

BATCH_LUA = """
local counter = 0
local per_request = %d
request = function()
  local items = {}
  for i = 1, per_request do
    counter = counter + 1
    items[i] = string.format('{"user_id": %%d, "channel_id": %%d, "content": "bench message %%d"}',
                             math.random(1, 10000), math.random(1, 100), counter)
  end
  local body = '{"messages": [' .. table.concat(items, ",") .. ']}'
  return wrk.format("POST", "/messages/batch", {["Content-Type"] = "application/json"}, body)
end
"""


def wrk(url: str, *, duration: int, connections: int, script: Path | None = None) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], check=True, capture_output=True, text=True).stdout  # noqa: S603
    result = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    for label, key in (("50%", "p50_ms"), ("99%", "p99_ms")):
        match = re.search(rf"{re.escape(label)}\s+([\d.]+)(us|ms|s)", output)
        if match:
            value, unit = float(match.group(1)), match.group(2)
            result[key] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = float(non_2xx.group(1)) if non_2xx else 0.0
    return result


class Stack:
    def __init__(
        self, database_url: str, redis_url: str, *, web_processes: int, workers: int, log_dir: Path
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "LOG_LEVEL": "WARNING",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        log = (log_dir / "stack.log").open("ab")
        python = sys.executable
        self.processes.append(
            subprocess.Popen(  # noqa: S603
                [
                    python,
                    "-m",
                    "granian",
                    "--interface",
                    "asginl",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(web_processes),
                    "--log-level",
                    "warning",
                    "ingestor_site.asgi:application",
                ],
                env=self.env,
                cwd=BASE_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        )
        for index in range(workers):
            self.processes.append(
                subprocess.Popen(  # noqa: S603
                    [python, "manage.py", "rqworker", "ingest", "--name", f"bench-{index}-{self.port}"],
                    env=self.env,
                    cwd=BASE_DIR,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the stack did not become healthy")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def drained(redis_client: redis.Redis, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if int(redis_client.get("queue_length") or 0) <= 0:
            return
        time.sleep(0.1)
    raise RuntimeError("the queue did not drain")


def persisted_figures(database_url: str) -> dict[str, float]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """
            SELECT count(*),
                   extract(epoch FROM max(inserted_at) - min(created_at)),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY inserted_at - created_at),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY inserted_at - created_at)
            FROM messages
            """
        ).fetchone()
    assert row is not None
    count, span_s, p50, p99 = row
    return {
        "rows": float(count),
        "persisted_per_s": count / float(span_s) if span_s else 0.0,
        "e2e_p50_ms": p50.total_seconds() * 1000 if p50 else 0.0,
        "e2e_p99_ms": p99.total_seconds() * 1000 if p99 else 0.0,
    }


def reset(database_url: str, redis_client: redis.Redis) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE messages, dead_letters")
    redis_client.flushdb()


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs if key in run) for key in runs[0]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario; figures are medians")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for single POSTs")
    parser.add_argument("--web-processes", type=int, default=2, help="web server processes")
    parser.add_argument("--workers", type=int, default=2, help="rq workers")
    parser.add_argument("--batch-items", type=int, default=100, help="messages per POST /messages/batch")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench-ingest needs wrk (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="ingestor-bench-"))
    postgres = EmbeddedPostgres(work / "postgres").start()
    redis_server = EmbeddedRedis(work / "redis", persistent=True).start()
    env = {**os.environ, "DATABASE_URL": postgres.url, "REDIS_URL": redis_server.url}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], env=env, cwd=BASE_DIR, check=True)  # noqa: S603
    redis_client = redis.Redis.from_url(redis_server.url)
    single_lua = work / "single.lua"
    single_lua.write_text(SINGLE_LUA)
    batch_lua = work / "batch.lua"
    batch_lua.write_text(BATCH_LUA % args.batch_items)
    results: dict[str, dict[str, Any]] = {}
    stack = Stack(
        postgres.url, redis_server.url, web_processes=args.web_processes, workers=args.workers, log_dir=work
    )
    try:
        scenarios: list[tuple[str, str, Path | None, int, int]] = [
            ("no-op view (GET /health/live)", "/health/live", None, args.connections, 1),
            ("POST /messages", "/messages", single_lua, args.connections, 1),
            (f"POST /messages/batch ({args.batch_items}/request)", "/messages/batch", batch_lua, 16,
             args.batch_items),
        ]  # fmt: skip
        for name, path, script, connections, per_request in scenarios:
            runs = []
            for _ in range(args.runs):
                reset(postgres.url, redis_client)
                figures = wrk(
                    stack.url + path, duration=args.duration, connections=connections, script=script
                )
                figures["accepted_msgs_per_s"] = figures["requests_per_s"] * per_request
                if script is not None:
                    drained(redis_client)
                    figures.update(persisted_figures(postgres.url))
                runs.append(figures)
                print(f"  {name}: {figures}", flush=True)
            results[name] = median_of(runs)
    finally:
        stack.stop()
        redis_server.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nMedians of {args.runs} runs, {args.duration}s each, {args.web_processes} web processes, "
          f"{args.workers} workers, wrk -t1 on the same machine:")  # fmt: skip
    print(f"{'scenario':44} {'req/s':>9} {'accepted msg/s':>15} {'p50/p99 ms':>14} {'persisted msg/s':>16} "
          f"{'e2e p50/p99 ms':>15}")  # fmt: skip
    for name, figures in results.items():
        e2e = (
            f"{figures.get('e2e_p50_ms', 0):.0f}/{figures.get('e2e_p99_ms', 0):.0f}"
            if "rows" in figures
            else "-"
        )
        persisted = f"{figures['persisted_per_s']:,.0f}" if "rows" in figures else "-"
        print(f"{name:44} {figures['requests_per_s']:>9,.0f} {figures['accepted_msgs_per_s']:>15,.0f} "
              f"{figures.get('p50_ms', 0):>6.1f}/{figures.get('p99_ms', 0):<7.1f} {persisted:>16} {e2e:>15}")  # fmt: skip
    noop = results["no-op view (GET /health/live)"]["requests_per_s"]
    single = results["POST /messages"]["requests_per_s"]
    print(f"\nPOST /messages costs {noop / single - 1:+.0%} per request against the no-op view.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
