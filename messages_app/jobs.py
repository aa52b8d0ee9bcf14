"""rq jobs: thin doors into the services, with JSON-able arguments only.

A persist job also takes the persist jobs queued behind it into its own transaction ("absorbs"
them): rq's bookkeeping costs a worker ~3 ms of CPU a job whatever its size, so a worker that
falls behind a trickle of small jobs catches up by taking many at once, and the API can enqueue
a lone message at once instead of lingering for company (messages_app/batcher.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import operator
import os
import socket
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any, NamedTuple

from django.conf import settings
from django.db import close_old_connections
from redis.commands.core import Script
from redis.exceptions import RedisError
from rq import Queue, get_current_job
from rq.exceptions import DeserializationError
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
# A job of a few rows (a stream of single messages under load: its web process flushed several
# requests at once) waits WORKER_LINGER_MS once before taking in the jobs behind it, so that more
# arrive and the transaction's fixed costs (rq's bookkeeping, COPY, commit, metrics: two thirds of
# a worker's CPU at 64 connections) are paid for more messages, and the sleeping worker leaves its
# core to the web processes; also when no job is queued behind it yet: a worker that keeps up
# with such a stream would otherwise pay those costs for every few messages. A job with a backlog
# behind it (a queue to drain) goes at once, and so does a job of one row: its web process had
# one request open when it flushed, so it is not busy. Lingering behind one-row jobs too took one
# connection's POST p50 from 709 to 880 µs (scripts/bench_light.py, 10 rounds): the worker then
# works in bursts beside the web process.
LINGER_ROWS = range(2, 200)
# As many jobs queued behind it as this make a backlog: the job goes at once.
LINGER_BACKLOG_JOBS = 16
# The ids of the jobs a job absorbed, kept until its transaction commits: a rerun of the job
# (its worker died, PostgreSQL was down) persists them again, so they are never lost between
# leaving the queue and reaching the table.
ABSORBED_KEY_PREFIX = "ingestor:absorbed:"
# One step of taking jobs in, atomically, in one round trip: from the head of the queue, each
# persist job the API made (its meta says its row count), still queued and not a rerun that has
# absorbed jobs itself (a job that failed after absorbing others and waits for its retry: it
# brings those in when it runs), that fits under the caps, is taken out of the queue and noted as
# absorbed; its data comes back with it. Anything else keeps its place. KEYS[1] the queue,
# KEYS[2] the absorbing job's list; ARGV: the prefix of those lists, the prefix of job hashes,
# how many queued jobs to look at, the rows the transaction holds so far, ABSORB_MAX_ROWS,
# ABSORB_STEP_ROWS, the queued status, the meta field of the row count. Returns id, data, id, data, ...
_CLAIM_STEP_LUA = """
local rows, most, step_most = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local step, taken = 0, {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)) do
  local key = ARGV[2] .. id
  local fields = redis.call('HMGET', key, 'status', 'meta')
  local size = nil
  if fields[1] == ARGV[7] and fields[2] then
    local ok, meta = pcall(cjson.decode, fields[2])
    if ok and type(meta) == 'table' and type(meta[ARGV[8]]) == 'number' then size = meta[ARGV[8]] end
  end
  if size and size >= 0 and size == math.floor(size) and rows + size <= most then
    if #taken > 0 and step + size > step_most then break end
    if redis.call('EXISTS', ARGV[1] .. id) == 0 and redis.call('LREM', KEYS[1], 1, id) == 1 then
      redis.call('RPUSH', KEYS[2], id)
      taken[#taken + 1] = id
      taken[#taken + 1] = redis.call('HGET', key, 'data') or ''
      rows = rows + size
      step = step + size
    end
  end
end
return taken
"""


class Absorbed(NamedTuple):
    """A job taken into another's transaction: its id and its batch (rows as JSON decoded them)."""

    id: str
    batch: list[Any]


def persist_batch(batch: list[Any]) -> int:
    """Persist one batch of messages, with the batches absorbed from the queue behind it, in one
    transaction; then record its metrics in one Redis pipeline. The absorbed jobs are claimed a
    step at a time while the rows already written go into PostgreSQL's COPY
    (services.messages_persist_streamed): on one worker, PostgreSQL taking in the rows and the
    worker claiming and decoding the next ones overlap instead of taking turns.

    A job that finds a backlog behind it (its transaction took in DRAIN_FROM_ROWS rows or more)
    goes on draining it, a transaction after another, for up to DRAIN_MAX_S: while PostgreSQL
    takes in one transaction's rows, the worker claims and decodes the next one's and records the
    previous one's metrics (_Drain).

    `batch` is the job's argument as JSON decoded it: a list of rows, each a list in BatchRow's
    field order.
    """
    job = get_current_job()
    if job is not None:
        _linger_if_worthwhile(job, rows=len(batch))
    drain = _Drain(job, until=time.perf_counter() + _drain_for_s(job))
    try:
        return drain.run(batch, _absorbed_earlier(job) if job is not None else [])
    finally:
        # Hand the connection back to the pool, and drop it if PostgreSQL went away meanwhile,
        # so the retry of this job starts on a fresh one.
        close_old_connections()
        # After a failure: a transaction that committed before the failed one is counted all the
        # same; the jobs the failed one claimed stay in the list, for the rerun.
        drain.committed_record()


# A job goes on draining the queue behind it after a transaction of at least this many rows (a
# backlog: the single-message path's transactions are far smaller and end with their job), for at
# most DRAIN_MAX_S, and no more than a quarter of its timeout (INGEST_JOB_TIMEOUT): a worker
# stopped meanwhile (rq's warm shutdown) waits that much longer for its job to end, and looks for
# abandoned jobs that much later (its maintenance runs between jobs).
DRAIN_FROM_ROWS = ABSORB_STEP_ROWS
DRAIN_MAX_S = 2.0


def _drain_for_s(job: Job | None) -> float:
    """How long `job` may go on draining the queue behind it."""
    timeout = job.timeout if job is not None and job.timeout and job.timeout > 0 else None
    return DRAIN_MAX_S if timeout is None else min(DRAIN_MAX_S, timeout / 4)


class _Committed(NamedTuple):
    """A committed transaction whose bookkeeping is still to do."""

    absorbed: list[Absorbed]
    rows: list[list[Any]]
    entries: int
    result: PersistResult
    duration: float


class _Drain:
    """One job's transactions, one after another.

    PostgreSQL takes in a transaction's COPY at its own pace, after the worker has written the
    last row: one worker draining a backlog waited ~95 ms of each ~150 ms transaction of 20,000
    rows for the COPY to end, then PostgreSQL idled while the worker recorded the metrics, went
    through rq's bookkeeping, took the next job and claimed and decoded its first rows (~12% of
    the time). Here, that wait does the previous transaction's bookkeeping and claims and decodes
    the next transaction's rows (`ahead`), so its COPY starts the moment this one commits.

    The jobs claimed ahead are noted in the job's absorbed list with this transaction's: a rerun
    (the worker died, PostgreSQL went away) stores them all. Each transaction's bookkeeping takes
    its own jobs out of the list once it has committed, and deletes them.
    """

    def __init__(self, job: Job | None, *, until: float) -> None:
        self.job = job
        self.until = until
        self.ahead: list[Absorbed] = []
        self.committed: _Committed | None = None

    def run(self, own: list[Any], opening: list[Absorbed]) -> int:
        """Store `own` rows and the `opening` jobs', then the transactions claimed ahead of each
        other while they come; the last one's bookkeeping included. Return how many rows were new."""
        inserted = 0
        while True:
            inserted += self.transaction(own, opening)
            if not self.ahead:
                self.committed_record(final=True)
                return inserted
            own, opening, self.ahead = [], self.ahead, []

    def transaction(self, own: list[Any], opening: list[Absorbed]) -> int:
        """Store `own` rows and the `opening` jobs' with the jobs taken in behind them, in one
        transaction; return how many rows were new."""
        job = self.job
        started = time.perf_counter()
        absorbed: list[Absorbed] = []
        entries = 0

        def chunks() -> Iterator[Chunk]:
            """These rows, then the jobs taken in from the queue, a step at a time, each decoded
            as it is claimed; then, while the COPY ends, the bookkeeping and the next rows."""
            nonlocal entries
            taken, step = opening, own
            while True:
                absorbed.extend(taken)
                step = [*step, *(entry for other in taken for entry in other.batch)]
                entries += len(step)
                yield rows_decode(step)
                if job is None:
                    return
                taken = _absorb_step(job, rows=entries, jobs=len(absorbed))
                if not taken:
                    break
                step = []
            self.committed_record()
            if entries >= DRAIN_FROM_ROWS and time.perf_counter() < self.until:
                self.ahead = _absorb_all(job)

        result, rows, _ = messages_persist_streamed(chunks(), job_id=job.id if job else "")
        # Not done during the COPY when PostgreSQL refused it before the last chunk was asked for.
        self.committed_record()
        self.committed = _Committed(absorbed, rows, entries, result, time.perf_counter() - started)
        return result.inserted

    def committed_record(self, *, final: bool = False) -> None:
        """The last committed transaction's bookkeeping, if not done yet: its absorbed jobs out of
        the job's list and deleted, its metrics recorded. `final`: no job is claimed ahead any
        more, so the list goes too."""
        committed, self.committed = self.committed, None
        if committed is None:
            return
        job = self.job
        try:
            if job is not None and (committed.absorbed or final):
                _absorbed_forget(job, committed.absorbed, whole_list=final)
            worker = job.worker_name if job is not None else None
            _metrics_record(committed.rows, committed.entries, committed.result, committed.duration, worker)
        except RedisError as exc:
            # The rows are committed: failing the job now would only re-run it and count it twice.
            logger.warning("Batch of %d saved, but its metrics were not recorded: %s", committed.entries, exc)


def _absorbed_earlier(job: Job) -> list[Absorbed]:
    """The jobs an earlier run of this job absorbed: it died, or its transaction failed, before
    they were stored."""
    earlier = _ids(job.connection.lrange(ABSORBED_KEY_PREFIX + job.id, 0, -1))
    with job.connection.pipeline(transaction=False) as pipe:
        for job_id in earlier:
            pipe.hget(Job.key_for(job_id), "data")
        found = pipe.execute()
    # A job gone meanwhile (deleted by hand) has nothing left to store.
    return [
        Absorbed(job_id, _job_batch(job, data)) for job_id, data in zip(earlier, found, strict=True) if data
    ]


def _absorb_step(job: Job, *, rows: int, jobs: int) -> list[Absorbed]:
    """More persist jobs for this job to take in, from the head of its queue: the job holds
    `rows` rows of `jobs` absorbed jobs so far. Those that fit under ABSORB_MAX_JOBS and
    ABSORB_MAX_ROWS, and this step's ABSORB_STEP_ROWS (at least one that fits the first two).

    One script (_CLAIM_STEP_LUA) picks them, claims them and returns their data: against
    reading the queue, the candidates' sizes, claiming, then fetching the jobs taken with rq
    (`Job.fetch_many`, every field of each, restored as a Job), one round trip instead of four
    and the data alone decoded."""
    room = ABSORB_MAX_JOBS - jobs
    if room <= 0 or rows >= ABSORB_MAX_ROWS:
        return []
    reply = _claim_step_script()(
        keys=[_queue_key(job), ABSORBED_KEY_PREFIX + job.id],
        args=[ABSORBED_KEY_PREFIX, Job.redis_job_namespace_prefix, room, rows, ABSORB_MAX_ROWS, ABSORB_STEP_ROWS,
              JobStatus.QUEUED.value, JOB_ROWS_META],
        client=job.connection,
    )  # fmt: skip
    return [
        Absorbed(job_id, _job_batch(job, data))
        for job_id, data in zip(_ids(reply[::2]), reply[1::2], strict=True)
    ]


def _absorb_all(job: Job) -> list[Absorbed]:
    """The queued jobs a new transaction takes in (_absorb_step until the caps or the queue stop it)."""
    taken: list[Absorbed] = []
    rows = 0
    while step := _absorb_step(job, rows=rows, jobs=len(taken)):
        taken.extend(step)
        rows += sum(len(other.batch) for other in step)
    return taken


@functools.cache
def _claim_step_script() -> Script:
    """_CLAIM_STEP_LUA, run by its digest (EVALSHA), loaded again should Redis have lost it."""
    return redis_connection().register_script(_CLAIM_STEP_LUA)


def _job_batch(job: Job, data: bytes) -> list[Any]:
    """A persist job's batch from its `data` field, read as rq reads it (Job.restore): a zlib
    stream is decompressed, anything else taken as it is; then (function, instance, args, kwargs)."""
    with contextlib.suppress(zlib.error):
        data = zlib.decompress(data)
    try:
        _, _, args, _ = job.serializer.loads(data)
        batch = args[0]
    except Exception as exc:
        raise DeserializationError(f"an absorbed job's data is not a persist job's: {exc}") from exc
    if not isinstance(batch, list):
        raise DeserializationError(f"an absorbed job's batch is a {type(batch).__name__}, not a list")
    return batch


def _linger_if_worthwhile(job: Job, *, rows: int) -> None:
    """Wait WORKER_LINGER_MS if this job of `rows` rows should let more jobs queue up behind it.
    Before its transaction starts, whose time every row gets as `inserted_at`: rows that arrive
    during the wait must not be stored as inserted before they were received."""
    if settings.WORKER_LINGER_MS <= 0 or rows not in LINGER_ROWS:
        return
    if job.connection.llen(_queue_key(job)) < LINGER_BACKLOG_JOBS:
        time.sleep(settings.WORKER_LINGER_MS / 1000.0)


def _queue_key(job: Job) -> str:
    """The Redis list of the queue `job` came from."""
    return Queue.redis_queue_namespace_prefix + job.origin


def _ids(items: Any) -> list[str]:
    return [item.decode() if isinstance(item, bytes) else str(item) for item in items]


def _absorbed_forget(job: Job, absorbed: list[Absorbed], *, whole_list: bool) -> None:
    """Once their rows are committed: delete the absorbed jobs, and take them out of the job's
    list of them (`whole_list`: delete the list, which holds no other job's id then)."""
    listed = ABSORBED_KEY_PREFIX + job.id
    # One DEL of every key rather than one a job: redis-py packs and parses each command of a
    # pipeline in Python, and a transaction under a stream of single messages absorbs dozens.
    gone = [Job.key_for(other.id) for other in absorbed]
    if whole_list:
        gone.append(listed)
    with job.connection.pipeline() as pipe:
        if gone:
            pipe.delete(*gone)
        if not whole_list:
            for other in absorbed:
                pipe.lrem(listed, 1, other.id)
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
