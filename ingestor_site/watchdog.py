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

    python -m ingestor_site.watchdog     # reads "guard PGID STAGE SIGNAL" / "release PGID" lines
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import IO

# Seconds a stage (web and workers, then servers) gets to stop before SIGKILL: short, because the
# supervisor is already gone and a port held by an orphan blocks the next `make run`.
GRACE_S = 3.0
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
            # Here, not at the top: the watchdog process runs this module too, and subprocess
            # would only add to its memory.
            import subprocess

            process = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "ingestor_site.watchdog"],
                stdin=subprocess.PIPE,
                text=True,
                start_new_session=True,  # a Ctrl-C must not take it down before the supervisor
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
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


def _stop_groups(groups: dict[int, tuple[int, int]]) -> list[str]:
    """Stop the groups stage by stage; return a line for each that needed SIGKILL."""
    killed: list[str] = []
    for stage in sorted({stage for stage, _ in groups.values()}):
        members = {pgid: signum for pgid, (s, signum) in groups.items() if s == stage}
        for pgid, signum in members.items():
            with contextlib.suppress(OSError):
                os.kill(pgid, signum)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(group_alive(pgid) for pgid in members):
            time.sleep(0.05)
        for pgid in members:
            if group_alive(pgid):
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)
                killed.append(str(pgid))
    return killed


def main() -> int:
    # We outlive the parent on purpose; its terminal's Ctrl-C and hang-up are not for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    groups: dict[int, tuple[int, int]] = {}  # pgid -> (stage, stop signal)
    for line in sys.stdin:
        match line.split():
            case ["guard", pgid, stage, signum]:
                groups[int(pgid)] = (int(stage), int(signum))
            case ["release", pgid]:
                groups.pop(int(pgid), None)
    live = {pgid: entry for pgid, entry in groups.items() if group_alive(pgid)}
    if live:
        print(
            f"[ingestor] watchdog: the supervisor is gone; stopping {len(live)} process group(s) it left",
            file=sys.stderr,
            flush=True,
        )
        killed = _stop_groups(live)
        if killed:
            print(
                f"[ingestor] watchdog: killed process group(s) {', '.join(killed)} "
                f"(still running {GRACE_S:.0f}s after the stop signal)",
                file=sys.stderr,
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
