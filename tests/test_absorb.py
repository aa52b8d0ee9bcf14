"""A persist job takes the persist jobs queued behind it into its own transaction.

Real PostgreSQL and Redis; jobs run in-process on rq's SimpleWorker in burst mode with the JSON
serializer, as the real worker runs them.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_lib
from django.db import OperationalError
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from messages_app import jobs, services
from messages_app.models import Message
from messages_app.services import BatchRow, batch_enqueue
from telemetry import metrics

pytestmark = pytest.mark.django_db(transaction=True)


def _rows(count: int) -> list[BatchRow]:
    now = time.time()
    return [BatchRow(str(uuid.uuid4()), 1 + index, 1, f"message {index}", now) for index in range(count)]


def _work() -> None:
    queue = services.ingest_queue()
    SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True)


@pytest.fixture
def jobs_run(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each persist job the worker runs (of the job itself, not what it absorbs)."""
    sizes: list[int] = []
    real = jobs.persist_batch

    def persist_batch(batch: list[Any]) -> int:
        sizes.append(len(batch))
        return real(batch)

    monkeypatch.setattr(jobs, "persist_batch", persist_batch)
    return sizes


def _batch_sizes(redis_client: redis_lib.Redis) -> list[int]:
    return [json.loads(entry)["size"] for entry in redis_client.lrange(metrics.RECENT_BATCHES, 0, -1)]


def _leftovers(redis_client: redis_lib.Redis) -> list[bytes | str]:
    return [*redis_client.keys("rq:job:*"), *redis_client.keys(jobs.ABSORBED_KEY_PREFIX + "*")]


def test_a_backlog_of_small_jobs_is_stored_in_one_transaction(redis_client: redis_lib.Redis) -> None:
    batches = [_rows(1) for _ in range(40)]
    for batch in batches:
        batch_enqueue(batch=batch)
    _work()
    assert {str(pk) for pk in Message.objects.values_list("id", flat=True)} == {b[0].id for b in batches}
    assert _batch_sizes(redis_client) == [40], "the first job took the 39 behind it"
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 0
    assert int(redis_client.get(metrics.TOTAL_MESSAGES) or 0) == 40
    assert _leftovers(redis_client) == [], "absorbed jobs and their note are deleted after the commit"


def test_a_transaction_takes_no_more_than_the_row_cap(redis_client: redis_lib.Redis) -> None:
    size = jobs.ABSORB_MAX_ROWS // 2 - 1
    for _ in range(5):
        batch_enqueue(batch=_rows(size))
    _work()
    assert Message.objects.count() == 5 * size
    sizes = _batch_sizes(redis_client)
    assert sum(sizes) == 5 * size
    assert max(sizes) <= jobs.ABSORB_MAX_ROWS
    assert len(sizes) == 3, f"two jobs absorbed one each, the last ran alone: {sizes}"


