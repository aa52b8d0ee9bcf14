"""The dashboard's live feed: one broadcaster per server process, whatever the number of sockets.

Every open dashboard needs the same numbers at the same instant. So each server process runs one
broadcaster task (while it has at least one socket) that reads Redis once per frame, in one
pipeline, renders the frame once, and hands the same string to each of that process's sockets in
memory. No socket touches Redis or the channel layer: a channels-redis group would cost each socket
a `group_add` on a pooled connection (a few hundred sockets opened at once exhausted the pool) and
each frame a round trip through Redis, for a payload that is identical for every socket.

Frames are JSON text, `{"type": ..., "stats": {...}, "html": "..."}`: scripts read the numbers,
the page feeds the points to Chart.js and lets htmx swap the `html` (out-of-band fragments).
- `snapshot`: on connect (and after a reset): stats, the last five minutes of points, all panels.
- `stats_update`: every FRAME_INTERVAL_S: stats, the points of seconds completed since, cards.
- `batch_persisted`: in the frame after workers committed batches: how many, the newest ones,
  and the tables of latest batches and messages. One aggregated event per frame, not one per
  batch, so a busy pipeline costs a socket at most two frames a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings
from django.db import DatabaseError
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from metrics_app.figures import stats_build
from metrics_app.panels import TABLE_ROWS, Rows, panels_render
from metrics_app.selectors import dashboard_read, messages_recent
from metrics_app.series import ChartHistory
from telemetry import metrics
from telemetry.connection import redis_async_client

logger = logging.getLogger(__name__)

FRAME_INTERVAL_S = 0.5
# Ticks land this far into each half second, so a second is drawn once every writer is past it.
TICK_PHASE_S = 0.3
# The newest batches a frame reads; more than this many in half a second are counted, not listed.
RECENT_READ = 20
# A subscriber waits this long for the broadcaster's first read before it is told "unavailable".
FIRST_READ_WAIT_S = 5.0
# After sockets leave, give the freed memory back to the OS once no socket has left for this long.
TRIM_AFTER_S = 2.0


class FrameSink(Protocol):
    """A socket as the broadcaster sees it: takes a frame without waiting (see consumers.py)."""

    def frame_deliver(self, frame: str) -> None: ...


def _malloc_trim() -> None:
    """Give the C heap's free pages back to the OS (glibc only; elsewhere nothing happens).

    A socket's buffers and objects are many small allocations spread over the heap; when they are
    freed among longer-lived ones, glibc keeps the pages, and a process that once held 2,000
    sockets would stay that size for good.
    """
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _libc_malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)


def _json(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), default=str)


@dataclass
class DashboardState:
    """What the last frame showed; new subscribers get it as their snapshot."""

    stats: dict[str, Any]
    batches: Rows
    messages: Rows
    read_at: float


@dataclass
class StatsBroadcaster:
    """Reads Redis once per frame for every dashboard socket of this process and hands each the frame."""

    sinks: set[FrameSink] = field(default_factory=set)
    reads: int = 0
    state: DashboardState | None = None
    history: ChartHistory = field(default_factory=ChartHistory)
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _redis: AsyncRedis | None = None
    _failing_since: float | None = None
    _trim: asyncio.TimerHandle | None = None
    _snapshot: tuple[DashboardState, str] | None = None

    @property
    def subscribers(self) -> int:
        return len(self.sinks)

    def has_room(self) -> bool:
        """Whether one more socket fits under DASHBOARD_MAX_SOCKETS."""
        return len(self.sinks) < settings.DASHBOARD_MAX_SOCKETS

    async def subscribe(self, sink: FrameSink) -> str:
        """Add a socket and return its snapshot frame (after the first read, if just started).

        Frames of ticks that run meanwhile reach the sink already, before the snapshot is returned;
        the sink sends them after it.
        """
        self.sinks.add(sink)
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dashboard-broadcaster")
        try:
            await asyncio.wait_for(self._ready.wait(), FIRST_READ_WAIT_S)
        except TimeoutError:
            return _json({"type": "snapshot", "error": "metrics unavailable", "series": [], "html": ""})
        return self.snapshot_frame()

    def unsubscribe(self, sink: FrameSink) -> None:
        """Remove a socket; the task stops at its next tick once no socket is left."""
        self.sinks.discard(sink)
        # Once sockets have stopped leaving, hand the memory they held back (one trim per wave).
        if self._trim is not None:
            self._trim.cancel()
        self._trim = asyncio.get_running_loop().call_later(TRIM_AFTER_S, self._trim_run)

    def _trim_run(self) -> None:
        self._trim = None
        _malloc_trim()

    def _fan_out(self, frame: str) -> None:
        for sink in list(self.sinks):
            sink.frame_deliver(frame)

    async def stop(self) -> None:
        """Stop the task now instead of at its next tick (event loop shutdown, tests)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def snapshot_frame(self) -> str:
        """The snapshot of the last frame, rendered once for every socket that joins before the next."""
        assert self.state is not None
        state = self.state
        if self._snapshot is not None and self._snapshot[0] is state:
            return self._snapshot[1]
        frame = _json(
            {
                "type": "snapshot",
                "stats": state.stats,
                "series": self.history.series(),
                "html": panels_render(stats=state.stats, batches=state.batches, messages=state.messages),
            }
        )
        self._snapshot = (state, frame)
        return frame

    async def _run(self) -> None:
        redis = redis_async_client()
        self._redis = redis
        # While stopped, nobody re-read the last seconds this task had read: read them afresh.
        self.history.reads_forget()
        try:
            while True:
                if self.subscribers == 0:
                    # Cleared with no await after the check: a socket arriving from here on
                    # starts a new task instead of joining one that is about to end.
                    self._task = None
                    break
                await self._tick_safely()
                phase = (time.time() - TICK_PHASE_S) % FRAME_INTERVAL_S
                await asyncio.sleep(FRAME_INTERVAL_S - phase)
        finally:
            if self._redis is redis:
                self._redis = None
            await redis.aclose()

    async def _tick_safely(self) -> None:
        try:
            await self.tick()
            self._failing_since = None
        except (RedisError, OSError, DatabaseError) as exc:
            # The page shows "stalled" when frames stop; log once per outage, not twice a second.
            if self._failing_since is None:
                self._failing_since = time.time()
                logger.warning("Dashboard frame failed: %s: %s", type(exc).__name__, exc)
        except Exception:
            logger.exception("Dashboard frame failed")

    async def tick(self, now: float | None = None) -> None:
        """Read once, work out what changed, send at most one frame of each type."""
        assert self._redis is not None
        now = time.time() if now is None else now
        history = self.history
        read = await dashboard_read(
            redis=self._redis, seconds=history.seconds_wanted(now), batches=RECENT_READ
        )
        self.reads += 1
        previous = self.state.stats if self.state is not None else None
        reset = previous is not None and (
            read.counters[metrics.TOTAL_BATCHES] < previous["total_batches"]
            or read.counters[metrics.TOTAL_ACCEPTED] < previous["total_accepted"]
        )
        if reset:
            # Counters went down: someone reset the pipeline; the cached seconds are gone from Redis.
            history.clear()
        history.read_add(seconds=read.seconds, queue=read.counters[metrics.QUEUE_LENGTH], now=now)

        stats = stats_build(counters=read.counters, workers=read.workers, seconds=history.seconds, now=now)
        new_batches = 0 if previous is None else stats["total_batches"] - previous["total_batches"]
        batches = read.recent_batches[:TABLE_ROWS]
        messages = self.state.messages if self.state is not None else []
        if previous is None or reset or new_batches > 0:
            messages = await messages_recent(limit=TABLE_ROWS, fallback=messages)
        points = history.points_settle(now, first=previous is None)
        self.state = DashboardState(stats=stats, batches=batches, messages=messages, read_at=now)
        self._ready.set()

        if reset:
            self._fan_out(self.snapshot_frame())
            return
        update = {"type": "stats_update", "stats": stats, "points": points,
                  "html": panels_render(stats=stats, batches=None, messages=None)}  # fmt: skip
        self._fan_out(_json(update))
        if new_batches > 0:
            event = {
                "type": "batch_persisted",
                "count": new_batches,
                "batches": read.recent_batches[: min(new_batches, RECENT_READ)],
                "html": panels_render(stats=None, batches=batches, messages=messages),
            }
            self._fan_out(_json(event))


