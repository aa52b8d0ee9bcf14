"""rq jobs: thin doors into the services, with JSON-able arguments only.

A persist job also takes the persist jobs queued behind it into its own transaction ("absorbs"
them): rq's bookkeeping costs a worker ~3 ms of CPU a job whatever its size, so a worker that
falls behind a trickle of small jobs catches up by taking many at once, and the API can enqueue
a lone message at once instead of lingering for company (messages_app/batcher.py).
"""

from __future__ import annotations

import logging
import math
import operator
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from redis.exceptions import RedisError
from rq import Queue, get_current_job
from rq.job import Job, JobStatus

from messages_app.services import (
    JOB_ROWS_META,
    BatchRow,
    Chunk,
    PersistResult,
    messages_persist_streamed,
    rows_decode,
)
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
# The jobs are claimed a step at a time, each step's rows written into the transaction's COPY
# before the next step is claimed and decoded: PostgreSQL takes in one step's rows meanwhile.
ABSORB_STEP_ROWS = 4_000
# A job of a few rows that finds a few small jobs behind it (a stream of single messages under
# load) waits WORKER_LINGER_MS once before taking them in, so that more arrive and the transaction's
# fixed costs (rq's bookkeeping, COPY, commit, metrics: two thirds of a worker's CPU at 64
# connections) are paid for more messages, and the sleeping worker leaves its core to the web
# processes. A job alone (light load) or with a backlog behind it (a queue to drain) goes at once,
# and so does a job of one row: its web process had one request open when it flushed, so it is
# not busy. Lingering behind one-row jobs too took one connection's POST p50 from 709 to 880 µs
# (scripts/bench_light.py, 10 rounds): the worker then works in bursts beside the web process.
LINGER_ROWS = range(2, 200)
LINGER_WAITING_JOBS = range(2, 16)
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
    transaction; then record its metrics in one Redis pipeline. The absorbed jobs are claimed a
    step at a time while the rows already written go into PostgreSQL's COPY
    (services.messages_persist_streamed): on one worker, PostgreSQL taking in the rows and the
    worker claiming and decoding the next ones overlap instead of taking turns.

    `batch` is the job's argument as JSON decoded it: a list of rows, each a list in BatchRow's
    field order.
    """
    job = get_current_job()
    started = time.perf_counter()
    absorbed: list[Job] = []
    entries = 0

    def chunks() -> Iterator[Chunk]:
        """This job's rows (and those an earlier run of it absorbed), then the jobs it takes in
        from the queue, a step at a time, each decoded as it is claimed."""
        nonlocal entries
        taken = _absorbed_earlier(job) if job is not None else []
        step: list[Any] = batch
        while True:
            absorbed.extend(taken)
            step = [*step, *(entry for other in taken for entry in other.args[0])]
            entries += len(step)
            yield rows_decode(step)
            if job is None:
                return
            taken = _absorb_step(job, rows=entries, jobs=len(absorbed))
            if not taken:
                return
            step = []

    if job is not None:
        _linger_if_worthwhile(job, rows=len(batch))
    try:
        result, rows, _ = messages_persist_streamed(chunks(), job_id=job.id if job else "")
    finally:
        # Hand the connection back to the pool, and drop it if PostgreSQL went away meanwhile,
        # so the retry of this job starts on a fresh one.
        close_old_connections()
    duration = time.perf_counter() - started
    try:
        if job is not None and absorbed:
            _absorbed_forget(job, absorbed)
        _metrics_record(rows, entries, result, duration, job.worker_name if job else None)
    except RedisError as exc:
        # The rows are committed: failing the job now would only re-run it and count it twice.
        logger.warning("Batch of %d saved, but its metrics were not recorded: %s", entries, exc)
    return result.inserted


def _absorbed_earlier(job: Job) -> list[Job]:
    """The jobs an earlier run of this job absorbed: it died, or its transaction failed, before
    they were stored."""
    earlier = _ids(job.connection.lrange(ABSORBED_KEY_PREFIX + job.id, 0, -1))
    fetched = Job.fetch_many(earlier, job.connection, serializer=job.serializer)
    return [other for other in fetched if other is not None]


def _absorb_step(job: Job, *, rows: int, jobs: int) -> list[Job]:
    """More persist jobs for this job to take in, from the head of its queue: the job holds
    `rows` rows of `jobs` absorbed jobs so far. Those that fit under ABSORB_MAX_JOBS and
    ABSORB_MAX_ROWS, and this step's ABSORB_STEP_ROWS (at least one that fits the first two)."""
    redis = job.connection
    absorbed_key = ABSORBED_KEY_PREFIX + job.id
    room = ABSORB_MAX_JOBS - jobs
    if room <= 0 or rows >= ABSORB_MAX_ROWS:
        return []
    queue = Queue(job.origin, connection=redis, serializer=job.serializer)
    waiting = _ids(redis.lrange(queue.key, 0, room - 1))
    if not waiting:
        return []
    # Each waiting job's status and size, from two small fields: its rows are decoded only if taken.
    with redis.pipeline(transaction=False) as pipe:
        for job_id in waiting:
            pipe.hmget(Job.key_for(job_id), ["status", "meta"])
        fields = pipe.execute()
    candidates: list[str] = []
    step = 0
    for job_id, (status, meta) in zip(waiting, fields, strict=True):
        # Only persist jobs the API made (they say their size) and still queued; anything else
        # keeps its place in the queue.
        size = _rows_in_meta(job, meta)
        if status != JobStatus.QUEUED.value.encode() or size < 0 or rows + size > ABSORB_MAX_ROWS:
            continue
        if candidates and step + size > ABSORB_STEP_ROWS:
            break
        candidates.append(job_id)
        rows += size
        step += size
    if not candidates:
        return []
    taken = _ids(redis.eval(_CLAIM_LUA, 2, queue.key, absorbed_key, ABSORBED_KEY_PREFIX, *candidates))
    return [other for other in Job.fetch_many(taken, redis, serializer=job.serializer) if other is not None]


def _linger_if_worthwhile(job: Job, *, rows: int) -> None:
    """Wait WORKER_LINGER_MS if this job of `rows` rows should let more jobs queue up behind it.
    Before its transaction starts, whose time every row gets as `inserted_at`: rows that arrive
    during the wait must not be stored as inserted before they were received."""
    if settings.WORKER_LINGER_MS <= 0 or rows not in LINGER_ROWS:
        return
    if job.connection.llen(Queue.redis_queue_namespace_prefix + job.origin) in LINGER_WAITING_JOBS:
        time.sleep(settings.WORKER_LINGER_MS / 1000.0)


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


def _latencies_ms(rows: list[list[Any]], now: float) -> dict[float, int]:
    """Each receipt-to-now latency of the rows, in ms, and how many rows had it: the receipt
    times counted in one C loop, then a latency per distinct time (the rows of a request share
    theirs), instead of a Python step per row."""
    receipts = Counter(map(operator.itemgetter(_RECEIVED), rows))
    return {(now - received) * 1000.0: times for received, times in receipts.items() if _is_time(received)}


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
            latencies_ms=_latencies_ms(rows, now),
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
