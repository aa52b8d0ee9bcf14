"""The real web server and rq workers as subprocesses, for integration tests."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from ingestor_site.processes import BASE_DIR, MANAGE, WebAndWorkers, group_kill

__all__ = ["BASE_DIR", "MANAGE", "LiveStack", "wait_until"]


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


class LiveStack(WebAndWorkers):
    """A web server (granian, like `make run`) and rq workers against the given services."""

    def __init__(self, *, database_url: str, redis_url: str, log_dir: Path, **settings: str) -> None:
        super().__init__(
            env={**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, **settings},
            log_dir=log_dir,
        )

    def worker_start(self, *extra_args: str) -> subprocess.Popen[bytes]:
        return super().worker_start(self.worker_name(len(self.workers) + 1), *extra_args)

    def worker_name(self, index: int) -> str:
        """The rq name of the `index`-th worker started (1-based)."""
        return f"test-worker-{index}-{self.port}"

    @staticmethod
    def signal(process: subprocess.Popen[bytes], signum: int) -> None:
        """Signal the process itself (not its group: a child it forks must hear from it, not from us)."""
        os.kill(process.pid, signum)

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the whole process group (the worker and any child of it)."""
        if process.poll() is None:
            group_kill(process)
