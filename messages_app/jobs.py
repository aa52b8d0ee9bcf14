"""rq jobs: thin doors into the services, with JSON-able arguments only."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from django.db import close_old_connections
from redis.exceptions import RedisError
from rq import get_current_job

from messages_app.services import BatchRow, PersistResult, messages_persist, rows_decode
from telemetry import metrics
from telemetry.connection import redis_connection

logger = logging.getLogger("messages_app.worker")

# Derived gauges (p99, current_rps) need a window read; once per half second across all workers.
_DERIVED_EVERY_S = 0.5


def persist_batch(batch: list[Any]) -> int:
    """Persist one batch of messages, then record its metrics in one Redis pipeline.

    `batch` is the job's argument as JSON decoded it: a list of rows, each a list in BatchRow's
    field order.
    """
    job = get_current_job()
    started = time.perf_counter()
    rows, malformed = rows_decode(batch)
    try:
        result = messages_persist(batch=rows, malformed=malformed, job_id=job.id if job else "")
    finally:
        # Hand the connection back to the pool, and drop it if PostgreSQL went away meanwhile,
        # so the retry of this job starts on a fresh one.
        close_old_connections()
    duration = time.perf_counter() - started
    try:
        _metrics_record(rows, len(batch), result, duration, job.worker_name if job else None)
    except RedisError as exc:
        # The rows are committed: failing the job now would only re-run it and count it twice.
        logger.warning("Batch of %d saved, but its metrics were not recorded: %s", len(batch), exc)
    return result.inserted


def _metrics_record(
    rows: list[BatchRow], size: int, result: PersistResult, duration: float, worker: str | None
) -> None:
    now = time.time()
    redis = redis_connection()
    with redis.pipeline() as pipe:
        metrics.batch_record(
            pipe,
            size=size,
            inserted=result.inserted,
            dead=result.dead,
            latencies_ms=[(now - row.received) * 1000.0 for row in rows],
            duration_s=duration,
            worker=worker or f"{socket.gethostname()}:{os.getpid()}",
            now=now,
        )
        replies = pipe.execute()
    total_messages, batch_number = replies[0], replies[1]
    logger.info(
        "Batch #%d saved: %d messages in %.3fs (%.0f msg/s) | total %d",
        batch_number,
        result.inserted,
        duration,
        size / duration if duration > 0 else 0.0,
        total_messages,
    )
    if metrics.derived_refresh_due(redis, every_s=_DERIVED_EVERY_S):
        metrics.derived_refresh(redis, now=now)
