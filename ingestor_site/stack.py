"""Run the whole stack for `make run`, or a command inside it for `make test`.

    python -m ingestor_site.stack run            # services, migrate, web server, workers
    python -m ingestor_site.stack exec -- CMD    # services, then CMD with DATABASE_URL/REDIS_URL set

With DATABASE_URL / REDIS_URL unset, an embedded PostgreSQL and an embedded Redis-compatible
server start on free loopback ports, with their data under `.data/` (git-ignored), and stop on
exit. With them set, those servers are used and left alone.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingestor_site.embedded import EmbeddedServer

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("INGESTOR_DATA_DIR", BASE_DIR / ".data"))
PYTHON = sys.executable
MANAGE = str(BASE_DIR / "manage.py")

# A worker that keeps dying is restarted at most this often, so a broken set-up does not spin.
RESTART_BACKOFF_S = (1, 2, 5, 10)
STOP_GRACE_S = 30


def say(text: str) -> None:
    print(f"[ingestor] {text}", flush=True)


@contextmanager
def services(data_dir: Path = DATA_DIR) -> Iterator[dict[str, str]]:
    """Yield the environment pointing at PostgreSQL and Redis, starting embedded ones if unset."""
    env = dict(os.environ)
    started: list[EmbeddedServer] = []
    try:
        if not env.get("DATABASE_URL"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
                from ingestor_site.embedded import EmbeddedPostgres

                postgres = EmbeddedPostgres(data_dir / "postgres").start()
            started.append(postgres)
            env["DATABASE_URL"] = postgres.url
            say(f"embedded PostgreSQL on {postgres.url} (data in {postgres.data_dir})")
        # Behind Sentinel (REDIS_SENTINELS) the sentinels name the Redis to use: none embedded.
        if not env.get("REDIS_URL") and not env.get("REDIS_SENTINELS"):
            from ingestor_site.embedded import EmbeddedRedis

            redis = EmbeddedRedis(data_dir / "redis").start()
            started.append(redis)
            env["REDIS_URL"] = redis.url
            say(f"embedded Redis on {redis.url} (append-only file in {redis.data_dir})")
        yield env
    finally:
        for server in reversed(started):
            server.stop()
            say(f"stopped embedded {server.name}")


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([PYTHON, MANAGE, *args], check=True, env=env, cwd=BASE_DIR)  # noqa: S603


def _web_command(host: str, port: int, processes: int, restarts: int) -> list[str]:
    return [PYTHON, "-m", "granian", "--interface", "asginl", "--host", host, "--port", str(port),
            "--workers", str(processes), "--log-level", "warning", "ingestor_site.asgi:application"]  # fmt: skip


def _worker_command(number: int, restarts: int) -> list[str]:
    # A fresh name each start: a killed worker's registration outlives it in Redis (until its
    # TTL), and rq refuses to start a worker under a name that is still registered.
    return [PYTHON, MANAGE, "rqworker", "ingest", "--name", f"worker-{number}-{os.getpid()}-{restarts}"]


@dataclass
class Child:
    """A process the supervisor keeps running, restarted with backoff when it dies."""

    label: str
    command: Callable[[int], list[str]]  # the command line for its n-th start
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float = 0.0  # when a dead one is due to start again; 0.0 while alive


class Supervisor:
    """Starts the web server and the workers, restarts any that dies, stops all in order."""

    def __init__(
        self, env: dict[str, str], *, host: str, port: int, workers: int, web_processes: int
    ) -> None:
        self.env = env
        self.web = Child("web server", functools.partial(_web_command, host, port, web_processes))
        self.workers = [
            Child(f"worker {n}", functools.partial(_worker_command, n)) for n in range(1, workers + 1)
        ]
        self.stopping = False

    def _start(self, child: Child) -> None:
        # Own process groups: a Ctrl-C reaches only us, and we stop the children in order.
        child.process = subprocess.Popen(  # noqa: S603
            child.command(child.restarts), env=self.env, cwd=BASE_DIR, start_new_session=True
        )

    def start(self) -> None:
        for child in (self.web, *self.workers):
            self._start(child)

    def watch(self) -> None:
        while not self.stopping:
            time.sleep(0.5)
            for child in (self.web, *self.workers):
                if self.stopping or child.process is None or child.process.poll() is None:
                    continue
                now = time.monotonic()
                if child.restart_at == 0.0:
                    delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
                    say(f"{child.label} exited with code {child.process.returncode}; restarting in {delay}s")
                    child.restart_at = now + delay
                elif now >= child.restart_at:
                    child.restarts += 1
                    child.restart_at = 0.0
                    self._start(child)

    def stop(self) -> None:
        """Web first (no new messages; in-flight batches reach Redis), then workers (each
        finishes its current batch: rq's warm shutdown on SIGTERM)."""
        self.stopping = True
        web = self.web.process
        if web is not None and web.poll() is None:
            say("stopping the web server")
            web.terminate()
            _wait(web, STOP_GRACE_S)
        live = [child.process for child in self.workers if child.process and child.process.poll() is None]
        if live:
            say(f"stopping {len(live)} worker(s); each finishes its current batch")
        for worker in live:
            worker.terminate()
        for worker in live:
            _wait(worker, STOP_GRACE_S)


def _wait(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run(args: argparse.Namespace) -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    workers = int(os.environ.get("WORKERS", "1"))
    web_processes = int(os.environ.get("WEB_PROCESSES", "2"))
    with services() as env:
        manage(env, "migrate", "--noinput", "-v", "0")
        manage(env, "collectstatic", "--noinput", "-v", "0")
        supervisor = Supervisor(env, host=host, port=port, workers=workers, web_processes=web_processes)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            supervisor.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        supervisor.start()
        shown_host = "localhost" if host in {"127.0.0.1", "0.0.0.0"} else host  # noqa: S104
        say(f"dashboard: http://{shown_host}:{port}/   API: http://{shown_host}:{port}/messages")
        say(f"{web_processes} web process(es), {workers} worker(s); Ctrl-C stops everything")
        supervisor.watch()
        supervisor.stop()
    say("stopped")
    return 0


def exec_command(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        say("exec needs a command after --")
        return 2
    with services() as env:
        return subprocess.call(command, env=env, cwd=BASE_DIR)  # noqa: S603


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingestor_site.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("run", help="run PostgreSQL/Redis (embedded if unset), the web server and the workers")
    exec_parser = sub.add_parser("exec", help="run a command with DATABASE_URL and REDIS_URL set")
    exec_parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    return run(args) if args.action == "run" else exec_command(args)


if __name__ == "__main__":
    sys.exit(main())
