"""rq jobs: thin doors into the services, with JSON-able arguments only."""

from __future__ import annotations

import logging
import os
import socket
import time

from django.db import close_old_connections
from rq import get_current_job

from messages_app.services import BatchRow, messages_persist, redis_connection
from metrics_app import metrics

logger = logging.getLogger("messages_app.worker")

# Derived gauges (p99, current_rps) need a window read; once per half second per worker is plenty.
_DERIVED_EVERY_S = 0.5
_last_derived_at = 0.0


def persist_batch(batch: list[BatchRow]) -> int:
    """Persist one batch of messages, then record its metrics in one Redis pipeline."""
    global _last_derived_at
    job = get_current_job()
    started = time.perf_counter()
    try:
        result = messages_persist(batch=batch, job_id=job.id if job else "")
    finally:
        # Hand the connection back to the pool, and drop it if PostgreSQL went away meanwhile,
        # so the retry of this job starts on a fresh one.
        close_old_connections()
    duration = time.perf_counter() - started
    now = time.time()
    worker = job.worker_name if job and job.worker_name else f"{socket.gethostname()}:{os.getpid()}"
    redis = redis_connection()
    with redis.pipeline() as pipe:
        metrics.batch_record(
            pipe,
            size=len(batch),
            inserted=result.inserted,
            dead=result.dead,
            latencies_ms=[(now - row[4]) * 1000.0 for row in batch],
            duration_s=duration,
            worker=worker,
            now=now,
        )
        replies = pipe.execute()
    total_messages, batch_number = replies[0], replies[1]
    logger.info(
        "Batch #%d saved: %d messages in %.3fs (%.0f msg/s) | total %d",
        batch_number,
        result.inserted,
        duration,
        len(batch) / duration if duration > 0 else 0.0,
        total_messages,
    )
    if now - _last_derived_at >= _DERIVED_EVERY_S:
        _last_derived_at = now
        metrics.derived_refresh(redis, now=now)
    return result.inserted
