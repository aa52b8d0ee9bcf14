"""The dashboard's live feed: one broadcaster per server process, whatever the number of sockets.

Every open dashboard needs the same numbers at the same instant. So each server process runs one
broadcaster task (while it has at least one socket) that reads Redis once per frame, in one
pipeline, renders the frame once, and hands it to a channel-layer group holding that process's
sockets. channels-redis coalesces a group message for sockets of one process into one Redis
message, so fifty open dashboards cost about what one does.

Frames are JSON text, `{"type": ..., "stats": {...}, "html": "..."}`: scripts read the numbers,
the page feeds the points to Chart.js and lets htmx swap the `html` (out-of-band fragments).
- `snapshot`: on connect (and after a reset): stats, the last five minutes of points, all panels.
- `stats_update`: every FRAME_INTERVAL_S: stats, the points of seconds completed since, cards.
- `batch_persisted`: in the frame after workers committed batches: how many, the newest ones,
  and the tables of latest batches and messages. One aggregated event per frame, not one per
  batch: channels-redis silently drops past a few hundred group messages a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import DatabaseError
from django.template.loader import render_to_string
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from messages_app.selectors import messages_latest
from metrics_app.selectors import DashboardRead, dashboard_read
from telemetry import metrics
from telemetry.connection import redis_async_client

logger = logging.getLogger(__name__)

FRAME_INTERVAL_S = 0.5
# Ticks land this far into each half second, so a second is drawn once every writer is past it:
# a worker's pipeline stamped at the end of second S reaches Redis a few milliseconds into S+1.
TICK_PHASE_S = 0.3
SECOND_SETTLE_S = 0.25
# Seconds re-read every frame in case a late write landed in them; older ones are final.
REREAD_SECONDS = 3
SERIES_SECONDS = 300
TABLE_ROWS = 10
# The newest batches a frame reads; more than this many in half a second are counted, not listed.
RECENT_READ = 20
# A subscriber waits this long for the broadcaster's first read before it is told "unavailable".
FIRST_READ_WAIT_S = 5.0
TEMPLATE = "metrics_app/dashboard.html"


async def _messages_recent(*, fallback: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages table's rows; the last ones shown while PostgreSQL does not answer.

    Counters and charts come from Redis and stay live through a database outage.
    """
    try:
        return await sync_to_async(messages_latest, thread_sensitive=False)(
            limit=TABLE_ROWS, channel_id=None, user_id=None
        )
    except DatabaseError as exc:
        logger.warning("Dashboard could not read the latest messages: %s", exc)
        return fallback


def _json(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), default=str)


def stats_build(
    *, counters: dict[str, int], workers: int, seconds: dict[int, dict[str, float]], now: float
) -> dict[str, Any]:
    """The dashboard's figures: cumulative counters, rates over 5 s, latency over 60 s."""
    current = int(now)
    rate_seconds = metrics.seconds_window(now, metrics.RATE_WINDOW_S)
    rate = metrics.window_summary(seconds.get(s, {}) for s in rate_seconds)
    latency_seconds = metrics.seconds_window(now, metrics.LATENCY_WINDOW_S)
    latency = metrics.window_summary(seconds.get(s, {}) for s in latency_seconds)
    window = float(metrics.RATE_WINDOW_S)
    total_messages = counters[metrics.TOTAL_MESSAGES]
    total_batches = counters[metrics.TOTAL_BATCHES]
    persisted_per_s = round(rate.get("persisted", 0.0) / window, 1)
    return {
        "total_messages": total_messages,
        "total_batches": total_batches,
        "total_accepted": counters[metrics.TOTAL_ACCEPTED],
        "total_dead_letters": counters[metrics.TOTAL_DEAD_LETTERS],
        "queue_length": counters[metrics.QUEUE_LENGTH],
        "persisted_per_s": persisted_per_s,
        "current_rps": persisted_per_s,
        "accepted_per_s": round(rate.get("accepted", 0.0) / window, 1),
        "errors_4xx_per_s": round(rate.get("4xx", 0.0) / window, 1),
        "errors_5xx_per_s": round((rate.get("5xx", 0.0) + rate.get("503", 0.0)) / window, 1),
        "overloaded_per_s": round(rate.get("503", 0.0) / window, 1),
        "avg_batch_size": round(total_messages / total_batches, 1) if total_batches else 0.0,
        "latency_samples": int(latency.get("lat_count", 0)),
        "avg_latency_ms": round(latency["avg_latency_ms"], 2),
        "p50_latency_ms": round(latency["p50_latency_ms"], 2),
        "p95_latency_ms": round(latency["p95_latency_ms"], 2),
        "p99_latency_ms": round(latency["p99_latency_ms"], 2),
        "workers": workers,
        "timestamp": now,
        "second": current,
    }


@dataclass(frozen=True)
class Card:
    key: str
    label: str
    value: str
    unit: str
    raw: float
    hint: str = ""


