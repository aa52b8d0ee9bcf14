"""The persist job written in one Redis command is the job rq's own enqueue writes.

Real Redis; the jobs are read back with rq's Job.fetch and run by rq's SimpleWorker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from typing import Any

import pytest
import redis as redis_lib
from django.test import override_settings
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from messages_app import job_writer, services
from messages_app.job_writer import PER_JOB_FIELDS, QUEUES_KEY, JobWriter
from messages_app.models import Message
from messages_app.services import BatchRow, batch_enqueue
from telemetry import metrics
from telemetry.connection import ReplicasBehind, redis_async_client

# The two ways the API enqueues: the blocking client in a thread (with INGEST_REDIS_MIN_REPLICAS)
# and an asyncio client on the event loop (the default).
ENQUEUE_PATHS = ["blocking", "asyncio"]


def _rows(count: int) -> list[BatchRow]:
    now = time.time()
    return [BatchRow(str(uuid.uuid4()), 1 + index, 7, f"message {index} é", now) for index in range(count)]


def _writer() -> JobWriter:
    return services._persist_job_writer()


async def _enqueue(path: str, batch: list[BatchRow]) -> services.Enqueued:
    if path == "blocking":
        return batch_enqueue(batch=batch)
    client = redis_async_client()
    try:
        return await services.batch_enqueue_async(client, batch=batch)
    finally:
        await client.aclose()


@pytest.mark.parametrize("path", ENQUEUE_PATHS)
async def test_the_hash_is_rqs_own_field_for_field(redis_client: redis_lib.Redis, path: str) -> None:
    batch = _rows(3)
    enqueued = await _enqueue(path, batch)
    (job,) = services.ingest_queue().get_jobs()
    written: dict[bytes, bytes] = redis_client.hgetall(job.key)  # type: ignore[assignment]

    meta = {services.JOB_ROWS_META: 3}
    expected = _writer().rq_equivalent(batch, meta=meta, description="persist a batch of 3 messages")
    rq_own = expected.to_dict()
    assert {key.decode() for key in written} == set(rq_own), "the same fields, no more, no fewer"
    for key, value in rq_own.items():
        if key in ("created_at", "enqueued_at", "data"):
            continue
        encoded = (
            value
            if isinstance(value, bytes)
            else value.encode()
            if isinstance(value, str)
            else str(value).encode()
        )
        assert written[key.encode()] == encoded, key
    # The data is the same call: a small job's as it is (rq takes data that is not zlib's so).
    assert written[b"data"] == zlib.decompress(rq_own["data"])
    assert written[b"created_at"] == written[b"enqueued_at"]
    assert enqueued.backlog == 3
    assert enqueued.jobs_waiting == 1
    assert redis_client.sismember(QUEUES_KEY, services.ingest_queue().key)


@pytest.mark.parametrize("path", ENQUEUE_PATHS)
async def test_rq_reads_the_job_back_with_its_options(redis_client: redis_lib.Redis, path: str) -> None:
    batch = _rows(2)
    await _enqueue(path, batch)
    (job,) = services.ingest_queue().get_jobs()
    fetched = Job.fetch(job.id, connection=redis_client, serializer=JSONSerializer)
    assert fetched.func_name == services.PERSIST_JOB
    assert list(fetched.args) == [[list(row) for row in batch]]
    assert fetched.meta == {services.JOB_ROWS_META: 2}
    assert fetched.get_status(refresh=False) == JobStatus.QUEUED
    assert fetched.origin == services.INGEST_QUEUE
    assert fetched.retries_left == services.PERSIST_RETRY.max
    assert fetched.retry_intervals == services.PERSIST_RETRY.intervals
    assert (fetched.result_ttl, fetched.failure_ttl) == (0, 7 * 24 * 3600)
    assert fetched.timeout is not None and fetched.timeout > 0
    assert fetched.description == "persist a batch of 2 messages"
    assert fetched.enqueued_at is not None
    assert abs(fetched.enqueued_at.timestamp() - time.time()) < 60


@pytest.mark.parametrize("path", ENQUEUE_PATHS)
async def test_a_large_jobs_data_is_compressed_and_rq_reads_it_back(
    redis_client: redis_lib.Redis, path: str
) -> None:
    batch = _rows(200)
    await _enqueue(path, batch)
    (job,) = services.ingest_queue().get_jobs()
    data: bytes = redis_client.hget(job.key, "data")  # type: ignore[assignment]
    meta = {services.JOB_ROWS_META: 200}
    expected = _writer().rq_equivalent(batch, meta=meta, description="persist a batch of 200 messages")
    # Compressed at zlib's fastest level, not rq's default: another stream, the same call.
    assert len(data) < len(zlib.decompress(data)) / 2
    assert zlib.decompress(data) == zlib.decompress(expected.to_dict()["data"])
    fetched = Job.fetch(job.id, connection=redis_client, serializer=JSONSerializer)
    assert list(fetched.args) == [[list(row) for row in batch]]


@pytest.mark.parametrize("path", ENQUEUE_PATHS)
async def test_the_counters_move_with_the_job(redis_client: redis_lib.Redis, path: str) -> None:
    first = await _enqueue(path, _rows(5))
    second = await _enqueue(path, _rows(2))
    assert (first.backlog, first.jobs_waiting) == (5, 1)
    assert (second.backlog, second.jobs_waiting) == (7, 2)
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 7
    assert int(redis_client.get(metrics.TOTAL_ACCEPTED) or 0) == 7
    seconds = redis_client.keys(metrics.SECOND_KEY_PREFIX + "*")
    assert sum(int(redis_client.hget(key, "accepted") or 0) for key in seconds) == 7
    assert all(0 < redis_client.ttl(key) <= metrics.SECOND_TTL_S for key in seconds)


@pytest.mark.django_db(transaction=True)
def test_an_rq_worker_runs_the_job(redis_client: redis_lib.Redis) -> None:
    batch = _rows(4)
    batch_enqueue(batch=batch)
    queue = services.ingest_queue()
    SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True)
    assert {str(pk) for pk in Message.objects.values_list("id", flat=True)} == {row.id for row in batch}
    assert queue.count == 0
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 0


@pytest.mark.parametrize("path", ENQUEUE_PATHS)
async def test_a_redis_that_forgot_the_script_is_given_it_again(
    redis_client: redis_lib.Redis, path: str
) -> None:
    """After a restart without persistence, or SCRIPT FLUSH, Redis no longer knows the script's
    sha: the enqueue loads it again instead of failing."""
    await _enqueue(path, _rows(1))
    redis_client.script_flush()
    enqueued = await _enqueue(path, _rows(1))
    assert (enqueued.backlog, enqueued.jobs_waiting) == (2, 2)


def test_with_replicas_required_a_write_no_replica_confirms_is_refused(redis_client: redis_lib.Redis) -> None:
    """The test Redis has no replica: the job goes in, and the caller hears it is not safe yet."""
    with (
        override_settings(INGEST_REDIS_MIN_REPLICAS=1, INGEST_REDIS_REPLICA_TIMEOUT_MS=50),
        pytest.raises(ReplicasBehind, match="0 of 1 replicas"),
    ):
        batch_enqueue(batch=_rows(1))
    assert services.ingest_queue().count == 1


def test_the_per_job_fields_are_the_only_ones_sent_each_time() -> None:
    """The rest are baked into the script: a change of rq's fields shows up here first."""
    static = set(_writer().template.to_dict()) - set(PER_JOB_FIELDS)
    assert static, "rq's job has fields that do not change per job"
    assert "status" in static
    assert "origin" in static


