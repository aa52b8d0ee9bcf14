"""The web processes step back for the workers and PostgreSQL while the backlog is deep.

On one machine the web processes, the workers and PostgreSQL share the cores. A client that
sends as fast as it is answered keeps the web processes busy whatever a request costs, so
during a sustained batch load PostgreSQL got 57-65% of a core while the web processes took a
whole one acknowledging about twice what the workers could store: messages the queue then
holds. While the backlog is deep (a tenth of INGEST_MAX_BACKLOG or more) the web processes
lower their own CPU priority, and take it back once it is below half that; a stream of single
messages, which the workers keep up with, never gets there. They still answer: /health and
/stats took as long during a batch load with it as without (README, Benchmarks).

Linux shares the CPU between sessions first (autogroups, `sched_autogroup`), and `make run`
starts the web server in a session of its own: the priority that counts is the session's,
`/proc/self/autogroup`, which any of its processes may lower and raise back to 0 (a value
below 0 would need privileges). Nothing is changed where the session may hold other programs
(a server started from a terminal shares the shell's), or where the kernel has no autogroups.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")
# The backlog, as a share of INGEST_MAX_BACKLOG, from which the web processes step back, and
# below which they come forward again.
YIELD_FROM = 0.1
YIELD_UNTIL = 0.05
# The web processes share their session: each writes what its own backlog figure asks for again
# at most this often, so that one left behind by another's write (which it does not see) is
# right again within this long.
REWRITE_S = 1.0


def session_is_the_servers() -> bool:
    """Whether this process's session is the web server's own: this process or its parent (the
    server's master process) leads it, and it has no terminal (a shell's session has one: the
    server was started from it, beside whatever else runs there)."""
    if os.getsid(0) not in (os.getpid(), os.getppid()):
        return False
    try:
        os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY))
    except OSError:
        return True  # no controlling terminal
    return False


class CpuYield:
    """Follows the backlog and sets the session's nice value: `nice` while it is deep, 0 after.

    `nice` 0 turns it off. The nice value the session holds when this starts is not known (a
    replaced web process inherits its session as an earlier one left it): the first backlog
    figure sets it either way. Another web process of the session may change it meanwhile: the
    value this one wants is written again every `rewrite_s`."""

    def __init__(
        self,
        *,
        nice: int,
        max_backlog: int,
        path: Path = AUTOGROUP,
        eligible: bool | None = None,
        rewrite_s: float = REWRITE_S,
    ) -> None:
        self.nice = nice
        self.yield_from = max(1, int(max_backlog * YIELD_FROM))
        self.yield_until = int(max_backlog * YIELD_UNTIL)
        self.path = path
        self.enabled = nice > 0 and (session_is_the_servers() if eligible is None else eligible)
        self.current: int | None = None  # the nice value last written; None: not known
        self.rewrite_s = rewrite_s
        self._written_at = 0.0

    def follow(self, backlog: int) -> None:
        """Set the session's nice value for a backlog of `backlog` messages, if it changes."""
        if not self.enabled:
            return
        if backlog >= self.yield_from:
            wanted = self.nice
        elif backlog < self.yield_until or self.current is None:
            wanted = 0
        else:
            return  # between the two marks: as it is
        now = time.monotonic()
        if wanted == self.current and now - self._written_at < self.rewrite_s:
            return
        try:
            self.path.write_text(str(wanted))
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return  # the kernel takes one change in 100 ms from the unprivileged: next time
            # No autogroups (the file is missing), or a kernel or container that refuses it.
            logger.info("Not changing the web processes' CPU priority (%s): %s", self.path, exc)
            self.enabled = False
            return
        self._written_at = now
        if wanted == self.current:
            return
        self.current = wanted
        logger.info(
            "Backlog %d messages: web processes at nice %d (%s)",
            backlog,
            wanted,
            "the workers and PostgreSQL first" if wanted else "as usual",
        )
