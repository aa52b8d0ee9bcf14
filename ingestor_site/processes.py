"""Start, watch and stop the project's processes: one place for `make run`, the tests and the
benchmarks alike.

The web server is granian (as in production) and a worker is `manage.py rqworker ingest`. Every
process starts as the leader of a process group of its own, so a stop reaches its children too
(granian's workers), and the watchdog stops the group should we die first.
A stop is bounded: SIGTERM to the leader, then, after a grace, SIGKILL to the group, and a line
that says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from ingestor_site.watchdog import STAGE_PROCESSES, group_alive, watchdog

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MANAGE = str(BASE_DIR / "manage.py")
STATIC_ROOT = BASE_DIR / "staticfiles"

# Long enough for a worker to finish its current batch (rq's warm shutdown on SIGTERM).
STOP_GRACE_S = 30.0


def say(text: str) -> None:
    print(f"[ingestor] {text}", flush=True)


# Connection hygiene, measured with idle-socket floods on loopback (README, Operations):
# - HTTP/1 only: with granian's default HTTP/1-or-2 detection a connection that sends nothing is
#   never timed out (the protocol sniff waits for a first byte before hyper's timer starts);
#   with `--http 1` the header read timeout runs from the accept, so idle sockets, partial
#   headers and idle keep-alive connections are all closed after it. WebSockets are HTTP/1.
# - Connections per process: granian stops accepting past `--backpressure` open connections
#   (its default, backlog / processes = 512, let ~1,000 idle sockets take the whole server
#   away). Each held connection costs a few KB in granian and a file descriptor.
# - Respawn: without it one worker's death makes the granian master stop the others too.
# - Kill timeout: a worker the master respawns inherits the master's signal handlers until its
#   own are set, after the site is loaded (about a second): a SIGTERM in that second is
#   swallowed and the worker serves on, so without a bound the master's stop waits for it forever.
#   Requests are answered in milliseconds: what still holds a worker after this long is that
#   swallowed signal, or a dashboard WebSocket, whose page reconnects to another process.
WEB_HEADER_TIMEOUT_MS = 5_000
WEB_CONNECTIONS_PER_PROCESS = 4_096
WEB_BACKLOG = 4_096
WEB_RESPAWN_INTERVAL_S = 0.2
WEB_KILL_TIMEOUT_S = 10


def web_command(
    *, host: str = "127.0.0.1", port: int, processes: int = 1, connections: int = WEB_CONNECTIONS_PER_PROCESS
) -> list[str]:
    """The web server as `make run` and the Docker image run it: granian, ASGI without lifespan."""
    command = [PYTHON, "-m", "granian", "--interface", "asginl", "--host", host, "--port", str(port),
               "--workers", str(processes), "--log-level", "warning",
               "--http", "1", "--http1-header-read-timeout", str(WEB_HEADER_TIMEOUT_MS),
               "--backpressure", str(connections), "--backlog", str(WEB_BACKLOG),
               "--respawn-failed-workers", "--respawn-interval", str(WEB_RESPAWN_INTERVAL_S),
               "--workers-kill-timeout", str(WEB_KILL_TIMEOUT_S)]  # fmt: skip
    if (STATIC_ROOT / "staticfiles.json").exists():
        # granian serves the collected files itself: WhiteNoise, being synchronous, would stream
        # them through Django's ASGI handler, which warns about (and buffers) sync iterators.
        command += ["--static-path-route", "/static", "--static-path-mount", str(STATIC_ROOT)]
    return [*command, "ingestor_site.asgi:application"]


def web_process_command(
    *, host: str = "127.0.0.1", port: int, connections: int = WEB_CONNECTIONS_PER_PROCESS
) -> list[str]:
    """One web process without granian's master (ingestor_site/web.py): `make run` starts
    several on the same port."""
    return [PYTHON, "-m", "ingestor_site.web", "--host", host, "--port", str(port),
            "--connections", str(connections)]  # fmt: skip


# A worker's settings: the site's without the apps and URLs only pages use (less memory).
WORKER_SETTINGS = "ingestor_site.settings_worker"


def worker_command(*, name: str, extra: tuple[str, ...] = (), manage: str = MANAGE) -> list[str]:
    """An rq worker on the ingest queue. Give each start a fresh name: a killed worker's
    registration outlives it in Redis (until its TTL), and rq refuses a name still registered."""
    return [PYTHON, manage, "rqworker", "ingest", "--settings", WORKER_SETTINGS, "--name", name, *extra]


def spawn(
    command: list[str],
    *,
    env: dict[str, str],
    log: IO[bytes] | None = None,
    cwd: Path = BASE_DIR,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start `command` as a process group leader, guarded by the watchdog; in this checkout unless
    `cwd` names another (scripts/bench_light.py runs another commit's code beside this one)."""
    output: dict[str, Any] = {"stdout": log, "stderr": subprocess.STDOUT} if log is not None else {}
    process = subprocess.Popen(  # noqa: S603
        command, env=env, cwd=cwd, start_new_session=True, **output, **popen
    )
    watchdog.guard(process.pid, stage=STAGE_PROCESSES)
    return process