def _count(value: float) -> str:
    return f"{int(value):,}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ms(value: float, samples: int) -> str:
    if not samples:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def cards_build(stats: dict[str, Any]) -> list[Card]:
    """The cards, in reading order, with their numbers formatted for people."""
    samples = stats["latency_samples"]
    window = f"last {metrics.LATENCY_WINDOW_S} s"
    return [
        Card("total_messages", "Total persisted", _count(stats["total_messages"]), "msgs",
             stats["total_messages"], f"{_count(stats['total_accepted'])} accepted"),
        Card("persisted_per_s", "Throughput", _rate(stats["persisted_per_s"]), "msg/s",
             stats["persisted_per_s"], f"persisted, last {metrics.RATE_WINDOW_S} s"),
        Card("accepted_per_s", "Accepted", _rate(stats["accepted_per_s"]), "msg/s",
             stats["accepted_per_s"], f"at the API, last {metrics.RATE_WINDOW_S} s"),
        Card("queue_length", "Queue depth", _count(stats["queue_length"]), "msgs",
             stats["queue_length"], "accepted, not yet persisted"),
        Card("total_batches", "Batches", _count(stats["total_batches"]), "",
             stats["total_batches"], "committed"),
        Card("avg_batch_size", "Avg batch size", _rate(stats["avg_batch_size"]), "msgs",
             stats["avg_batch_size"], "per batch"),
        Card("avg_latency_ms", "Avg latency", _ms(stats["avg_latency_ms"], samples), "ms",
             stats["avg_latency_ms"], f"receipt → commit, {window}"),
        Card("p95_latency_ms", "p95 latency", _ms(stats["p95_latency_ms"], samples), "ms",
             stats["p95_latency_ms"], window),
        Card("p99_latency_ms", "p99 latency", _ms(stats["p99_latency_ms"], samples), "ms",
             stats["p99_latency_ms"], window),
        Card("total_dead_letters", "Dead letters", _count(stats["total_dead_letters"]), "msgs",
             stats["total_dead_letters"], "refused by PostgreSQL"),
        Card("workers", "Workers alive", _count(stats["workers"]), "", stats["workers"], "on queue ingest"),
        Card("errors_per_s", "Errors 4xx / 5xx",
             f"{_rate(stats['errors_4xx_per_s'])} / {_rate(stats['errors_5xx_per_s'])}", "/s",
             stats["errors_4xx_per_s"] + stats["errors_5xx_per_s"],
             f"{_rate(stats['overloaded_per_s'])}/s of them 503 (overload)"),
    ]  # fmt: skip


def batches_rows(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**batch, "at": datetime.fromtimestamp(batch["at"], tz=UTC)} for batch in batches[:TABLE_ROWS]]


