"""Run the whole stack for `make run`, or a command inside it for `make test`.

    python -m ingestor_site.stack run            # services, migrate, web server, workers
    python -m ingestor_site.stack exec -- CMD    # services, then CMD with DATABASE_URL/REDIS_URL set

With DATABASE_URL / REDIS_URL unset, an embedded PostgreSQL and an embedded Redis-compatible
server start on free loopback ports and stop on exit: `run` keeps their data in `.data/`, `exec`
in `.data/test/` (both git-ignored), so tests never touch what `make run` holds. With them set,
those servers are used and left alone. Should this supervisor die without stopping its children,
a watchdog stops them (see ingestor_site/watchdog.py).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from ingestor_site.embedded import ServerStartError
from ingestor_site.local_services import RUN_DATA_DIR, TEST_DATA_DIR, FolderInUse, LocalServices, port_free
from ingestor_site.processes import (
    BASE_DIR,
    MANAGE,
    PYTHON,
    STOP_GRACE_S,
    WEB_CONNECTIONS_PER_PROCESS,
    live_wait,
    say,
    spawn,
    stop,
    web_process_command,
    worker_command,
)

if TYPE_CHECKING:
    import argparse

# A worker that keeps dying is restarted at most this often, so a broken set-up does not spin.
RESTART_BACKOFF_S = (1, 2, 5, 10)
# A child that ran this long before dying was healthy: its next restart waits the first delay again.
RESTART_HEALTHY_AFTER_S = 60.0


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([PYTHON, MANAGE, *args], check=True, env=env, cwd=BASE_DIR)  # noqa: S603


def _web_command(host: str, port: int, connections: int, restarts: int) -> list[str]:
    return web_process_command(host=host, port=port, connections=connections)


def _worker_command(number: int, restarts: int) -> list[str]:
    return worker_command(name=f"worker-{number}-{os.getpid()}-{restarts}")


class Child:
    """A process the supervisor keeps running, restarted with backoff when it dies.

    (A plain class: `dataclasses` would load `inspect` and more into the supervisor, ~1.3 MB.)"""

    def __init__(self, label: str, command: Callable[[int], list[str]]) -> None:
        self.label = label
        self.command = command  # the command line for its n-th start
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.restart_at = 0.0  # when a dead one is due to start again; 0.0 while alive
        self.started_at = 0.0
        self.failures = 0  # deaths in a row, each after less than RESTART_HEALTHY_AFTER_S of life

    def restart_delay(self, now: float) -> int:
        """Seconds to wait before restarting it, having seen it dead at `now`."""
        if now - self.started_at >= RESTART_HEALTHY_AFTER_S:
            self.failures = 0
        delay = RESTART_BACKOFF_S[min(self.failures, len(RESTART_BACKOFF_S) - 1)]
        self.failures += 1
        return delay


class Supervisor:
    """Starts the web server and the workers, restarts any that dies, stops all in order."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        host: str,
        port: int,
        workers: int,
        web_processes: int,
        web_connections: int = WEB_CONNECTIONS_PER_PROCESS,
    ) -> None:
        self.env = env
        web = functools.partial(_web_command, host, port, web_connections)
        self.web = [Child(f"web process {n}", web) for n in range(1, web_processes + 1)]
        self.workers = [
            Child(f"worker {n}", functools.partial(_worker_command, n)) for n in range(1, workers + 1)
        ]
        self.stopping = False

    def _start(self, child: Child) -> None:
        # Own process groups: a Ctrl-C reaches only us, and we stop the children in order.
        child.process = spawn(child.command(child.restarts), env=self.env)
        child.started_at = time.monotonic()

    def start(self) -> None:
        for child in (*self.web, *self.workers):
            self._start(child)

    def watch(self) -> None:
        while not self.stopping:
            time.sleep(0.5)
            for child in (*self.web, *self.workers):
                if self.stopping or child.process is None or child.process.poll() is None:
                    continue
                now = time.monotonic()
                if child.restart_at == 0.0:
                    delay = child.restart_delay(now)
                    say(f"{child.label} exited with code {child.process.returncode}; restarting in {delay}s")
                    child.restart_at = now + delay
                elif now >= child.restart_at:
                    child.restarts += 1
                    child.restart_at = 0.0
                    self._start(child)

    def stop(self) -> None:
        """Web first (no new messages; in-flight batches reach Redis), then workers (each
        finishes its current batch: rq's warm shutdown on SIGTERM). Each gets STOP_GRACE_S,
        then SIGKILL of its process group."""
        self.stopping = True
        web = [child.process for child in self.web if child.process and child.process.poll() is None]
        if web:
            say("stopping the web server")
            stop(web, label="web process", grace_s=STOP_GRACE_S)
        live = [child.process for child in self.workers if child.process and child.process.poll() is None]
        if live:
            say(f"stopping {len(live)} worker(s); each finishes its current batch")
            stop(live, label="worker", grace_s=STOP_GRACE_S)


