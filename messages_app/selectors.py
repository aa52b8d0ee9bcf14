"""Reads of the ingest pipeline: stored messages, health, queue state."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from django.db import DatabaseError, connection
from redis.exceptions import RedisError
from rq import Worker

from messages_app.models import Message
from messages_app.services import ingest_queue
from telemetry import metrics
from telemetry.connection import redis_connection


def messages_latest(*, limit: int, channel_id: int | None, user_id: int | None) -> list[dict[str, Any]]:
    """The latest persisted messages, newest first, optionally for one channel and/or user."""
    # A batch's rows share one receipt time; their UUIDv7 ids keep them newest first (an incremental
    # sort on top of the created_at indexes).
    rows = Message.objects.order_by("-created_at", "-id")
    if channel_id is not None:
        rows = rows.filter(channel_id=channel_id)
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    fields = ("id", "user_id", "channel_id", "content", "created_at", "inserted_at")
    try:
        return [{**row, "id": str(row["id"])} for row in rows.values(*fields)[:limit]]
    finally:
        # The API handler skips Django's per-request connection clean-up (ingestor_site/handlers.py):
        # hand the connection back to the pool here.
        connection.close()


def backlog_messages() -> int:
    """Messages accepted by the API and not yet persisted (or dead-lettered)."""
    return max(int(redis_connection().get(metrics.QUEUE_LENGTH) or 0), 0)


def health_report() -> dict[str, Any]:
    report: dict[str, Any] = {"status": "healthy", "redis": "connected", "database": "connected"}
    try:
        report["queue_length"] = backlog_messages()
    except (RedisError, OSError) as exc:
        report.update(status="unhealthy", redis="disconnected", redis_error=type(exc).__name__)
        report["queue_length"] = None
    try:
        _database_ping()
    except (DatabaseError, psycopg.Error) as exc:
        report.update(status="unhealthy", database="disconnected", database_error=type(exc).__name__)
    finally:
        connection.close()
    return report


# A health check must answer before its caller (a load balancer, `make run`) gives up: with
# PostgreSQL down, the pool's own wait for a connection (10 s, sized for real work) is far too long.
HEALTH_DATABASE_TIMEOUT_S = 2.0


def _database_ping() -> None:
    pool = getattr(connection, "pool", None)
    if pool is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return
    pool.open()
    with pool.connection(timeout=HEALTH_DATABASE_TIMEOUT_S) as conn:
        conn.execute("SELECT 1")


def queue_report() -> dict[str, Any]:
    queue = ingest_queue()
    redis = queue.connection
    last_batch = redis.get(metrics.LAST_BATCH)
    return {
        "queue": queue.name,
        "backlog_messages": backlog_messages(),
        "jobs_queued": queue.count,
        "jobs_running": queue.started_job_registry.count,
        "jobs_scheduled_for_retry": queue.scheduled_job_registry.count,
        "jobs_failed": queue.failed_job_registry.count,
        "workers": Worker.count(queue=queue),
        "dead_letters": int(redis.get(metrics.TOTAL_DEAD_LETTERS) or 0),
        "last_batch": json.loads(last_batch) if last_batch else None,
    }
