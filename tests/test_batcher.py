"""The group-commit batcher against a real Redis: many requests, one rq job, one round trip."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis as redis_lib
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue
from rq.serializers import JSONSerializer

from ingestor_site.embedded import free_port
from messages_app import batcher as batcher_module
from messages_app import services
from messages_app.batcher import Batcher, Overloaded
from telemetry.connection import redis_async_client

# A Batcher waits at most this long in these tests; far past any linger they configure.
WAIT_S = 10


def _rows(count: int, channel_id: int = 1) -> list[services.BatchRow]:
    return [
        services.BatchRow(str(uuid.uuid4()), 1, channel_id, f"message {index}", 1_700_000_000.0)
        for index in range(count)
    ]


MakeBatcher = Callable[..., Batcher]


@pytest.fixture(params=["thread", "loop"])
async def make_batcher(request: pytest.FixtureRequest) -> AsyncIterator[MakeBatcher]:
    """Batchers with either enqueue: the blocking client in the batcher's threads (as with
    INGEST_REDIS_MIN_REPLICAS) or an asyncio client on the test's loop (the default)."""
    clients: list[AsyncRedis] = []

    def make(*, size: int = 500, linger_s: float = 0.05, max_backlog: int = 1_000_000) -> Batcher:
        if request.param == "thread":
            return Batcher(
                enqueue=services.batch_enqueue, size=size, linger_s=linger_s, max_backlog=max_backlog
            )
        clients.append(client := redis_async_client())
        return Batcher(enqueue_async=functools.partial(services.batch_enqueue_async, client),
                       size=size, linger_s=linger_s, max_backlog=max_backlog)  # fmt: skip

    yield make
    for client in clients:
        await client.aclose()


def _jobs() -> list[list[services.BatchRow]]:
    """The batch of each job waiting in the `ingest` queue, as the worker reads it, in BatchRows."""
    batches = []
    for job in services.ingest_queue().get_jobs():
        rows, malformed = services.rows_decode(job.args[0])
        assert malformed == []
        batches.append([services.BatchRow._make(row) for row in rows])
    return batches