async def test_the_asyncio_path_keeps_its_connection_for_the_next_write(
    redis_client: redis_lib.Redis,
) -> None:
    """One connection, taken once from the client's pool, carries write after write."""
    from django.conf import settings

    name = f"writer-{uuid.uuid4().hex}"  # each connection of the client names itself so
    client = AsyncRedis.from_url(settings.REDIS_URL, client_name=name)
    try:
        for _ in range(3):
            await services.batch_enqueue_async(client, batch=_rows(1))
        assert [entry["name"] for entry in redis_client.client_list()].count(name) == 1
    finally:
        await client.aclose()
    assert services.ingest_queue().count == 3


async def test_a_kept_connection_redis_closed_is_reopened_for_the_write(
    redis_client: redis_lib.Redis,
) -> None:
    """Redis dropped the kept connection (a restart, a timeout, CLIENT KILL): the next write
    reopens it and goes in, where redis-py's own command would have failed (its pool does not
    check the connections it lends while its maintenance notifications are on)."""
    client = redis_async_client()
    try:
        await services.batch_enqueue_async(client, batch=_rows(1))
        killed = redis_client.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        # Redis closes a killed connection just after answering the kill; the client's event
        # loop learns it when it next reads the socket.
        await asyncio.sleep(0.2)
        enqueued = await services.batch_enqueue_async(client, batch=_rows(2))
    finally:
        await client.aclose()
    assert (enqueued.backlog, enqueued.jobs_waiting) == (3, 2)