def group_kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its group, as in a crash."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    watchdog.release(process.pid)


def stop(
    processes: list[subprocess.Popen[bytes]],
    *,
    label: str,
    grace_s: float = STOP_GRACE_S,
    announce: Callable[[str], None] = say,
) -> None:
    """SIGTERM each leader, wait up to `grace_s` for all, then SIGKILL the groups of those left.

    The leader alone gets SIGTERM: granian's workers hear from their parent. Whatever of a
    group outlives its leader (a worker its master gave up on) is killed too, so no orphan keeps
    the port.
    """
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            announce(f"{label} (pid {process.pid}) did not stop within {grace_s:.0f}s of SIGTERM; killing it")
        if group_alive(process.pid):
            if process.returncode is not None:
                announce(f"{label} (pid {process.pid}) left processes of its group running; killing them")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        watchdog.release(process.pid)


def http_status(url: str, *, timeout_s: float) -> int | None:
    """The status of a plain GET of `url` (http://host:port/path), or None if none came.

    A bare HTTP/1.0 request on a socket: `make run`'s supervisor calls this, and an HTTP client
    library (httpx, or even http.client, which loads the email package) would stay loaded in it
    for its whole life, 8 to 13 MB, to ask one question at start-up.
    """
    parts = urlsplit(url)
    request = f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode()
    # The host as bytes, which getaddrinfo() takes as it is: a str loads the idna codec (and
    # unicodedata) to encode it.
    address = ((parts.hostname or "").encode(), parts.port or 80)
    try:
        with socket.create_connection(address, timeout=timeout_s) as conn:  # type: ignore[arg-type]
            conn.sendall(request)
            head = conn.recv(64)
    except OSError:
        return None
    fields = head.split(b" ", 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        return None
    return int(fields[1])


def live_wait(
    url: str,
    *,
    process: subprocess.Popen[bytes] | None = None,
    timeout_s: float = 30.0,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Wait until `url`/health/live answers 200; fail early if `process` exits; give up quietly
    once `stop()` is true (a Ctrl-C while starting)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (stop and stop()):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the web server exited with code {process.returncode} while starting")
        if http_status(f"{url}/health/live", timeout_s=1) == 200:
            return
        time.sleep(0.1)
    if stop and stop():
        return
    raise RuntimeError(f"the web server did not answer {url}/health/live within {timeout_s:.0f}s")


class WebAndWorkers:
    """A web server and rq workers against given services, each logging to its own file; of this
    checkout's code unless `code_dir` names another checkout."""

    def __init__(
        self, *, env: dict[str, str], log_dir: Path, port: int | None = None, code_dir: Path = BASE_DIR
    ) -> None:
        from ingestor_site.embedded import free_port

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A local stack (tests, benchmarks): settings allow the development SECRET_KEY.
        self.env = {"INGESTOR_LOCAL": "true", **env, "PYTHONUNBUFFERED": "1"}
        self.log_dir = log_dir
        self.code_dir = code_dir
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: dict[str, IO[bytes]] = {}

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        if name not in self._logs:
            self._logs[name] = (self.log_dir / f"{name}.log").open("ab")
        return spawn(command, env=self.env, log=self._logs[name], cwd=self.code_dir)

    def web_start(
        self, processes: int = 1, *, connections: int = WEB_CONNECTIONS_PER_PROCESS, timeout_s: float = 30.0
    ) -> None:
        command = web_command(port=self.port, processes=processes, connections=connections)
        self.web = self._spawn("web", command)
        live_wait(self.url, process=self.web, timeout_s=timeout_s)

    def worker_start(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        command = worker_command(name=name, extra=extra, manage=str(self.code_dir / "manage.py"))
        worker = self._spawn(f"worker-{len(self.workers) + 1}", command)
        self.workers.append(worker)
        return worker

    def worker_stop(self, worker: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
        stop([worker], label="worker", grace_s=grace_s)
        self.workers.remove(worker)

    def log(self, name: str) -> str:
        for handle in self._logs.values():
            handle.flush()
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self, grace_s: float = 20.0) -> None:
        """Web server first (no new messages), then the workers (each finishes its batch)."""
        if self.web is not None:
            stop([self.web], label="web server", grace_s=grace_s)
        stop(self.workers, label="worker", grace_s=grace_s)
        for handle in self._logs.values():
            handle.close()
        self._logs.clear()


def main(argv: list[str] | None = None) -> None:
    """`python -m ingestor_site.processes web ...`: the web command alone, for the Docker image."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ingestor_site.processes")
    parser.add_argument("what", choices=["web"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--connections", type=int, default=WEB_CONNECTIONS_PER_PROCESS)
    args = parser.parse_args(argv)
    command = web_command(
        host=args.host, port=args.port, processes=args.processes, connections=args.connections
    )
    os.execv(command[0], command)  # noqa: S606


if __name__ == "__main__":
    main()