async def test_flushes_as_soon_as_it_holds_batch_size_rows(
    redis_client: redis_lib.Redis, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(size=3, linger_s=60)
    submits = [batcher.submit(_rows(1)) for _ in range(3)]
    # With a minute of linger, only the size trigger can answer these in time.
    await asyncio.wait_for(asyncio.gather(*submits), timeout=WAIT_S)
    assert [len(batch) for batch in _jobs()] == [3]


async def test_a_submit_larger_than_batch_size_stays_one_job(
    redis_client: redis_lib.Redis, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(size=3, linger_s=60)
    rows = _rows(7)
    await asyncio.wait_for(batcher.submit(rows), timeout=WAIT_S)
    assert _jobs() == [rows]


async def test_a_lone_message_goes_at_once_without_waiting_for_the_linger(
    redis_client: redis_lib.Redis,
    make_batcher: MakeBatcher,
) -> None:
    batcher = make_batcher(size=500, linger_s=60)
    rows = _rows(2)
    # With a minute of linger, only "nothing in flight: go now" can answer this in time.
    await asyncio.wait_for(batcher.submit(rows), timeout=WAIT_S)
    assert _jobs() == [rows]


async def _rows_during_a_held_flush_go_together(batcher: Batcher, release: Callable[[], None]) -> None:
    """One row, then four while its flush is held out (by the batcher's enqueue) until `release`."""
    first = asyncio.ensure_future(batcher.submit(_rows(1, channel_id=1)))
    await asyncio.sleep(0.05)
    later = [asyncio.ensure_future(batcher.submit(_rows(1, channel_id=index))) for index in range(2, 6)]
    await asyncio.sleep(0.05)
    release()
    # With a minute of linger, only the first flush's return can send the others in time.
    await asyncio.wait_for(asyncio.gather(first, *later), timeout=WAIT_S)
    assert [[row[2] for row in job] for job in _jobs()] == [[1], [2, 3, 4, 5]]


async def test_rows_arriving_during_a_flush_go_together_when_it_returns(
    redis_client: redis_lib.Redis,
) -> None:
    release = threading.Event()

    def held_enqueue(*, batch: list[Any]) -> services.Enqueued:
        release.wait(WAIT_S)  # the first flush stays out until the others have arrived
        return services.batch_enqueue(batch=batch)

    batcher = Batcher(enqueue=held_enqueue, size=500, linger_s=60, max_backlog=1_000_000)
    await _rows_during_a_held_flush_go_together(batcher, release.set)


async def test_rows_arriving_during_an_asyncio_flush_go_together_when_it_returns(
    redis_client: redis_lib.Redis,
) -> None:
    release = asyncio.Event()
    client = redis_async_client()

    async def held_enqueue(*, batch: list[Any], reply_spin_s: float) -> services.Enqueued:
        await release.wait()  # the first flush stays out until the others have arrived
        return await services.batch_enqueue_async(client, batch=batch, reply_spin_s=reply_spin_s)

    batcher = Batcher(enqueue_async=held_enqueue, size=500, linger_s=60, max_backlog=1_000_000)
    try:
        await _rows_during_a_held_flush_go_together(batcher, release.set)
    finally:
        await client.aclose()


def test_a_batcher_takes_exactly_one_enqueue() -> None:
    with pytest.raises(TypeError):
        Batcher(size=1, linger_s=1, max_backlog=1)
    with pytest.raises(TypeError):
        Batcher(enqueue=services.batch_enqueue, enqueue_async=services.batch_enqueue_async,
                size=1, linger_s=1, max_backlog=1)  # fmt: skip


async def test_many_concurrent_submits_share_one_job(
    redis_client: redis_lib.Redis, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(size=500, linger_s=1.0)
    submits = [batcher.submit(_rows(1, channel_id=index + 1)) for index in range(200)]
    await asyncio.wait_for(asyncio.gather(*submits), timeout=WAIT_S)
    jobs = _jobs()
    assert len(jobs) == 1
    assert [row[2] for row in jobs[0]] == list(range(1, 201))
    assert int(redis_client.get("queue_length") or 0) == 200
    assert int(redis_client.get("total_accepted") or 0) == 200


async def test_consecutive_batches_become_separate_jobs(
    redis_client: redis_lib.Redis, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(size=500, linger_s=0.01)
    first, second = _rows(2), _rows(3)
    await asyncio.wait_for(batcher.submit(first), timeout=WAIT_S)
    await asyncio.wait_for(batcher.submit(second), timeout=WAIT_S)
    assert _jobs() == [first, second]


async def test_refuses_with_overloaded_when_the_backlog_reaches_the_maximum(
    redis_client: redis_lib.Redis,
    monkeypatch: pytest.MonkeyPatch,
    make_batcher: MakeBatcher,
) -> None:
    monkeypatch.setattr(batcher_module, "_BACKLOG_REFRESH_S", 0.0)
    redis_client.set("queue_length", 10)
    batcher = make_batcher(max_backlog=5, linger_s=0.01)
    # The batcher learns the backlog from its own enqueue's reply (10 + 1)...
    await asyncio.wait_for(batcher.submit(_rows(1)), timeout=WAIT_S)
    assert batcher.backlog == 11
    # ...and refuses the next message, re-reading Redis first, without enqueueing it.
    with pytest.raises(Overloaded):
        await asyncio.wait_for(batcher.submit(_rows(1)), timeout=WAIT_S)
    assert len(_jobs()) == 1
    # Workers drained the queue: the next refresh lets messages in again.
    redis_client.set("queue_length", 0)
    await asyncio.wait_for(batcher.submit(_rows(1)), timeout=WAIT_S)
    assert len(_jobs()) == 2


async def test_a_backlog_exactly_at_the_maximum_is_refused(
    redis_client: redis_lib.Redis,
    monkeypatch: pytest.MonkeyPatch,
    make_batcher: MakeBatcher,
) -> None:
    monkeypatch.setattr(batcher_module, "_BACKLOG_REFRESH_S", 0.0)
    batcher = make_batcher(max_backlog=3, linger_s=0.01)
    await asyncio.wait_for(batcher.submit(_rows(3)), timeout=WAIT_S)
    with pytest.raises(Overloaded):
        await batcher.submit(_rows(1))


def _batcher_on_redis_at(url: str, path: str, monkeypatch: pytest.MonkeyPatch, size: int) -> Batcher:
    """A batcher whose enqueue (in its threads, or on the loop) goes to the Redis at `url`, with
    short timeouts."""
    timeouts: dict[str, Any] = {"socket_timeout": 0.3, "socket_connect_timeout": 0.3}
    if path == "thread":
        elsewhere = redis_lib.Redis.from_url(url, **timeouts)
        queue = Queue(services.INGEST_QUEUE, connection=elsewhere, serializer=JSONSerializer)
        monkeypatch.setattr(services, "ingest_queue", lambda: queue)
        return Batcher(enqueue=services.batch_enqueue, size=size, linger_s=60, max_backlog=1_000_000)
    enqueue_async = functools.partial(services.batch_enqueue_async, AsyncRedis.from_url(url, **timeouts))
    return Batcher(enqueue_async=enqueue_async, size=size, linger_s=60, max_backlog=1_000_000)


async def _submit_each(batcher: Batcher, count: int) -> list[Any]:
    """`count` submits of a row each, with what each raised (None when it landed)."""
    return await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(_rows(1)) for _ in range(count)), return_exceptions=True),
        timeout=WAIT_S,
    )


@pytest.mark.parametrize("path", ["thread", "loop"])
async def test_a_redis_error_reaches_every_waiter_of_the_batch(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    # A real Redis client aimed at a port nothing listens on: what the API meets when Redis is down.
    batcher = _batcher_on_redis_at(f"redis://127.0.0.1:{free_port()}/0", path, monkeypatch, size=3)
    results = await _submit_each(batcher, 3)
    assert len(results) == 3
    assert all(isinstance(result, RedisConnectionError) for result in results), results


@pytest.fixture
def frozen_redis_url() -> Iterator[str]:
    """A port that takes connections (the kernel's backlog) and never answers: a frozen Redis."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


@pytest.mark.parametrize("path", ["thread", "loop"])
async def test_a_frozen_redis_fails_the_batch_after_the_socket_timeout(
    monkeypatch: pytest.MonkeyPatch, frozen_redis_url: str, path: str
) -> None:
    """Its waiters hear a Redis timeout once the read times out (the API's 503), not never."""
    results = await _submit_each(_batcher_on_redis_at(frozen_redis_url, path, monkeypatch, size=2), 2)
    assert all(isinstance(result, RedisTimeoutError) for result in results), results


async def test_a_cancelled_waiter_does_not_cancel_its_batch(
    redis_client: redis_lib.Redis, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(size=500, linger_s=1.0)
    hung_up_rows, staying_rows = _rows(1), _rows(1)
    hung_up = asyncio.create_task(batcher.submit(hung_up_rows))
    staying = asyncio.create_task(batcher.submit(staying_rows))
    await asyncio.sleep(0)
    hung_up.cancel()  # the client went away before the flush
    await asyncio.wait_for(staying, timeout=WAIT_S)
    assert hung_up.cancelled()
    # Its rows had joined the batch: they are in Redis with the others, as a 201 would have said.
    assert _jobs() == [hung_up_rows + staying_rows]


async def test_a_waiter_cancelled_during_the_enqueue_leaves_the_batch_whole(
    redis_client: redis_lib.Redis,
    make_batcher: MakeBatcher,
) -> None:
    batcher = make_batcher(size=2, linger_s=60)
    first = asyncio.create_task(batcher.submit(_rows(1)))
    second = asyncio.create_task(batcher.submit(_rows(1)))
    await asyncio.sleep(0)  # both joined; the size trigger started the flush
    first.cancel()
    await asyncio.wait_for(second, timeout=WAIT_S)
    assert first.cancelled()
    assert [len(batch) for batch in _jobs()] == [2]


async def test_at_most_two_flushes_run_at_once_and_the_rest_wait_for_the_next(
    redis_client: redis_lib.Redis,
) -> None:
    release = threading.Event()
    running: list[int] = []
    peak = 0
    batches: list[int] = []

    def slow_enqueue(*, batch: list[Any]) -> services.Enqueued:
        nonlocal peak
        running.append(1)
        peak = max(peak, len(running))
        release.wait(WAIT_S)
        running.pop()
        batches.append(len(batch))
        return services.Enqueued(backlog=0, jobs_waiting=0)

    batcher = Batcher(enqueue=slow_enqueue, size=1, linger_s=60, max_backlog=1_000_000)
    submits = [asyncio.ensure_future(batcher.submit(_rows(1))) for _ in range(10)]
    await asyncio.sleep(0.2)
    assert peak == 2 and batches == []
    release.set()
    await asyncio.wait_for(asyncio.gather(*submits), WAIT_S)
    assert peak == 2
    # The eight rows that arrived while two flushes ran went out together, not one by one.
    assert sorted(batches) == [1, 1, 8]


async def test_after_redis_failed_it_answers_at_once_then_tries_again(
    redis_client: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batcher_module, "REDIS_DOWN_HOLD_S", 0.3)
    calls: list[int] = []

    def failing_enqueue(*, batch: list[Any]) -> services.Enqueued:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RedisConnectionError("refused")
        return services.Enqueued(backlog=len(batch), jobs_waiting=0)

    batcher = Batcher(enqueue=failing_enqueue, size=1, linger_s=60, max_backlog=1_000_000)
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(batcher.submit(_rows(1)), WAIT_S)
    # Within the hold: refused without another round trip to a Redis that just failed.
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(batcher.submit(_rows(1)), WAIT_S)
    assert calls == [1]
    await asyncio.sleep(0.35)
    await asyncio.wait_for(batcher.submit(_rows(1)), WAIT_S)
    assert calls == [1, 1]


def test_a_finished_loop_lets_go_of_its_batcher(redis_client: redis_lib.Redis) -> None:
    """A batcher's client holds its loop, so the weak keys alone would keep every finished loop
    (one per async test, one per async_to_sync call) with its batcher and open connection."""
    loops: list[asyncio.AbstractEventLoop] = []

    async def submit_one() -> None:
        loops.append(asyncio.get_running_loop())
        await asyncio.wait_for(batcher_module.batcher_for_loop().submit(_rows(1)), timeout=WAIT_S)

    asyncio.run(submit_one())
    asyncio.run(submit_one())
    assert loops[0] not in batcher_module._batchers
    assert loops[1] in batcher_module._batchers
    assert len(_jobs()) == 2


class _SpinRecorder:
    """An asyncio enqueue that records the reply_spin_s each flush asks for, and can be held."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, *, batch: list[Any], reply_spin_s: float) -> services.Enqueued:
        self.asked.append(reply_spin_s)
        await self.release.wait()
        return services.Enqueued(backlog=len(batch), jobs_waiting=1)


def _spinning_batcher(enqueue: _SpinRecorder, *, linger_s: float = 60) -> Batcher:
    return Batcher(
        enqueue_async=enqueue, size=500, linger_s=linger_s, max_backlog=1_000_000, reply_spin_s=0.002
    )


async def test_the_flush_of_a_lone_request_polls_for_the_reply() -> None:
    enqueue = _SpinRecorder()
    batcher = _spinning_batcher(enqueue)
    batcher.requests_open = 1  # as the API handler counts the request that submits
    await asyncio.wait_for(batcher.submit(_rows(3)), WAIT_S)
    assert enqueue.asked == [0.002]


async def test_a_flush_of_several_requests_sleeps_on_the_reply() -> None:
    """Even when it holds every open request (a closed-loop client's): their clients, or the
    process's next requests, want the CPU a loop turning over would take."""
    enqueue = _SpinRecorder()
    batcher = _spinning_batcher(enqueue)
    batcher.requests_open = 2
    await asyncio.wait_for(asyncio.gather(batcher.submit(_rows(1)), batcher.submit(_rows(1))), WAIT_S)
    assert enqueue.asked == [0.0]


async def test_a_flush_while_other_requests_are_open_sleeps_on_the_reply() -> None:
    """Requests still reading their bodies or decoding keep the loop busy: no polling then."""
    enqueue = _SpinRecorder()
    batcher = _spinning_batcher(enqueue)
    batcher.requests_open = 2
    await asyncio.wait_for(batcher.submit(_rows(1)), WAIT_S)
    assert enqueue.asked == [0.0]


async def test_a_second_flush_beside_one_in_flight_sleeps_on_the_reply() -> None:
    enqueue = _SpinRecorder()
    enqueue.release.clear()
    batcher = _spinning_batcher(enqueue, linger_s=0.01)
    first = asyncio.ensure_future(batcher.submit(_rows(1)))
    await asyncio.sleep(0.05)
    # The first flush is held out: this one starts beside it once its linger passes.
    second = asyncio.ensure_future(batcher.submit(_rows(1)))
    await asyncio.sleep(0.05)
    enqueue.release.set()
    await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
    assert enqueue.asked == [0.002, 0.0]


async def test_the_threads_path_ignores_polling(redis_client: redis_lib.Redis) -> None:
    """With INGEST_REDIS_MIN_REPLICAS the enqueue is the blocking client's, in a thread: it sleeps
    on Redis there whatever the loop has to do, and takes no reply_spin_s."""
    batcher = Batcher(enqueue=services.batch_enqueue, size=500, linger_s=60, max_backlog=1_000_000,
                      reply_spin_s=0.002)  # fmt: skip
    rows = _rows(1)
    await asyncio.wait_for(batcher.submit(rows), WAIT_S)
    assert _jobs() == [rows]
