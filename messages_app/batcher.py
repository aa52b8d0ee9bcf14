"""Group commit: many concurrent requests share one rq job and one Redis round trip.

A request hands its rows to the batcher of its event loop and waits; it is answered only once a
job holding its rows is in Redis. With no flush in flight the rows go at once (a lone message
waits for nobody); while one is in flight, the rows that arrive meanwhile gather and go as one
job when it returns (classic group commit), or when BATCH_SIZE rows are waiting. BATCH_LINGER_MS
bounds the wait should a flush take long (a second one then starts beside it), and stretches while
workers fall behind. Workers catch up on a backlog of small jobs by taking many into one
transaction (messages_app/jobs.py), so a lone message never waits for company.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from messages_app import services
from messages_app.cpu_yield import CpuYield
from telemetry import metrics
from telemetry.connection import redis_async_client, redis_connection

logger = logging.getLogger(__name__)

# How stale the backlog figure may be while the API is refusing work for a full queue.
_BACKLOG_REFRESH_S = 0.25
# Longest linger the batcher stretches to while workers are behind, and the number of jobs
# waiting in the queue that takes it there.
MAX_LINGER_S = 0.05
JOBS_WAITING_FOR_MAX_LINGER = 8
# Enqueues running at once per process. More rows wait for the next flush instead: bigger jobs
# under load, and with Redis frozen, no pile of threads each waiting out its socket timeout.
MAX_FLUSHES_IN_FLIGHT = 2
# After an enqueue failed for want of Redis, answer 503 at once for this long before trying again.
REDIS_DOWN_HOLD_S = 1.0
# API answers are counted in-process and written to Redis at most this often.
_COUNTERS_FLUSH_S = 1.0


class Overloaded(Exception):
    """The backlog passed INGEST_MAX_BACKLOG: the caller should retry later."""


T = TypeVar("T")


class Batcher:
    """Per-event-loop accumulator of rows waiting to be enqueued as one job."""

    def __init__(
        self,
        *,
        enqueue: Callable[..., services.Enqueued] | None = None,
        enqueue_async: Callable[..., Awaitable[services.Enqueued]] | None = None,
        size: int,
        linger_s: float,
        max_backlog: int,
        reply_spin_s: float = 0.0,
        cpu_yield: CpuYield | None = None,
    ) -> None:
        # One of the two: a blocking enqueue (run in this batcher's threads) or a coroutine of
        # this loop's (no thread to wake and wait for: a lone message's answer comes sooner).
        if (enqueue is None) == (enqueue_async is None):
            raise TypeError("give one of enqueue and enqueue_async")
        self._enqueue = enqueue
        self._enqueue_async = enqueue_async
        self._size = size
        self._linger_s = linger_s
        self._max_backlog = max_backlog
        self._reply_spin_s = reply_spin_s
        # Ingest requests open on this loop, counted by the API handler (ingestor_site/handlers.py).
        self.requests_open = 0
        self._rows: list[services.BatchRow] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.Handle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self.backlog = 0
        self.jobs_waiting = 0
        self._backlog_read_at = 0.0
        self._responses: dict[str, int] = {}
        self._responses_task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._flush_deferred = False
        self._redis_down_until = 0.0
        # The web processes' CPU priority, following the backlog (messages_app/cpu_yield.py).
        self._cpu_yield = cpu_yield
        # Its own threads: a slow database read elsewhere in the process cannot hold up writes.
        self._executor = ThreadPoolExecutor(
            max_workers=MAX_FLUSHES_IN_FLIGHT + 1, thread_name_prefix="batcher"
        )

    async def _in_thread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args, **kwargs))

    async def submit(self, rows: list[services.BatchRow]) -> None:
        """Wait until `rows` are in Redis inside a job; raise Overloaded or a Redis error if not."""
        if time.monotonic() < self._redis_down_until:
            raise RedisConnectionError("Redis was unreachable a moment ago")
        if await self.overloaded():
            raise Overloaded
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._rows.extend(rows)
        self._waiters.append(waiter)
        if len(self._rows) >= self._size:
            self._flush()
        elif self._timer is None:
            if self._in_flight == 0:
                # Nothing to wait for: go once the requests already read in this turn of the loop
                # have joined.
                self._timer = loop.call_soon(self._flush)
            else:
                self._timer = loop.call_later(self._linger(), self._flush)
        # A client that hangs up cancels only this waiter (done, so the flush skips it), never
        # the flush task its rows already joined.
        await waiter

    def _linger(self) -> float:
        """BATCH_LINGER_MS while workers keep up; longer, up to MAX_LINGER_S, as jobs queue up.

        A worker's cost is mostly per job (rq's bookkeeping is ~3 ms of CPU a job here), so a
        trickle of requests flushed one or two at a time can outrun it at a few hundred
        messages/s. Jobs waiting in the queue say it is behind: lingering longer makes fewer,
        bigger jobs until it catches up, and slows the intake of closed-loop clients.
        """
        if self.jobs_waiting <= 1:
            return self._linger_s
        pressure = min((self.jobs_waiting - 1) / JOBS_WAITING_FOR_MAX_LINGER, 1.0)
        return max(self._linger_s, self._linger_s + pressure * (MAX_LINGER_S - self._linger_s))

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._rows:
            return
        if self._in_flight >= MAX_FLUSHES_IN_FLIGHT:
            self._flush_deferred = True  # flushed as soon as one in flight returns
            return
        rows, waiters = self._rows, self._waiters
        self._rows, self._waiters = [], []
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._flush_rows(rows, waiters))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush_rows(self, rows: list[services.BatchRow], waiters: list[asyncio.Future[None]]) -> None:
        try:
            if self._enqueue_async is not None:
                # The flush of a lone request, the only one open on this loop, leaves the loop
                # nothing to do until Redis answers: it waits for the reply without sleeping
                # (job_writer._reply_wait_spinning). With more requests open the loop has work
                # or soon will, and on a small machine a process turning its loop over for
                # nothing takes CPU from Redis, the workers and the other web processes.
                alone = self._in_flight == 1 and self.requests_open <= 1 and len(waiters) == 1
                reply_spin_s = self._reply_spin_s if alone else 0.0
                enqueued = await self._enqueue_async(batch=rows, reply_spin_s=reply_spin_s)
            else:
                assert self._enqueue is not None  # one of the two, checked at construction
                enqueued = await self._in_thread(self._enqueue, batch=rows)
        except Exception as exc:
            logger.warning("Enqueueing a batch of %d failed: %s", len(rows), exc)
            if isinstance(exc, RedisError | OSError):
                self._redis_down_until = time.monotonic() + REDIS_DOWN_HOLD_S
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        else:
            self.backlog, self.jobs_waiting = enqueued
            self._backlog_read_at = time.monotonic()
            self._backlog_follow()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        finally:
            self._in_flight -= 1
            # What gathered while this flush was out goes now: the next group.
            if self._flush_deferred or self._rows:
                self._flush_deferred = False
                self._flush()

    async def overloaded(self) -> bool:
        """Whether the backlog is over INGEST_MAX_BACKLOG, as the last flush or a read at most
        _BACKLOG_REFRESH_S old saw it (one Redis read per process that often while refusing)."""
        if self.backlog < self._max_backlog:
            return False
        await self._backlog_refresh()
        return self.backlog >= self._max_backlog

    async def _backlog_refresh(self) -> None:
        if time.monotonic() - self._backlog_read_at < _BACKLOG_REFRESH_S:
            return
        self._backlog_read_at = time.monotonic()
        raw = await self._in_thread(redis_connection().get, metrics.QUEUE_LENGTH)
        self.backlog = int(raw or 0)
        self._backlog_follow()

    def _backlog_follow(self) -> None:
        if self._cpu_yield is not None:
            self._cpu_yield.follow(self.backlog)

    def response_count(self, status: int) -> None:
        """Count an answer the API gave, for the dashboard's errors-per-second figures."""
        field = "503" if status == 503 else f"{status // 100}xx"
        self._responses[field] = self._responses.get(field, 0) + 1
        if self._responses_task is None or self._responses_task.done():
            self._responses_task = asyncio.get_running_loop().create_task(self._responses_flush())

    async def _responses_flush(self) -> None:
        await asyncio.sleep(_COUNTERS_FLUSH_S)
        counts, self._responses = self._responses, {}
        if not counts:
            return

        def write() -> None:
            with redis_connection().pipeline(transaction=False) as pipe:
                metrics.responses_record(pipe, counts=counts, now=time.time())
                pipe.execute()

        try:
            await self._in_thread(write)
        except Exception as exc:  # Redis down: the counts are lost, the requests were answered.
            logger.debug("Could not record response counts: %s", exc)


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Batcher] = weakref.WeakKeyDictionary()


