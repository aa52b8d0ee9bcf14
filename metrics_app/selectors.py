"""Reads of the pipeline's metrics, merged across every web process and worker."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError
from redis.asyncio import Redis as AsyncRedis
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from messages_app.selectors import messages_latest
from messages_app.services import INGEST_QUEUE
from telemetry import metrics
from telemetry.connection import redis_connection

# The cumulative counters every reader wants, in the order `counters_parse` expects them.
COUNTER_KEYS = (
    metrics.TOTAL_MESSAGES,
    metrics.TOTAL_BATCHES,
    metrics.QUEUE_LENGTH,
    metrics.TOTAL_ACCEPTED,
    metrics.TOTAL_DEAD_LETTERS,
)
WORKERS_KEY = WORKERS_BY_QUEUE_KEY % INGEST_QUEUE

logger = logging.getLogger(__name__)


def stats_snapshot(*, now: float | None = None) -> dict[str, Any]:
    """Counters and windowed gauges in one dict (the dashboard's, /stats' and the load test's view)."""
    now = time.time() if now is None else now
    redis = redis_connection()
    derived = metrics.derived_refresh(redis, now=now)
    snapshot: dict[str, Any] = {**counters_parse(redis.mget(COUNTER_KEYS)), **derived}
    # Beside the live counters (best-effort: see messages_app/counters.py), the tables' counts
    # at the last quiet moment and when that was.
    reconciled = metrics.reconciled_read(redis)
    snapshot["reconciled"] = (
        None if reconciled is None else {key: reconciled[key] for key in ("messages", "dead_letters", "at")}
    )
    snapshot["timestamp"] = now
    return snapshot


def counters_parse(values: list[Any]) -> dict[str, int]:
    """An MGET of COUNTER_KEYS as name -> count."""
    counters = {name: int(value or 0) for name, value in zip(COUNTER_KEYS, values, strict=True)}
    # A reset while batches were in flight can leave the backlog counter below zero for a moment.
    counters[metrics.QUEUE_LENGTH] = max(counters[metrics.QUEUE_LENGTH], 0)
    return counters


def second_parse(raw: dict[Any, Any]) -> dict[str, float]:
    """A per-second hash as field name -> number."""
    return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}


@dataclass(frozen=True)
class DashboardRead:
    """Everything the dashboard needs from Redis at one instant (one pipeline, one round trip)."""

    counters: dict[str, int]
    workers: int
    recent_batches: list[dict[str, Any]]
    seconds: dict[int, dict[str, float]]


async def dashboard_read(*, redis: AsyncRedis, seconds: list[int], batches: int) -> DashboardRead:
    """Counters, live workers, the latest `batches` batches and the given per-second hashes."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.mget(COUNTER_KEYS)
        pipe.scard(WORKERS_KEY)
        pipe.lrange(metrics.RECENT_BATCHES, 0, batches - 1)
        for second in seconds:
            pipe.hgetall(metrics.second_key(second))
        replies = await pipe.execute()
    return DashboardRead(
        counters=counters_parse(replies[0]),
        workers=int(replies[1]),
        recent_batches=[json.loads(item) for item in replies[2]],
        seconds={second: second_parse(raw) for second, raw in zip(seconds, replies[3:], strict=True)},
    )


async def messages_recent(*, limit: int, fallback: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest stored messages; `fallback` (the last ones shown) while PostgreSQL does not answer.

    Counters and charts come from Redis and stay live through a database outage.
    """
    try:
        return await sync_to_async(messages_latest, thread_sensitive=False)(
            limit=limit, channel_id=None, user_id=None
        )
    except DatabaseError as exc:
        logger.warning("Dashboard could not read the latest messages: %s", exc)
        return fallback


@dataclass(frozen=True)
class PrometheusRead:
    counters: dict[str, int]
    workers: int
    gauges: dict[str, float]
    latency_histogram: dict[str, float]


def prometheus_read() -> PrometheusRead:
    """What /metrics exposes, in one round trip, without writing anything.

    The windowed gauges are the ones the workers refresh after their batches (and /stats on
    each call); a scrape must not add work to Redis beyond its own read.
    """
    gauge_keys = (metrics.CURRENT_RPS, metrics.AVG_LATENCY_MS, metrics.P50_LATENCY_MS,
                  metrics.P95_LATENCY_MS, metrics.P99_LATENCY_MS,
                  metrics.PARTITIONS_DEFAULT_ROWS, metrics.PARTITIONS_COVERED_UNTIL)  # fmt: skip
    with redis_connection().pipeline(transaction=False) as pipe:
        pipe.mget(COUNTER_KEYS)
        pipe.scard(WORKERS_KEY)
        pipe.mget(gauge_keys)
        pipe.hgetall(metrics.LATENCY_HISTOGRAM)
        counters, workers, gauges, histogram = pipe.execute()
    return PrometheusRead(
        counters=counters_parse(counters),
        workers=int(workers),
        gauges={name: float(value or 0) for name, value in zip(gauge_keys, gauges, strict=True)},
        latency_histogram=second_parse(histogram),
    )