def test_jobs_behind_are_claimed_a_step_at_a_time_into_one_transaction(
    redis_client: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step's rows go into the COPY before the next step is claimed (PostgreSQL takes them in
    meanwhile); the transaction, and so the commit, stays one."""
    steps: list[int] = []
    real_step = jobs._absorb_step

    def step(job: Job, *, rows: int, jobs: int) -> list[jobs.Absorbed]:
        taken = real_step(job, rows=rows, jobs=jobs)
        steps.append(sum(len(other.batch) for other in taken))
        return taken

    monkeypatch.setattr(jobs, "_absorb_step", step)
    size = jobs.ABSORB_STEP_ROWS // 4
    for _ in range(7):
        batch_enqueue(batch=_rows(size))
    _work()
    assert Message.objects.count() == 7 * size
    # Four jobs' rows a step, then the two left, then none; then none ahead for a next transaction
    # (a transaction of DRAIN_FROM_ROWS or more looks for one).
    assert 7 * size >= jobs.DRAIN_FROM_ROWS
    assert steps == [4 * size, 2 * size, 0, 0]
    assert _batch_sizes(redis_client) == [7 * size]
    assert _leftovers(redis_client) == []


@pytest.fixture
def small_caps(monkeypatch: pytest.MonkeyPatch) -> int:
    """Transactions of at most 2,000 rows, claimed 500 at a time: a backlog of several
    transactions in a few thousand rows. Returns the row cap."""
    monkeypatch.setattr(jobs, "ABSORB_MAX_ROWS", 2_000)
    monkeypatch.setattr(jobs, "ABSORB_STEP_ROWS", 500)
    monkeypatch.setattr(jobs, "DRAIN_FROM_ROWS", 500)
    return 2_000


def test_a_backlog_beyond_one_transaction_is_drained_by_the_job_that_finds_it(
    redis_client: redis_lib.Redis, small_caps: int, jobs_run: list[int]
) -> None:
    """Each transaction's successor is claimed while its COPY ends: one job, three transactions."""
    batches = [_rows(100) for _ in range(45)]
    for batch in batches:
        batch_enqueue(batch=batch)
    _work()
    assert len(jobs_run) == 1
    assert {str(pk) for pk in Message.objects.values_list("id", flat=True)} == {
        r.id for b in batches for r in b
    }
    assert _batch_sizes(redis_client) == [500, 2_000, 2_000], "newest first"
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 0
    assert int(redis_client.get(metrics.TOTAL_MESSAGES) or 0) == 4_500
    assert _leftovers(redis_client) == []


def test_a_job_drains_no_longer_than_drain_max_s(
    redis_client: redis_lib.Redis, small_caps: int, monkeypatch: pytest.MonkeyPatch, jobs_run: list[int]
) -> None:
    monkeypatch.setattr(jobs, "DRAIN_MAX_S", 0.0)
    for _ in range(45):
        batch_enqueue(batch=_rows(100))
    _work()
    assert len(jobs_run) == 3, "a transaction each: the first job took 19 jobs in, the second 19, the third 4"
    assert Message.objects.count() == 4_500
    assert _batch_sizes(redis_client) == [500, 2_000, 2_000]
    assert _leftovers(redis_client) == []


def test_a_job_drains_no_longer_than_a_quarter_of_its_timeout() -> None:
    job = Job.create(
        services.PERSIST_JOB, args=([],), timeout=1, connection=services.ingest_queue().connection
    )
    assert jobs._drain_for_s(job) == 0.25
    job.timeout = 3_600
    assert jobs._drain_for_s(job) == jobs.DRAIN_MAX_S
    assert jobs._drain_for_s(None) == jobs.DRAIN_MAX_S


def test_jobs_claimed_ahead_of_a_transaction_that_fails_are_stored_by_the_rerun(
    redis_client: redis_lib.Redis, small_caps: int, monkeypatch: pytest.MonkeyPatch, jobs_run: list[int]
) -> None:
    """The first transaction commits, having claimed the second's jobs ahead; PostgreSQL goes
    away before the second commits. The first's jobs are done with; the second's wait in the
    job's absorbed list for its rerun, which stores them."""
    queue: Queue = services.ingest_queue()
    batches = [_rows(100) for _ in range(30)]
    for batch in batches:
        batch_enqueue(batch=batch)
    head_id = queue.get_job_ids()[0]
    real_persist = services.messages_persist_streamed
    calls: list[int] = []

    def persist(chunks: Any, *, job_id: str = "") -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise OperationalError("PostgreSQL went away")
        return real_persist(chunks, job_id=job_id)

    monkeypatch.setattr(jobs, "messages_persist_streamed", persist)
    _work()
    assert len(jobs_run) == 1
    assert Message.objects.count() == 2_000
    assert _batch_sizes(redis_client) == [2_000], "the first transaction's metrics are recorded"
    listed = jobs._ids(redis_client.lrange(jobs.ABSORBED_KEY_PREFIX + head_id, 0, -1))
    assert len(listed) == 10, "the second transaction's jobs, claimed ahead"
    assert all(redis_client.exists(Job.key_for(job_id)) for job_id in listed)
    assert len(redis_client.keys("rq:job:*")) == 11, "the first's 19 absorbed jobs are deleted"

    monkeypatch.setattr(jobs, "messages_persist_streamed", real_persist)
    head = Job.fetch(head_id, connection=queue.connection, serializer=JSONSerializer)
    queue.enqueue_job(head)  # its retry is due
    _work()
    assert len(jobs_run) == 2
    assert {str(pk) for pk in Message.objects.values_list("id", flat=True)} == {
        r.id for b in batches for r in b
    }
    # The rerun: its own 100 rows again (stored by the first transaction) and the 10 jobs'.
    assert _batch_sizes(redis_client) == [1_100, 2_000]
    assert _leftovers(redis_client) == []