@functools.cache
def _cpu_yield() -> CpuYield:
    """The process's one CpuYield: its batchers (one per event loop) share the session's priority."""
    return CpuYield(nice=settings.INGEST_YIELD_NICE, max_backlog=settings.INGEST_MAX_BACKLOG)


def batcher_for_loop() -> Batcher:
    """The batcher of the running event loop (each server worker process runs its own loop)."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        # A batcher's Redis client holds its loop (through its connections' transports), so the
        # weak keys alone never let go of a finished loop (tests, async_to_sync): drop those here.
        for finished in [other for other in _batchers if other.is_closed()]:
            del _batchers[finished]
        if settings.INGEST_REDIS_MIN_REPLICAS > 0:
            # WAIT must follow the write on its own connection: the blocking client, in a thread.
            enqueue, enqueue_async = services.batch_enqueue, None
        else:
            # The loop's own client, for as long as the loop (and so this batcher) lives.
            enqueue, enqueue_async = (
                None,
                functools.partial(services.batch_enqueue_async, redis_async_client()),
            )
        batcher = Batcher(
            enqueue=enqueue,
            enqueue_async=enqueue_async,
            size=settings.BATCH_SIZE,
            linger_s=settings.BATCH_LINGER_MS / 1000.0,
            max_backlog=settings.INGEST_MAX_BACKLOG,
            reply_spin_s=settings.BATCH_REPLY_SPIN_US / 1_000_000,
            cpu_yield=_cpu_yield(),
        )
        _batchers[loop] = batcher
    return batcher
