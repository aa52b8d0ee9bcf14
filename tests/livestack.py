"""The real web server and rq workers as subprocesses, for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ingestor_site.embedded import free_port

BASE_DIR = Path(__file__).resolve().parent.parent
MANAGE = str(BASE_DIR / "manage.py")


def wait_until(predicate: Any, *, timeout_s: float, interval_s: float = 0.1, what: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last value: {last!r})")


class LiveStack:
    """A web server (granian, like `make run`) and rq workers against the given services."""

    def __init__(self, *, database_url: str, redis_url: str, log_dir: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
            **settings,
        }
        self.log_dir = log_dir
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        return subprocess.Popen(  # noqa: S603
            args, env=self.env, cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def web_start(self, processes: int = 1) -> None:
        self.web = self._spawn(
            "web",
            [sys.executable, "-m", "granian", "--interface", "asginl", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(processes), "--log-level", "warning",
             "ingestor_site.asgi:application"],
        )  # fmt: skip
        wait_until(self._live, timeout_s=30, what="the web server to answer /health/live")

    def _live(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def worker_start(self, *extra_args: str) -> subprocess.Popen[bytes]:
        index = len(self.workers) + 1
        worker = self._spawn(
            f"worker-{index}",
            [sys.executable, MANAGE, "rqworker", "ingest", "--name", self.worker_name(index), *extra_args],
        )
        self.workers.append(worker)
        return worker

    def worker_name(self, index: int) -> str:
        """The rq name of the `index`-th worker started (1-based)."""
        return f"test-worker-{index}-{self.port}"

    def log(self, name: str) -> str:
        for handle in self._logs:
            handle.flush()
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    @staticmethod
    def signal(process: subprocess.Popen[bytes], signum: int) -> None:
        """Signal the process itself (not its group: rq's scheduler child must not get it)."""
        os.kill(process.pid, signum)

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the whole process group (the worker and its scheduler child)."""
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self) -> None:
        for process in [*self.workers, *([self.web] if self.web else [])]:
            if process.poll() is None:
                process.terminate()
        for process in [*self.workers, *([self.web] if self.web else [])]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # rq's scheduler runs in a child of the worker; make sure nothing of the group survives.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for handle in self._logs:
            handle.close()
