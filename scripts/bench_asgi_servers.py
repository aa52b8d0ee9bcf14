#!/usr/bin/env python
"""What does an ASGI server itself add to a lone request? `python scripts/bench_asgi_servers.py`

The light-load goal (one connection's `POST /messages` p50 within 3x the no-op's) is bounded by the
server before any of our code runs. This serves a minimal ASGI app (this module's `app`, no Django)
under granian as `make run` starts it (`--interface asginl --http 1`, one process) and, when it is
installed, under uvicorn (httptools, uvloop), and times one connection (wrk -t1 -c1) on:

- `GET /get`: answered at once, the body never read (what the no-op `GET /health/live` does);
- `POST /post`: the same, after reading the request body (as every `POST /messages` must);
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
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

HERE = Path(__file__).resolve().parent
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
        while (await receive()).get("more_body", False):
            pass
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def p50_us(url: str, seconds: int, script: Path | None) -> float:
    """wrk's p50 on one connection, in microseconds."""
    command = [
        "wrk",
        "-t1",
        "-c1",
        f"-d{seconds}s",
        "--latency",
        *(["-s", str(script)] if script else []),
        url,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout  # noqa: S603
    match = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", output)
    if match is None:
        raise RuntimeError(f"no p50 in wrk's output:\n{output}")
    value, unit = float(match.group(1)), match.group(2)
    return value if unit == "us" else value * 1000 if unit == "ms" else value * 1_000_000


@contextlib.contextmanager
def serving(command: list[str]) -> Any:
    """The server started on a free port, its URL yielded once it answers; stopped by its pid."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603
        [part.replace("{port}", str(port)) for part in command],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise RuntimeError(f"{command[2:4]} did not start: {error}")
            time.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per server and path; p50s are medians")
    parser.add_argument("--seconds", type=int, default=3, help="wrk's duration per run")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)", file=sys.stderr)
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
                    p50_us(f"{url}/get", 1, None)  # warm-up
                    for path in PATHS:
                        script = None if path == "get" else post
                        figures.setdefault(name, {}).setdefault(path, []).append(
                            p50_us(f"{url}/{path}", args.seconds, script)
                        )
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
