"""Nothing we start outlives us: a watchdog process stops what its parent left running.

Every process the launcher starts runs in a session of its own (so a Ctrl-C reaches only the
supervisor, which stops them in order). The price: when the supervisor dies without stopping them
(kill -9, the OOM killer), nothing would. So the first process started also starts this watchdog,
which holds the read end of a pipe only its parent can write to. The parent tells it each process
group it starts and reaps; when the pipe closes (the parent exited, however), the watchdog stops
every group still on its list: web server and workers first, then the database and Redis, each
with its own stop signal to the group's leader, then SIGKILL to the whole group after a short
grace. A group holds a process's children too (granian's workers, PostgreSQL's backends), which
is why each is started as a group leader.

The watchdog itself is a POSIX shell script, watchdog.sh beside this file: it idles for as long
as `make run` runs, and a shell holds about 1.5 MB of memory where a Python process holds 9 to 11.

    sh ingestor_site/watchdog.sh     # reads "guard PGID STAGE SIGNAL" / "release PGID" lines
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import IO

WATCHDOG_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog.sh")
# The watchdog stops the groups stage by stage, lowest first.
STAGE_PROCESSES = 0  # web server and workers: stop first, so none writes to a stopped server
STAGE_SERVERS = 1  # PostgreSQL and Redis: stop last


class Watchdog:
    """The parent's side: starts the watchdog on first use and tells it about process groups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipe: IO[str] | None = None
        self._owner_pid = 0

    def _pipe_open(self) -> IO[str]:
        # A forked copy of us (a test's subprocess, multiprocessing) must not write to our watchdog.
        if self._pipe is None or self._owner_pid != os.getpid():
            process = subprocess.Popen(  # noqa: S603
                ["/bin/sh", WATCHDOG_SCRIPT],
                stdin=subprocess.PIPE,
                text=True,
                start_new_session=True,  # a Ctrl-C must not take it down before the supervisor
                cwd="/",
            )
            assert process.stdin is not None
            self._pipe = process.stdin
            self._owner_pid = os.getpid()
        return self._pipe

    def _send(self, line: str) -> None:
        with self._lock:
            try:
                pipe = self._pipe_open()
                pipe.write(line + "\n")
                pipe.flush()
            except BrokenPipeError:
                # Someone ended our watchdog: start another for what comes next.
                self._pipe = None
                pipe = self._pipe_open()
                pipe.write(line + "\n")
                pipe.flush()

    def guard(self, pgid: int, *, stage: int, stop_signal: int = signal.SIGTERM) -> None:
        """Stop process group `pgid` (its leader by `stop_signal`) should this process die first."""
        self._send(f"guard {pgid} {stage} {int(stop_signal)}")

    def release(self, pgid: int) -> None:
        """The group is gone (reaped by us): forget it, so a reused number is never signalled."""
        with contextlib.suppress(OSError, ValueError):
            self._send(f"release {pgid}")


watchdog = Watchdog()


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still exists (one we may not signal counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
