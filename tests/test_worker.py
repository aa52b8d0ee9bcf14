"""IngestWorker puts due retries back on the queue itself, on its maintenance tick, and only one
worker at a time does it (rq's scheduler lock), so no scheduler process is needed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis as redis_lib
from rq import Queue
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from messages_app.partitions import MAINTENANCE_DUE_KEY
from messages_app.worker import IngestWorker

JOB = "messages_app.jobs.persist_batch"


@pytest.fixture
def queue(redis_client: redis_lib.Redis) -> Iterator[Queue]:
    yield Queue("worker-check", connection=redis_client, serializer=JSONSerializer)


def _worker(queue: Queue) -> IngestWorker:
    return IngestWorker([queue], connection=queue.connection, serializer=JSONSerializer)


def test_a_due_retry_goes_back_on_its_queue_and_a_later_one_waits(queue: Queue) -> None:
    now = datetime.now(UTC)
    due = queue.enqueue_at(now - timedelta(seconds=1), JOB, [])
    later = queue.enqueue_at(now + timedelta(hours=1), JOB, [])
    assert queue.count == 0

    _worker(queue).scheduled_enqueue()

    assert queue.job_ids == [due.id]
    assert queue.scheduled_job_registry.get_job_ids() == [later.id]


def test_the_scheduler_lock_is_held_only_while_moving_jobs(
    queue: Queue, redis_client: redis_lib.Redis
) -> None:
    queue.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), JOB, [])

    _worker(queue).scheduled_enqueue()

    assert queue.count == 1
    assert not redis_client.exists(RQScheduler.get_locking_key(queue.name))


def test_a_worker_leaves_due_retries_to_whoever_holds_the_scheduler_lock(
    queue: Queue, redis_client: redis_lib.Redis
) -> None:
    due = queue.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), JOB, [])
    lock = RQScheduler.get_locking_key(queue.name)
    redis_client.set(lock, "another-worker", ex=60)

    _worker(queue).scheduled_enqueue()

    assert queue.count == 0
    assert queue.scheduled_job_registry.get_job_ids() == [due.id]
    assert redis_client.get(lock) == b"another-worker"


def test_the_maintenance_tick_moves_due_retries(queue: Queue, redis_client: redis_lib.Redis) -> None:
    # Partition maintenance, the tick's other duty, is done for now (it needs the database).
    redis_client.set(MAINTENANCE_DUE_KEY, "done", ex=60)
    due = queue.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), JOB, [])

    _worker(queue).run_maintenance_tasks()

    assert queue.job_ids == [due.id]


@pytest.fixture
def registered(queue: Queue) -> Iterator[IngestWorker]:
    """A worker registered in Redis, as `rqworker` starts one (its key, its state), gone after."""
    worker = _worker(queue)
    worker.register_birth()  # type: ignore[no-untyped-call]  # rq leaves it unannotated
    yield worker
    worker.register_death()  # type: ignore[no-untyped-call]  # rq leaves it unannotated


def test_between_jobs_the_worker_beats_at_most_once_a_second_but_a_jobs_own_beat_always_goes(
    registered: IngestWorker, redis_client: redis_lib.Redis
) -> None:
    worker = registered
    worker.heartbeat()
    redis_client.expire(worker.key, 7)  # a mark: the next beat would set the TTL again
    worker.heartbeat()
    assert redis_client.ttl(worker.key) <= 7, "a beat within the second went to Redis"

    # A job's preparation beats through its pipeline, with the job's TTL: always sent.
    with redis_client.pipeline() as pipe:
        worker.heartbeat(25, pipeline=pipe)
        pipe.execute()
    assert 7 < redis_client.ttl(worker.key) <= 25

    assert worker.last_heartbeat is not None
    worker.last_heartbeat -= timedelta(seconds=1.5)
    worker.heartbeat()
    assert redis_client.ttl(worker.key) > 25, "a second later, the beat went"


def test_the_worker_sets_a_state_it_already_holds_only_once(
    registered: IngestWorker, redis_client: redis_lib.Redis
) -> None:
    worker = registered
    worker.set_state("idle")
    assert redis_client.hget(worker.key, "state") == b"idle"
    redis_client.hset(worker.key, "state", "mark")
    worker.set_state("idle")
    assert redis_client.hget(worker.key, "state") == b"mark", "the same state again was sent"
    worker.set_state("busy")
    assert redis_client.hget(worker.key, "state") == b"busy"