def test_a_job_that_is_not_a_plain_persist_keeps_its_place(redis_client: redis_lib.Redis) -> None:
    queue = services.ingest_queue()
    batch_enqueue(batch=_rows(1))
    # A persist job enqueued by hand with a keyword argument: not absorbed, it runs on its own.
    by_hand = _rows(2)
    queue.enqueue(services.PERSIST_JOB, batch=by_hand, result_ttl=0)
    batch_enqueue(batch=_rows(1))
    _work()
    assert Message.objects.count() == 4
    assert sorted(_batch_sizes(redis_client)) == [2, 2], "1 + 1 absorbed; the hand-made job alone"


@pytest.mark.parametrize(
    "meta", [b"\x80 not JSON", b'{"rows": 1.5}', b'{"rows": -1}', b'{"rows": true}', b'{"rows": "1"}', b"[1]"]
)
def test_a_queued_job_whose_meta_gives_no_row_count_keeps_its_place(
    redis_client: redis_lib.Redis, meta: bytes
) -> None:
    queue: Queue = services.ingest_queue()
    for _ in range(3):
        batch_enqueue(batch=_rows(2))
    head_id, odd_id, last_id = queue.get_job_ids()
    redis_client.hset(Job.key_for(odd_id), "meta", meta)
    head = Job.fetch(head_id, connection=queue.connection, serializer=JSONSerializer)
    queue.remove(head)  # as the worker's dequeue does
    taken = jobs._absorb_step(head, rows=2, jobs=0)
    assert [other.id for other in taken] == [last_id]
    assert [len(other.batch) for other in taken] == [2]
    assert queue.get_job_ids() == [odd_id]
    assert redis_client.lrange(jobs.ABSORBED_KEY_PREFIX + head_id, 0, -1) == [last_id.encode()]


def test_jobs_absorbed_by_a_run_that_died_are_stored_by_its_rerun(redis_client: redis_lib.Redis) -> None:
    """A worker killed between taking jobs in and committing: the rerun of its job stores them."""
    queue: Queue = services.ingest_queue()
    first, *behind = [_rows(3) for _ in range(4)]
    for batch in (first, *behind):
        batch_enqueue(batch=batch)
    head = Job.fetch(queue.get_job_ids()[0], connection=queue.connection, serializer=JSONSerializer)
    queue.remove(head)  # as the worker's dequeue does
    taken = jobs._absorb_step(head, rows=len(first), jobs=0)
    assert len(taken) == 3
    assert queue.count == 0, "the absorbed jobs left the queue"
    assert Message.objects.count() == 0  # ... and the worker died here, before its transaction.

    queue.enqueue_job(head)  # the dead worker's job back on the queue (IngestWorker's clean-up)
    _work()
    expected = {row.id for batch in (first, *behind) for row in batch}
    assert {str(pk) for pk in Message.objects.values_list("id", flat=True)} == expected
    assert _batch_sizes(redis_client) == [12]
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 0
    assert _leftovers(redis_client) == []


