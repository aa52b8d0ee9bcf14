#!/usr/bin/env python
"""How much Redis work do open dashboards cost? `python scripts/bench_dashboard.py`

Starts its own embedded PostgreSQL and Redis (never touches DATABASE_URL / REDIS_URL) and the web
server as `make run` does, then opens 0, 1 and 50 dashboard sockets (WS /ws/stats) in turn and
counts, over a window, the commands Redis processed (INFO commandstats) and the frames each
socket received. With --traffic a worker runs and a client posts a batch of 100 messages every
half second, so batch_persisted events and table refreshes are part of the cost too.

    python scripts/bench_dashboard.py [--sockets 0,1,50] [--seconds 10] [--web-processes 1] [--traffic]

With --flood N it measures instead what N sockets opened at once cost one web process: how many
got their snapshot and a live frame (and how the others were refused), and the process's resident
memory before, while they are open, and after they close, over --cycles rounds:

    python scripts/bench_dashboard.py --flood 2000 [--cycles 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402

from ingestor_site.embedded import EmbeddedPostgres, EmbeddedRedis  # noqa: E402
from ingestor_site.processes import WebAndWorkers  # noqa: E402


def commandstats(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()})


async def sockets_measure(url: str, count: int, seconds: float, client: redis.Redis) -> dict[str, Any]:
    """Open `count` sockets, let them settle, then count Redis commands and frames over `seconds`."""
    frames = [0] * count
    window = asyncio.Event()
    ws_url = url.replace("http://", "ws://") + "/ws/stats"
    async with aiohttp.ClientSession() as session:

        async def reader(index: int) -> None:
            async with session.ws_connect(ws_url, origin=url) as socket:
                async for _message in socket:
                    if window.is_set():
                        frames[index] += 1

        readers = [asyncio.create_task(reader(i)) for i in range(count)]
        await asyncio.sleep(2.0)  # connect, snapshots, broadcaster's first read
        before = commandstats(client)
        started = time.monotonic()
        window.set()
        await asyncio.sleep(seconds)
        window.clear()
        elapsed = time.monotonic() - started
        after = commandstats(client)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    # INFO itself is one command per sample; leave ours out.
    delta = after - before
    delta["info"] = max(delta["info"] - 1, 0)
    return {
        "sockets": count,
        "commands_per_s": sum(delta.values()) / elapsed,
        "top": delta.most_common(6),
        "frames_per_socket_s": (sum(frames) / count / elapsed) if count else 0.0,
    }


async def traffic(url: str, stop: asyncio.Event) -> None:
    batch = {"messages": [{"user_id": 1 + i, "channel_id": 1, "content": f"bench {i}"} for i in range(100)]}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while not stop.is_set():
            await client.post("/messages/batch", json=batch)
            await asyncio.sleep(0.5)


async def run(url: str, counts: list[int], seconds: float, client: redis.Redis, with_traffic: bool) -> None:
    stop = asyncio.Event()
    load = asyncio.create_task(traffic(url, stop)) if with_traffic else None
    results = []
    for count in counts:
        results.append(await sockets_measure(url, count, seconds, client))
        print(f"  {count:>3} sockets: {results[-1]['commands_per_s']:8.1f} Redis commands/s", flush=True)
    stop.set()
    if load is not None:
        await load
    print()
    print("| sockets | Redis commands/s | frames/s per socket | most frequent commands in the window |")
    print("|---:|---:|---:|---|")
    for result in results:
        top = ", ".join(f"{name} {calls}" for name, calls in result["top"])
        print(
            f"| {result['sockets']} | {result['commands_per_s']:,.1f} | {result['frames_per_socket_s']:.2f} | {top} |"
        )


def web_rss_mb(web_pid: int) -> float:
    """Resident memory of the web server's worker processes (granian's master aside), in MB."""
    children = psutil.Process(web_pid).children(recursive=True)
    return float(sum(child.memory_info().rss for child in children)) / 2**20


async def flood_once(url: str, count: int, web_pid: int) -> dict[str, Any]:
    """Open `count` sockets at once; wait for each to get a snapshot and a live frame, or be refused."""
    ws_url = url.replace("http://", "ws://") + "/ws/stats"
    live = asyncio.Event()
    fed = 0
    refused: Counter[str] = Counter()
    release = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def reader() -> None:
            nonlocal fed
            try:
                async with session.ws_connect(ws_url, origin=url, heartbeat=None) as socket:
                    kinds = set()
                    async for message in socket:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        kinds.add(message.data[:40].split('"')[3])
                        if {"snapshot", "stats_update"} <= kinds:
                            fed += 1
                            if fed == count:
                                live.set()
                            await release.wait()
                            return
                    refused[f"closed {socket.close_code}"] += 1
            except (aiohttp.ClientError, OSError) as exc:
                refused[type(exc).__name__] += 1
            if fed + sum(refused.values()) == count:
                live.set()

        before = web_rss_mb(web_pid)
        readers = [asyncio.create_task(reader()) for _ in range(count)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(live.wait(), 60)
        await asyncio.sleep(1.0)
        during = web_rss_mb(web_pid)
        release.set()
        await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.sleep(5.0)  # the server notices the closes and its broadcaster stops
    return {"fed": fed, "refused": dict(refused), "before": before, "during": during,
            "after": web_rss_mb(web_pid)}  # fmt: skip


def flood_run(url: str, count: int, cycles: int, web_pid: int) -> None:
    print(
        "| round | sockets fed (snapshot + live frame) | refused | web RSS before | while open | after close |"
    )
    print("|---:|---:|---|---:|---:|---:|")
    for cycle in range(1, cycles + 1):
        result = asyncio.run(flood_once(url, count, web_pid))
        refused = ", ".join(f"{n} {why}" for why, n in result["refused"].items()) or "none"
        print(
            f"| {cycle} | {result['fed']:,} of {count:,} | {refused} | {result['before']:.0f} MB "
            f"| {result['during']:.0f} MB | {result['after']:.0f} MB |",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sockets", default="0,1,50", help="socket counts to measure, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per socket count")
    parser.add_argument("--web-processes", type=int, default=1, help="web server processes")
    parser.add_argument("--traffic", action="store_true", help="run a worker and post 200 messages/s")
    parser.add_argument("--flood", type=int, default=0, help="open this many sockets at once instead")
    parser.add_argument("--cycles", type=int, default=3, help="rounds of --flood")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * args.flood + 1024)), hard))
    counts = [int(item) for item in args.sockets.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "postgres").start()
        valkey = EmbeddedRedis(Path(tmp) / "redis", persistent=False).start()
        env = {**os.environ, "DATABASE_URL": postgres.url, "REDIS_URL": valkey.url}
        if args.flood:  # the whole flood in one process, whatever the default limit
            env["DASHBOARD_MAX_SOCKETS"] = str(max(args.flood, 1))
        stack = WebAndWorkers(env=env, log_dir=Path(tmp))
        try:
            for command in (["migrate", "--noinput", "-v", "0"], ["collectstatic", "--noinput", "-v", "0"]):
                subprocess.run([sys.executable, "manage.py", *command], env=env, cwd=BASE_DIR, check=True)  # noqa: S603
            stack.web_start(args.web_processes)
            if args.traffic:
                stack.worker_start(f"bench-dashboard-{stack.port}")
            if args.flood:
                assert stack.web is not None
                print(f"{args.flood:,} sockets at once, {args.web_processes} web process(es):")
                flood_run(stack.url, args.flood, args.cycles, stack.web.pid)
                return 0
            client = redis.Redis.from_url(valkey.url)
            mode = "with 200 msg/s of traffic and one worker" if args.traffic else "idle pipeline"
            print(f"{args.web_processes} web process(es), {mode}, {args.seconds:.0f} s windows:")
            asyncio.run(run(stack.url, counts, args.seconds, client, args.traffic))
        finally:
            stack.stop()
            valkey.stop()
            postgres.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