async def test_concurrent_writes_each_get_their_own_reply(redis_client: redis_lib.Redis) -> None:
    """Writes in flight at once each take a connection: no reply goes to the wrong caller."""
    client = redis_async_client()
    try:
        written = await asyncio.gather(
            *(services.batch_enqueue_async(client, batch=_rows(size)) for size in (1, 2, 3, 4, 5))
        )
    finally:
        await client.aclose()
    # Each reply is the backlog right after its own write: five different totals, and the last
    # one is everything.
    assert len({enqueued.backlog for enqueued in written}) == 5
    assert max(enqueued.backlog for enqueued in written) == 15
    assert sorted(enqueued.jobs_waiting for enqueued in written) == [1, 2, 3, 4, 5]


async def test_a_write_to_an_unreachable_redis_raises_the_error_the_api_answers_503_to() -> None:

    from ingestor_site.embedded import free_port

    unreachable = AsyncRedis(port=free_port(), socket_connect_timeout=1, socket_timeout=1)
    try:
        with pytest.raises(RedisConnectionError):
            await services.batch_enqueue_async(unreachable, batch=_rows(1))
    finally:
        await unreachable.aclose()


class _PollRecorder:
    """job_writer._reply_wait_spinning, recording what each call returned."""

    def __init__(self) -> None:
        self.outcomes: list[bool] = []
        self._real = job_writer._reply_wait_spinning

    async def __call__(self, connection: Any, limit_s: float) -> bool:
        outcome = await self._real(connection, limit_s)
        self.outcomes.append(outcome)
        return outcome


async def test_a_write_asked_to_poll_finds_its_reply_while_polling(
    redis_client: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _PollRecorder()
    monkeypatch.setattr(job_writer, "_reply_wait_spinning", recorder)
    client = redis_async_client()
    try:
        # A second of polling at most: a Redis this close answers long before.
        enqueued = await services.batch_enqueue_async(client, batch=_rows(2), reply_spin_s=1.0)
        assert recorder.outcomes == [True]
        await services.batch_enqueue_async(client, batch=_rows(1))  # not asked: it does not poll
    finally:
        await client.aclose()
    assert recorder.outcomes == [True]
    assert (enqueued.backlog, enqueued.jobs_waiting) == (2, 1)
    assert services.ingest_queue().count == 2


async def test_polling_gives_up_at_its_limit_when_no_reply_is_coming(redis_client: redis_lib.Redis) -> None:
    """With nothing sent, nothing comes: the poll returns at its limit, and the caller then
    sleeps on the read as without it (where the socket timeout still applies)."""
    client = redis_async_client()
    connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        assert await job_writer._reply_wait_spinning(connection, 0.05) is False
        await connection.send_command("PING")
        assert await job_writer._reply_wait_spinning(connection, 1.0) is True
        assert await connection.read_response() in (b"PONG", "PONG")
        await connection.disconnect()
        with pytest.raises(RedisConnectionError):  # closed: an error, as the read would raise
            await job_writer._reply_wait_spinning(connection, 1.0)
    finally:
        await client.connection_pool.release(connection)
        await client.aclose()
