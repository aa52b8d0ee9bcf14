#!/usr/bin/env python
"""What does an ASGI server itself add to a lone request? `python scripts/bench_asgi_servers.py`

The light-load goal (one connection's `POST /messages` p50 within 3x the no-op's) is bounded by the
server before any of our code runs. This serves a minimal ASGI app (this module's `app`, no Django)
under granian as `make run` starts it (`--interface asginl --http 1`, one process) and, when it is
installed, under uvicorn (httptools, uvloop), and times one connection (wrk -t1 -c1) on:

- `GET /get`: answered at once, the body never read (what the no-op `GET /health/live` does);
- `POST /post`: the same, after reading the request body (as every `POST /messages` must), as
  the API handler reads it: up to its Content-Length, else to the server's last message;
- `POST /post-redis`: the body read, then one asyncio Redis round trip (PING) before answering,
  the shape of a lone `POST /messages` (its enqueue is one EVALSHA).

    python scripts/bench_asgi_servers.py [--runs 3] [--seconds 3]

Redis is REDIS_URL's (default redis://127.0.0.1:6379/0); it is only sent PING. Figures are the
p50 in microseconds, medians of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from redis.asyncio import Redis  # noqa: E402

from ingestor_site.embedded import free_port  # noqa: E402
from ingestor_site.processes import live_wait, spawn, stop  # noqa: E402

PATHS = ("get", "post", "post-redis")
_clients: dict[asyncio.AbstractEventLoop, Redis] = {}


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[Mapping[str, Any]]],
    send: Callable[[Mapping[str, Any]], Awaitable[None]],
) -> None:
    """The minimal app the servers are timed with (see the module's docstring)."""
    if scope["type"] != "http":
        return
    if scope["path"] != "/get":
        declared = dict(scope.get("headers", ())).get(b"content-length")
        length, size = (None if declared is None else int(declared)), 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if size == length or not message.get("more_body", False):
                break
    if scope["path"] == "/post-redis":
        loop = asyncio.get_running_loop()
        if loop not in _clients:
            _clients[loop] = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        await _clients[loop].ping()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


def servers() -> dict[str, list[str]]:
    """The command of each server to time, with `{port}` to fill in."""
    commands = {
        "granian": [sys.executable, "-m", "granian", "--interface", "asginl", "--http", "1", "--workers", "1",
                    "--log-level", "warning", "--working-dir", str(HERE), "--port", "{port}",
                    "bench_asgi_servers:app"],
    }  # fmt: skip
    if importlib.util.find_spec("uvicorn") is not None:
        commands["uvicorn"] = [sys.executable, "-m", "uvicorn", "--http", "httptools", "--log-level", "warning",
                               "--no-access-log", "--lifespan", "off", "--app-dir", str(HERE), "--port", "{port}",
                               "bench_asgi_servers:app"]  # fmt: skip
        if importlib.util.find_spec("uvloop") is not None:
            commands["uvicorn"][3:3] = ["--loop", "uvloop"]
    return commands


@contextlib.contextmanager
def serving(command: list[str]) -> Iterator[str]:
    """The server started on a free port as `make run` starts its own (a process group, guarded
    by the watchdog), its URL yielded once it answers; stopped by its pid."""
    port = free_port()
    process = spawn([part.replace("{port}", str(port)) for part in command], env=dict(os.environ))
    try:
        url = f"http://127.0.0.1:{port}"
        live_wait(url, process=process, timeout_s=20)
        yield url
    finally:
        stop([process], label=command[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per server and path; p50s are medians")
    parser.add_argument("--seconds", type=int, default=3, help="wrk's duration per run")
    args = parser.parse_args(argv)
    from bench import wrk, wrk_missing  # noqa: PLC0415  # scripts/ is on sys.path when run as a script

    if wrk_missing():
        return 2
    figures: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        post = Path(scratch) / "post.lua"
        post.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            'wrk.body = \'{"user_id": 1, "channel_id": 2, "content": "hello world"}\'\n'
        )
        for _ in range(args.runs):  # servers in turn, so that both meet the same noise
            for name, command in servers().items():
                with serving(command) as url:
                    wrk(f"{url}/get", connections=1, duration_s=1)  # warm-up
                    for path in PATHS:
                        script = None if path == "get" else post
                        run = wrk(f"{url}/{path}", connections=1, duration_s=args.seconds, script=script)
                        figures.setdefault(name, {}).setdefault(path, []).append(run["p50"] * 1000)
    print(
        "| server | " + " | ".join(f"{path} p50 µs" for path in PATHS) + " | post / get | post-redis / get |"
    )
    print("|---|" + "---:|" * (len(PATHS) + 2))
    for name, by_path in figures.items():
        p50 = {path: statistics.median(values) for path, values in by_path.items()}
        cells = " | ".join(f"{p50[path]:.0f}" for path in PATHS)
        print(f"| {name} | {cells} | {p50['post'] / p50['get']:.2f} | {p50['post-redis'] / p50['get']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