_broadcasters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StatsBroadcaster] = (
    weakref.WeakKeyDictionary()
)


def broadcaster_for_loop() -> StatsBroadcaster:
    """The broadcaster of the running event loop (one per server process)."""
    loop = asyncio.get_running_loop()
    broadcaster = _broadcasters.get(loop)
    if broadcaster is None:
        broadcaster = StatsBroadcaster()
        _broadcasters[loop] = broadcaster
    return broadcaster


async def dashboard_page_state(*, now: float | None = None) -> DashboardState:
    """The figures for a page render: the broadcaster's last frame if fresh, else a one-off read."""
    now = time.time() if now is None else now
    broadcaster = broadcaster_for_loop()
    if broadcaster.state is not None and now - broadcaster.state.read_at < 2 * FRAME_INTERVAL_S:
        return broadcaster.state
    redis = redis_async_client()
    try:
        seconds = metrics.seconds_window(now, metrics.LATENCY_WINDOW_S)
        read = await dashboard_read(redis=redis, seconds=seconds, batches=TABLE_ROWS)
    finally:
        await redis.aclose()
    stats = stats_build(counters=read.counters, workers=read.workers, seconds=read.seconds, now=now)
    messages = await messages_recent(limit=TABLE_ROWS, fallback=[])
    return DashboardState(stats=stats, batches=read.recent_batches, messages=messages, read_at=now)