# The project's own packages; the installed libraries' bytecode was compiled when pip installed them.
PACKAGES = ("ingestor_site", "messages_app", "metrics_app", "telemetry")


def bytecode_compile(env: dict[str, str]) -> None:
    """Compile the project's modules to bytecode (what changed since the last run). Where
    PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile each of them at every
    start: slower, and ~1 MB more resident in each of the web processes and workers (measured with
    scripts/bench_memory.py: 250.8 against 244.5 MB at rest in all). compileall writes anyway."""
    subprocess.run([PYTHON, "-m", "compileall", "-q", *PACKAGES], check=True, env=env, cwd=BASE_DIR)  # noqa: S603


def run() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    workers = int(os.environ.get("WORKERS", "1"))
    web_processes = int(os.environ.get("WEB_PROCESSES", "2"))
    web_connections = int(os.environ.get("WEB_MAX_CONNECTIONS", str(WEB_CONNECTIONS_PER_PROCESS)))
    shown_host = "localhost" if host in {"127.0.0.1", "0.0.0.0"} else host  # noqa: S104
    dashboard = f"http://{shown_host}:{port}/"
    if not port_free(host, port):
        say(
            f"port {port} on {host} is in use (another `make run`?); stop it, or choose another with PORT=..."
        )
        return 1
    try:
        with LocalServices(RUN_DATA_DIR, command="make run") as services:
            env = services.env
            bytecode_compile(env)
            manage(env, "migrate", "--noinput", "-v", "0")
            manage(env, "collectstatic", "--noinput", "-v", "0")
            # Before any worker: counters a crash left short of the table start from it again.
            manage(env, "metrics_reconcile", "-v", "0")
            supervisor = Supervisor(env, host=host, port=port, workers=workers, web_processes=web_processes,
                                    web_connections=web_connections)  # fmt: skip

            def on_signal(signum: int, frame: FrameType | None) -> None:
                supervisor.stopping = True

            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
            supervisor.start()
            local = "127.0.0.1" if host in {"127.0.0.1", "0.0.0.0"} else host  # noqa: S104
            try:
                # The URL line once the server answers, so what it promises works.
                live_wait(f"http://{local}:{port}", process=supervisor.web[0].process, timeout_s=60,
                          stop=lambda: supervisor.stopping)  # fmt: skip
            except RuntimeError as failure:
                say(f"{failure}; see its errors above (it is restarted)")
            services.record(dashboard=dashboard)
            say(f"dashboard: {dashboard}   API: {dashboard}messages")
            say(f"{web_processes} web process(es), {workers} worker(s); Ctrl-C stops everything")
            supervisor.watch()
            supervisor.stop()
    except (FolderInUse, ServerStartError) as refusal:
        say(str(refusal))
        return 1
    say("stopped")
    return 0


def exec_command(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        say("exec needs a command after --")
        return 2
    try:
        with LocalServices(TEST_DATA_DIR, command="stack exec") as services:
            return subprocess.call(command, env=services.env, cwd=BASE_DIR)  # noqa: S603
    except (FolderInUse, ServerStartError) as refusal:
        say(str(refusal))
        return 1


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["run"]:
        # Without argparse: it and the shutil its help formatter loads would stay in `make run`'s
        # supervisor for its whole life (~1 MB) to read one word.
        return run()
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ingestor_site.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("run", help="run PostgreSQL/Redis (embedded if unset), the web server and the workers")
    exec_parser = sub.add_parser("exec", help="run a command with DATABASE_URL and REDIS_URL set")
    exec_parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    return run() if args.action == "run" else exec_command(args)


if __name__ == "__main__":
    sys.exit(main())
