"""Group commit: many concurrent requests share one rq job and one Redis round trip.

A request hands its rows to the batcher of its event loop and waits. The batcher flushes when it
holds BATCH_SIZE rows or its oldest row has waited BATCH_LINGER_MS, as one job; every waiting
request is answered only once that job is in Redis (what a Kafka producer's linger.ms does).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable

from asgiref.sync import sync_to_async
from django.conf import settings

from messages_app import services
from metrics_app import metrics

logger = logging.getLogger(__name__)

# How stale the backlog figure may be while the API is refusing work for a full queue.
_BACKLOG_REFRESH_S = 0.25
# Longest linger the batcher stretches to while workers are behind, and the number of jobs
# waiting in the queue that takes it there.
MAX_LINGER_S = 0.05
JOBS_WAITING_FOR_MAX_LINGER = 8
# API answers are counted in-process and written to Redis at most this often.
_COUNTERS_FLUSH_S = 1.0


class Overloaded(Exception):
    """The backlog passed INGEST_MAX_BACKLOG: the caller should retry later."""


class Batcher:
    """Per-event-loop accumulator of rows waiting to be enqueued as one job."""

    def __init__(
        self,
        *,
        enqueue: Callable[..., services.Enqueued],
        size: int,
        linger_s: float,
        max_backlog: int,
    ) -> None:
        self._enqueue = enqueue
        self._size = size
        self._linger_s = linger_s
        self._max_backlog = max_backlog
        self._rows: list[services.BatchRow] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self.backlog = 0
        self.jobs_waiting = 0
        self._backlog_read_at = 0.0
        self._responses: dict[str, int] = {}
        self._responses_task: asyncio.Task[None] | None = None

    async def submit(self, rows: list[services.BatchRow]) -> None:
        """Wait until `rows` are in Redis inside a job; raise Overloaded or a Redis error if not."""
        if self.backlog >= self._max_backlog:
            await self._backlog_refresh()
            if self.backlog >= self._max_backlog:
                raise Overloaded
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._rows.extend(rows)
        self._waiters.append(waiter)
        if len(self._rows) >= self._size:
            self._flush()
        elif self._timer is None:
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
        rows, waiters = self._rows, self._waiters
        self._rows, self._waiters = [], []
        if rows:
            task = asyncio.get_running_loop().create_task(self._flush_rows(rows, waiters))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush_rows(self, rows: list[services.BatchRow], waiters: list[asyncio.Future[None]]) -> None:
        try:
            enqueued = await sync_to_async(self._enqueue, thread_sensitive=False)(batch=rows)
        except Exception as exc:
            logger.warning("Enqueueing a batch of %d failed: %s", len(rows), exc)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        self.backlog, self.jobs_waiting = enqueued
        self._backlog_read_at = time.monotonic()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _backlog_refresh(self) -> None:
        if time.monotonic() - self._backlog_read_at < _BACKLOG_REFRESH_S:
            return
        self._backlog_read_at = time.monotonic()
        raw = await sync_to_async(services.redis_connection().get, thread_sensitive=False)(
            metrics.QUEUE_LENGTH
        )
        self.backlog = int(raw or 0)

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
            with services.redis_connection().pipeline(transaction=False) as pipe:
                metrics.responses_record(pipe, counts=counts, now=time.time())
                pipe.execute()

        try:
            await sync_to_async(write, thread_sensitive=False)()
        except Exception as exc:  # Redis down: the counts are lost, the requests were answered.
            logger.debug("Could not record response counts: %s", exc)


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Batcher] = weakref.WeakKeyDictionary()


def batcher_for_loop() -> Batcher:
    """The batcher of the running event loop (each server worker process runs its own loop)."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = Batcher(
            enqueue=services.batch_enqueue,
            size=settings.BATCH_SIZE,
            linger_s=settings.BATCH_LINGER_MS / 1000.0,
            max_backlog=settings.INGEST_MAX_BACKLOG,
        )
        _batchers[loop] = batcher
    return batcher
