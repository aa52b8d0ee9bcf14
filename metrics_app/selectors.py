"""Reads of the pipeline's metrics, merged across every web process and worker."""

from __future__ import annotations

import time
from typing import Any

from messages_app.services import redis_connection
from metrics_app import metrics


def stats_snapshot(*, now: float | None = None) -> dict[str, Any]:
    """Counters and windowed gauges in one dict (the dashboard's, /stats' and the load test's view)."""
    now = time.time() if now is None else now
    redis = redis_connection()
    derived = metrics.derived_refresh(redis, now=now)
    counters = (metrics.TOTAL_MESSAGES, metrics.TOTAL_BATCHES, metrics.QUEUE_LENGTH,
                metrics.TOTAL_ACCEPTED, metrics.TOTAL_DEAD_LETTERS)  # fmt: skip
    values = redis.mget(counters)
    snapshot: dict[str, Any] = {name: int(value or 0) for name, value in zip(counters, values, strict=True)}
    snapshot[metrics.QUEUE_LENGTH] = max(snapshot[metrics.QUEUE_LENGTH], 0)
    snapshot.update(derived)
    snapshot["timestamp"] = now
    return snapshot