def test_a_rerun_waiting_in_the_queue_is_not_absorbed_and_brings_its_own(
    redis_client: redis_lib.Redis,
) -> None:
    """A job that absorbed others, failed, and waits for its retry keeps them: another job that
    took it in would store its rows but not those of the jobs it had absorbed."""
    queue: Queue = services.ingest_queue()
    head, failed, behind = _rows(1), _rows(1), _rows(1)
    for batch in (head, failed, behind):
        batch_enqueue(batch=batch)
    head_id, failed_id, _ = queue.get_job_ids()
    head_job, failed_job = Job.fetch_many([head_id, failed_id], queue.connection, serializer=JSONSerializer)
    assert head_job is not None and failed_job is not None
    queue.remove(head_job)  # out of the way for the moment
    queue.remove(failed_job)  # dequeued by a worker
    assert (
        len(jobs._absorb_step(failed_job, rows=1, jobs=0)) == 1
    )  # took `behind`, then its transaction failed
    queue.enqueue_job(head_job)
    queue.enqueue_job(failed_job)  # its retry is due: back in the queue, behind `head`
    assert queue.get_job_ids() == [head_id, failed_id]

    _work()
    expected = {row.id for batch in (head, failed, behind) for row in batch}
    assert {str(pk) for pk in Message.objects.values_list("id", flat=True)} == expected
    assert sorted(_batch_sizes(redis_client)) == [1, 2]
    assert _leftovers(redis_client) == []


def _lingers_seen(
    monkeypatch: pytest.MonkeyPatch, during: Callable[[], list[BatchRow]] | None = None
) -> list[float]:
    """The worker's lingers (jobs.py's calls of time.sleep), each enqueueing the rows `during`
    makes then as a job instead of sleeping, as if they arrived meanwhile; anyone else's sleep
    sleeps."""
    seen: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if sys._getframe(1).f_globals["__name__"] != jobs.__name__:
            real_sleep(seconds)
            return
        seen.append(seconds)
        if during is not None:
            batch_enqueue(batch=during())

    monkeypatch.setattr(time, "sleep", sleep)
    return seen


@pytest.mark.parametrize("jobs_queued", [4, 1], ids=["small-jobs-behind", "alone"])
def test_a_small_job_waits_for_more_once(
    redis_client: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch, settings: Any, jobs_queued: int
) -> None:
    """Also alone: a worker that keeps up with a stream of small jobs finds none behind each."""
    settings.WORKER_LINGER_MS = 20
    batches = [_rows(3) for _ in range(jobs_queued)]
    for batch in batches:
        batch_enqueue(batch=batch)
    lingers = _lingers_seen(monkeypatch, during=lambda: _rows(2))
    _work()
    assert lingers == [0.02]
    rows = 3 * jobs_queued + 2
    assert _batch_sizes(redis_client) == [rows], "one transaction, with the job that came during the wait"
    stored = list(Message.objects.values_list("created_at", "inserted_at"))
    assert len(stored) == rows
    assert all(inserted >= created for created, inserted in stored), "the transaction starts after the wait"


@pytest.mark.parametrize(
    ("jobs_queued", "rows_each", "linger_ms"),
    [
        (17, 3, 20),  # a backlog: enough to take in already
        (3, jobs.LINGER_ROWS.stop, 20),  # jobs of a batch request: big enough
        (3, 1, 20),  # one-row jobs: their web processes are not busy
        (3, 3, 0),  # switched off
    ],
)
def test_a_job_goes_at_once_when_waiting_would_not_pay(
    redis_client: redis_lib.Redis,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    jobs_queued: int,
    rows_each: int,
    linger_ms: int,
) -> None:
    settings.WORKER_LINGER_MS = linger_ms
    for _ in range(jobs_queued):
        batch_enqueue(batch=_rows(rows_each))
    lingers = _lingers_seen(monkeypatch)
    _work()
    assert lingers == []
    assert Message.objects.count() == jobs_queued * rows_each
