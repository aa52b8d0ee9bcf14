"""rq jobs: thin doors into the services, with JSON-able arguments only.

A persist job also takes the persist jobs queued behind it into its own transaction ("absorbs"
them): rq's bookkeeping costs a worker ~3 ms of CPU a job whatever its size, so a worker that
falls behind a trickle of small jobs catches up by taking many at once, and the API can enqueue
a lone message at once instead of lingering for company (messages_app/batcher.py).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Any

from django.db import close_old_connections
from redis.exceptions import RedisError
from rq import Queue, get_current_job
from rq.job import Job, JobStatus

from messages_app.services import JOB_ROWS_META, BatchRow, PersistResult, messages_persist, rows_decode
from telemetry import metrics
from telemetry.connection import redis_connection

logger = logging.getLogger("messages_app.worker")

# Derived gauges (p99, current_rps) need a window read; once per half second across all workers.
_DERIVED_EVERY_S = 0.5
# Where a row (a list, as JSON decoded it) holds its receipt time.
_RECEIVED = BatchRow._fields.index("received")


# How much a job takes in from the jobs queued behind it: up to this many jobs, and no more rows
# in one transaction than this (a 1,000-message request is one job of 1,000 rows). One worker
# draining 400,000 rows (three alternating runs each) stored 154,198 rows/s at 5,000 rows a
# transaction, 192,664 at 20,000 and 176,495 at 50,000: the commit's wait for the disk, and the
# loop's other fixed costs, are paid a quarter as often, and a transaction still takes ~0.1 s.
ABSORB_MAX_JOBS = 64
ABSORB_MAX_ROWS = 20_000
# The ids of the jobs a job absorbed, kept until its transaction commits: a rerun of the job
# (its worker died, PostgreSQL was down) persists them again, so they are never lost between
# leaving the queue and reaching the table.
ABSORBED_KEY_PREFIX = "ingestor:absorbed:"
# Atomically: take each job id still in the queue out of it, and note it as absorbed. A job that
# has absorbed others itself (a rerun waiting in the queue after a failure) stays: it brings those
# in when it runs. KEYS[1] the queue, KEYS[2] the absorbing job's list; ARGV[1] the prefix of those
# lists, then the candidate ids. Returns the ids taken.
_CLAIM_LUA = """
local taken = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('EXISTS', ARGV[1] .. id) == 0 and redis.call('LREM', KEYS[1], 1, id) == 1 then
    redis.call('RPUSH', KEYS[2], id)
    taken[#taken + 1] = id
  end
end
return taken
"""


def persist_batch(batch: list[Any]) -> int:
    """Persist one batch of messages, with the batches absorbed from the queue behind it, in one
    transaction; then record its metrics in one Redis pipeline.

    `batch` is the job's argument as JSON decoded it: a list of rows, each a list in BatchRow's
    field order.
    """
    job = get_current_job()
    started = time.perf_counter()
    absorbed = _absorb(job, len(batch)) if job is not None else []
    entries = [*batch, *(entry for other in absorbed for entry in other.args[0])]
    rows, malformed = rows_decode(entries)
    try:
        result = messages_persist(batch=rows, malformed=malformed, job_id=job.id if job else "")
    finally:
        # Hand the connection back to the pool, and drop it if PostgreSQL went away meanwhile,
        # so the retry of this job starts on a fresh one.
        close_old_connections()
    duration = time.perf_counter() - started
    try:
        if job is not None and absorbed:
            _absorbed_forget(job, absorbed)
        _metrics_record(rows, len(entries), result, duration, job.worker_name if job else None)
    except RedisError as exc:
        # The rows are committed: failing the job now would only re-run it and count it twice.
        logger.warning("Batch of %d saved, but its metrics were not recorded: %s", len(entries), exc)
    return result.inserted


def _absorb(job: Job, rows: int) -> list[Job]:
    """The persist jobs this job takes in: those an earlier run of it absorbed, then more from the
    head of its queue while they fit under ABSORB_MAX_JOBS and ABSORB_MAX_ROWS."""
    redis = job.connection
    absorbed_key = ABSORBED_KEY_PREFIX + job.id
    earlier = _ids(redis.lrange(absorbed_key, 0, -1))
    jobs = [other for other in Job.fetch_many(earlier, redis, serializer=job.serializer) if other is not None]
    rows += sum(len(other.args[0]) for other in jobs)  # decoded here once, kept for the insert
    room = ABSORB_MAX_JOBS - len(jobs)
    if room <= 0 or rows >= ABSORB_MAX_ROWS:
        return jobs
    queue = Queue(job.origin, connection=redis, serializer=job.serializer)
    waiting = _ids(redis.lrange(queue.key, 0, room - 1))
    if not waiting:
        return jobs
    # Each waiting job's status and size, from two small fields: its rows are decoded only if taken.
    with redis.pipeline(transaction=False) as pipe:
        for job_id in waiting:
            pipe.hmget(Job.key_for(job_id), ["status", "meta"])
        fields = pipe.execute()
    candidates = []
    for job_id, (status, meta) in zip(waiting, fields, strict=True):
        # Only persist jobs the API made (they say their size) and still queued; anything else
        # keeps its place in the queue.
        size = _rows_in_meta(job, meta)
        if status != JobStatus.QUEUED.value.encode() or size < 0 or rows + size > ABSORB_MAX_ROWS:
            continue
        candidates.append(job_id)
        rows += size
    if not candidates:
        return jobs
    taken = _ids(redis.eval(_CLAIM_LUA, 2, queue.key, absorbed_key, ABSORBED_KEY_PREFIX, *candidates))
    return jobs + [
        other for other in Job.fetch_many(taken, redis, serializer=job.serializer) if other is not None
    ]


def _rows_in_meta(job: Job, meta: bytes | None) -> int:
    """The row count a job made by batch_enqueue carries in its meta; -1 for any other job."""
    try:
        size = job.serializer.loads(meta).get(JOB_ROWS_META) if meta else None
    except Exception:  # unreadable meta: not one of ours
        return -1
    return size if type(size) is int and size >= 0 else -1


def _ids(items: Any) -> list[str]:
    return [item.decode() if isinstance(item, bytes) else str(item) for item in items]


def _absorbed_forget(job: Job, absorbed: list[Job]) -> None:
    """Once their rows are committed: delete the absorbed jobs and the note of them."""
    with job.connection.pipeline() as pipe:
        for other in absorbed:
            pipe.delete(other.key)
        pipe.delete(ABSORBED_KEY_PREFIX + job.id)
        pipe.execute()


def _is_time(value: Any) -> bool:
    """A receipt time the latency can be taken from. A job made by hand may hold anything there;
    its row is then a dead letter, and must not fail the job after the commit."""
    return type(value) in (int, float) and math.isfinite(value)


def _metrics_record(
    rows: list[list[Any]], size: int, result: PersistResult, duration: float, worker: str | None
) -> None:
    now = time.time()
    redis = redis_connection()
    with redis.pipeline() as pipe:
        metrics.batch_record(
            pipe,
            size=size,
            inserted=result.inserted,
            dead=result.dead,
            latencies_ms=[(now - row[_RECEIVED]) * 1000.0 for row in rows if _is_time(row[_RECEIVED])],
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