def messages_rows(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for message in messages:
        latency = (message["inserted_at"] - message["created_at"]).total_seconds() * 1000.0
        rows.append({**message, "latency_ms": latency})
    return rows


Rows = list[dict[str, Any]]


def panels_render(*, stats: dict[str, Any] | None, batches: Rows | None, messages: Rows | None) -> str:
    """The out-of-band fragments htmx swaps into the page: the cards and/or the two tables."""
    html = []
    if stats is not None:
        html.append(render_to_string(f"{TEMPLATE}#cards", {"cards": cards_build(stats), "oob": True}))
    if batches is not None:
        context = {"batches": batches_rows(batches), "oob": True}
        html.append(render_to_string(f"{TEMPLATE}#batches-table", context))
    if messages is not None:
        context = {"messages": messages_rows(messages), "oob": True}
        html.append(render_to_string(f"{TEMPLATE}#messages-table", context))
    return "".join(html)


def point_build(second: int, raw: dict[str, float], queue: int) -> dict[str, Any]:
    """One second of the charts: messages in and out, the queue, latency percentiles (None if idle)."""
    summary = metrics.window_summary([raw])
    has_latency = summary.get("lat_count", 0) > 0
    return {
        "t": second,
        "in": int(raw.get("accepted", 0)),
        "out": int(raw.get("persisted", 0)),
        "queue": max(int(queue), 0),
        "p50": round(summary["p50_latency_ms"], 2) if has_latency else None,
        "p95": round(summary["p95_latency_ms"], 2) if has_latency else None,
        "p99": round(summary["p99_latency_ms"], 2) if has_latency else None,
    }


@dataclass
class DashboardState:
    """What the last frame showed; new subscribers get it as their snapshot."""

    stats: dict[str, Any]
    batches: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    read_at: float


@dataclass
class StatsBroadcaster:
    """Reads Redis once per frame for every dashboard socket of this process and group-sends the frame."""

    group: str = field(default_factory=lambda: f"dashboard.{uuid.uuid4().hex}")
    subscribers: int = 0
    reads: int = 0
    state: DashboardState | None = None
    _seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    _queue_at: dict[int, int] = field(default_factory=dict)
    _last_point: int | None = None
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _redis: AsyncRedis | None = None
    _failing_since: float | None = None

    async def subscribe(self) -> str:
        """Count a socket in and return its snapshot frame (after the first read, if just started)."""
        self.subscribers += 1
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dashboard-broadcaster")
        try:
            await asyncio.wait_for(self._ready.wait(), FIRST_READ_WAIT_S)
        except TimeoutError:
            return _json({"type": "snapshot", "error": "metrics unavailable", "series": [], "html": ""})
        return self.snapshot_frame()

    def unsubscribe(self) -> None:
        """Count a socket out; the task stops at its next tick once no socket is left."""
        self.subscribers = max(self.subscribers - 1, 0)

    async def stop(self) -> None:
        """Stop the task now instead of at its next tick (event loop shutdown, tests)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def snapshot_frame(self) -> str:
        assert self.state is not None
        state = self.state
        return _json(
            {
                "type": "snapshot",
                "stats": state.stats,
                "series": self._series(),
                "html": panels_render(stats=state.stats, batches=state.batches, messages=state.messages),
            }
        )

    def _series(self) -> list[dict[str, Any]]:
        """The drawn seconds of the last five minutes, from the first one that saw any traffic."""
        if self._last_point is None:
            return []
        seconds = list(range(self._last_point - SERIES_SECONDS + 1, self._last_point + 1))
        busy = [s for s in seconds if self._seconds.get(s)]
        if not busy:
            return []
        seconds = seconds[seconds.index(busy[0]) :]
        # Before this process watched the queue, its depth follows from the per-second counts:
        # walking back, a second's depth is the next one's minus what came in plus what went out.
        assert self.state is not None
        queue = self._queue_at.get(seconds[-1], self.state.stats["queue_length"])
        depths: dict[int, int] = {}
        for second in reversed(seconds):
            queue = self._queue_at.get(second, queue)
            depths[second] = queue
            raw = self._seconds.get(second, {})
            queue = int(queue - raw.get("accepted", 0) + raw.get("persisted", 0) + raw.get("dead", 0))
        return [point_build(s, self._seconds.get(s, {}), depths[s]) for s in seconds]

    async def _run(self) -> None:
        redis = redis_async_client()
        self._redis = redis
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
        current = int(now)
        window = range(current - SERIES_SECONDS - 1, current)
        wanted = [s for s in window if s not in self._seconds or s >= current - REREAD_SECONDS]
        read = await dashboard_read(redis=self._redis, seconds=wanted, batches=RECENT_READ)
        self.reads += 1
        previous = self.state.stats if self.state is not None else None
        reset = previous is not None and (
            read.counters[metrics.TOTAL_BATCHES] < previous["total_batches"]
            or read.counters[metrics.TOTAL_ACCEPTED] < previous["total_accepted"]
        )
        if reset:
            # Counters went down: someone reset the pipeline; the cached seconds are gone from Redis.
            self._seconds.clear()
            self._queue_at.clear()
        self._seconds.update(read.seconds)
        for second in [s for s in self._seconds if s < window.start]:
            del self._seconds[second]
            self._queue_at.pop(second, None)

        stats = stats_build(counters=read.counters, workers=read.workers, seconds=self._seconds, now=now)
        new_batches = 0 if previous is None else stats["total_batches"] - previous["total_batches"]
        batches = self._batches(read)
        messages = self.state.messages if self.state is not None else []
        if previous is None or reset or new_batches > 0:
            messages = await _messages_recent(fallback=messages)
        points = self._points_settle(now, stats["queue_length"], first=previous is None)
        self.state = DashboardState(stats=stats, batches=batches, messages=messages, read_at=now)
        self._ready.set()

        layer = get_channel_layer()
        assert layer is not None
        if reset:
            await layer.group_send(self.group, {"type": "snapshot", "frame": self.snapshot_frame()})
            return
        update = {"type": "stats_update", "stats": stats, "points": points,
                  "html": panels_render(stats=stats, batches=None, messages=None)}  # fmt: skip
        await layer.group_send(self.group, {"type": "stats_update", "frame": _json(update)})
        if new_batches > 0:
            event = {
                "type": "batch_persisted",
                "count": new_batches,
                "batches": read.recent_batches[: min(new_batches, RECENT_READ)],
                "html": panels_render(stats=None, batches=batches, messages=messages),
            }
            await layer.group_send(self.group, {"type": "batch_persisted", "frame": _json(event)})

    @staticmethod
    def _batches(read: DashboardRead) -> list[dict[str, Any]]:
        return read.recent_batches[:TABLE_ROWS]

    def _points_settle(self, now: float, queue: int, *, first: bool) -> list[dict[str, Any]]:
        """Points for the seconds every writer has left since the last frame."""
        settled = int(now - 1 - SECOND_SETTLE_S)
        if first or self._last_point is None:
            self._last_point = settled
            self._queue_at[settled] = queue
            return []
        points = []
        for second in range(max(self._last_point + 1, settled - SERIES_SECONDS + 1), settled + 1):
            self._queue_at[second] = queue
            points.append(point_build(second, self._seconds.get(second, {}), queue))
        self._last_point = max(self._last_point, settled)
        return points


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
    messages = await _messages_recent(fallback=[])
    return DashboardState(stats=stats, batches=read.recent_batches, messages=messages, read_at=now)
