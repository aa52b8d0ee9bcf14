"""The stored-message and dead-letter counters, reconciled with the tables while workers run.

A job adds a batch to `total_messages` after the batch's commit. A worker killed between the two
leaves the counter short for good (the re-run of its batch inserts nothing new and adds nothing),
and retention lowers the tables without lowering the counters. Counting the tables and setting
the counters is only right if no batch sits between its commit and its metrics at that moment:
such a batch is in the table's count and would be added again by its worker right after.

So the workers' maintenance tick reconciles at a quiet moment, and proves it was one: no job in
the started registry before the count, and after it none either and `total_batches` unchanged.
Every commit happens inside a started job (rq registers the job before running it and removes it
only after the metrics), so a batch committed before the count with its metrics still to come
would show in one of those readings. The counters are then set in a Redis transaction that
aborts should a batch record anything meanwhile. Under continuous load no such moment comes:
the counters stay best-effort, and the last reconciled figure, with its time, stays beside them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from django.db import connection
from redis.exceptions import WatchError

from messages_app.models import DeadLetter, Message
from messages_app.partitions import MAINTENANCE_EVERY_S
from messages_app.services import ingest_queue
from telemetry import metrics

logger = logging.getLogger(__name__)

# How often a worker looks for a quiet moment to reconcile in; a busy pipeline is retried sooner.
RECONCILE_EVERY_S = 60
RECONCILE_RETRY_S = 10
RECONCILE_DUE_KEY = "ingestor:counters:reconcile-due"


@dataclass(frozen=True)
class Reconciliation:
    messages: int  # the tables' counts
    dead_letters: int
    drift: int  # the table's count minus total_messages just before (what the counter missed)
    applied: bool  # whether the counters were set (False: a batch was in flight)


def _pipeline_state(redis: Any, started_key: str) -> tuple[int, int, int, int]:
    """Jobs in the started registry, total_batches, total_messages, total_dead_letters."""
    with redis.pipeline(transaction=True) as pipe:
        # ZCARD, not rq's count: that one cleans the registry up, which is the worker's business.
        pipe.zcard(started_key)
        pipe.mget(metrics.TOTAL_BATCHES, metrics.TOTAL_MESSAGES, metrics.TOTAL_DEAD_LETTERS)
        started, (batches, messages, dead_letters) = pipe.execute()
    return int(started), int(batches or 0), int(messages or 0), int(dead_letters or 0)


def _tables_count() -> tuple[int, int]:
    # One statement: both counts from one snapshot.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT count(*) FROM {connection.ops.quote_name(Message._meta.db_table)}), "  # noqa: S608
            f"(SELECT count(*) FROM {connection.ops.quote_name(DeadLetter._meta.db_table)})"
        )
        messages, dead_letters = cursor.fetchone()
    return int(messages), int(dead_letters)


def counters_reconcile_if_quiet(*, redis: Any, force: bool = False) -> Reconciliation | None:
    """Set the counters to the tables' counts if no batch is in flight; None when one was
    (nothing counted), or when nothing changed since the last reconciliation (unless `force`)."""
    started_key = ingest_queue().started_job_registry.key
    started, batches, messages_before, _ = _pipeline_state(redis, started_key)
    if started:
        return None
    last = metrics.reconciled_read(redis)
    if (
        not force
        and last is not None
        and last["batches"] == batches
        and last["messages"] == messages_before
        and time.time() - last["at"] < MAINTENANCE_EVERY_S  # retention may have dropped rows
    ):
        return None
    messages, dead_letters = _tables_count()
    drift = messages - messages_before
    applied = False
    with redis.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(metrics.TOTAL_BATCHES, metrics.TOTAL_MESSAGES, started_key)
            still_quiet = (
                pipe.zcard(started_key) == 0 and int(pipe.get(metrics.TOTAL_BATCHES) or 0) == batches
            )
            pipe.multi()
            if still_quiet:
                metrics.totals_queue(pipe, messages=messages, dead_letters=dead_letters)
            metrics.reconciled_record(
                pipe, messages=messages, dead_letters=dead_letters, batches=batches, at=time.time()
            )
            pipe.execute()
            applied = still_quiet
        except WatchError:
            pass  # a batch recorded meanwhile: the next tick tries again
    if applied and drift:
        logger.warning(
            "Counters reconciled with the tables: total_messages was %d, the table holds %d",
            messages_before,
            messages,
        )
    return Reconciliation(messages=messages, dead_letters=dead_letters, drift=drift, applied=applied)


def counters_reconcile_when_due(*, redis: Any) -> Reconciliation | None:
    """On a worker's maintenance tick: reconcile once per RECONCILE_EVERY_S across the workers."""
    if not redis.set(RECONCILE_DUE_KEY, str(time.time()), nx=True, ex=RECONCILE_EVERY_S):
        return None
    try:
        result = counters_reconcile_if_quiet(redis=redis)
    except Exception:
        redis.expire(RECONCILE_DUE_KEY, RECONCILE_RETRY_S)
        logger.exception("Counter reconciliation failed; another attempt in %d s", RECONCILE_RETRY_S)
        return None
    if result is None or not result.applied:
        # Busy: look again soon rather than in a minute, so a lull is not missed.
        redis.expire(RECONCILE_DUE_KEY, RECONCILE_RETRY_S)
    return result
