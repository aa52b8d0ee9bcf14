"""The pipeline's guarantees, each shown with real processes and real servers.

Tests that stop, kill or lock a server use their own: an embedded PostgreSQL or Redis started for
the test, or a table lock held on the test database. The machine's shared servers are never
stopped. Measured figures (recovery times, 503 latency) go to test-output/<test>/figures.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis as redis_lib
import uuid6
from django.conf import settings
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from ingestor_site.embedded import EmbeddedPostgres, EmbeddedRedis
from messages_app.models import DeadLetter
from messages_app.services import INGEST_QUEUE, batch_enqueue
from messages_app.worker import abandoned_requeue_bound_s
from tests.conftest import subprocess_database_url
from tests.livestack import LiveStack, wait_until

pytestmark = [pytest.mark.integration]

StackFactory = Callable[..., LiveStack]


# --- helpers -------------------------------------------------------------------------------------


def stored_ids(database_url: str) -> list[str]:
    """Every message id in the `messages` table, read with psycopg (not through Django)."""
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        return [str(row[0]) for row in conn.execute("SELECT id FROM messages")]


def assert_exactly_once(
    database_url: str, acknowledged: list[str], *, unknown: frozenset[str] = frozenset()
) -> None:
    """One row per acknowledged message and none other (but those whose fate the API could not know)."""
    ids = stored_ids(database_url)
    assert len(ids) == len(set(ids)), "duplicate rows"
    missing = set(acknowledged) - set(ids)
    assert not missing, f"{len(missing)} acknowledged messages were lost"
    extra = set(ids) - set(acknowledged) - unknown
    assert not extra, f"{len(extra)} rows of messages never acknowledged"


def wait_all_stored(database_url: str, acknowledged: list[str], *, timeout_s: float) -> float:
    """Wait until every acknowledged id is stored; return the seconds it took."""
    started = time.monotonic()
    wanted = set(acknowledged)
    wait_until(
        lambda: wanted <= set(stored_ids(database_url)),
        timeout_s=timeout_s,
        interval_s=0.25,
        what="every row",
    )
    return time.monotonic() - started


def message(index: int, channel_id: int = 1) -> dict[str, Any]:
    return {"user_id": index + 1, "channel_id": channel_id, "content": f"message {index}"}


def post_one(client: httpx.Client, payload: dict[str, Any]) -> str:
    response = client.post("/messages", json=payload)
    assert response.status_code == 201, response.text
    return str(response.json()["message_id"])


def post_batch(client: httpx.Client, payloads: list[dict[str, Any]]) -> list[str]:
    response = client.post("/messages/batch", json={"messages": payloads})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["accepted"] == len(payloads) and body["rejected"] == []
    return [str(i) for i in body["message_ids"]]


def rq_connection(redis_url: str) -> redis_lib.Redis:
    return redis_lib.Redis.from_url(redis_url)


def started_job_ids(redis: redis_lib.Redis) -> list[str]:
    registry = StartedJobRegistry(INGEST_QUEUE, connection=redis, serializer=JSONSerializer)
    return registry.get_job_ids(cleanup=False)


def insert_waiting_on_lock(database_url: str) -> bool:
    """True when a backend's COPY (or INSERT) into messages waits for a lock (the one the test holds).

    Asked on a fresh connection: pg_stat_activity is a snapshot frozen for a whole transaction.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND (query ILIKE 'COPY%%messages%%' OR query ILIKE 'INSERT INTO%%messages%%')"
        ).fetchone()
    return bool(row and row[0])


def figures_record(output_dir: Path, **figures: float) -> None:
    path = output_dir / "figures.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    known.update({name: round(value, 3) for name, value in figures.items()})
    path.write_text(json.dumps(known, indent=2))
    print(f"figures: {known}")


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def make_stack(output_dir: Path) -> Iterator[StackFactory]:
    """Build LiveStacks (web server not yet started) that are all stopped after the test."""
    stacks: list[LiveStack] = []

    def make(*, database_url: str, redis_url: str, **env: str) -> LiveStack:
        stack = LiveStack(database_url=database_url, redis_url=redis_url, log_dir=output_dir, **env)
        stacks.append(stack)
        return stack

    yield make
    for stack in reversed(stacks):
        stack.stop()


@pytest.fixture
def shared_stack(
    transactional_db: None, redis_client: redis_lib.Redis, make_stack: StackFactory
) -> Callable[..., LiveStack]:
    """A stack on the test database and the configured Redis db (both emptied around the test)."""

    def make(**env: str) -> LiveStack:
        return make_stack(database_url=subprocess_database_url(), redis_url=settings.REDIS_URL, **env)

    return make


@pytest.fixture
def table_lock(transactional_db: None) -> Iterator[Callable[[], psycopg.Connection[Any]]]:
    """Take `LOCK TABLE messages IN ACCESS EXCLUSIVE MODE` in an open transaction, on demand.

    A worker's insert then blocks inside its batch until the test rolls the transaction back.
    """
    connections: list[psycopg.Connection[Any]] = []

    def lock() -> psycopg.Connection[Any]:
        conn = psycopg.connect(subprocess_database_url())
        connections.append(conn)
        conn.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        return conn

    yield lock
    for conn in connections:
        conn.rollback()
        conn.close()


# --- 1. N messages in, exactly N rows ------------------------------------------------------------


def test_concurrent_singles_and_batches_make_exactly_one_row_each(
    shared_stack: Callable[..., LiveStack],
) -> None:
    stack = shared_stack()
    stack.web_start(processes=2)
    stack.worker_start()
    stack.worker_start()

    def poster(thread: int) -> list[str]:
        ids: list[str] = []
        with httpx.Client(base_url=stack.url, timeout=15) as client:
            for index in range(25):
                ids.append(post_one(client, message(thread * 1000 + index, channel_id=thread + 1)))
                if index % 10 == 9:
                    ids += post_batch(client, [message(thread * 1000 + index + k) for k in range(40)])
        return ids

    with ThreadPoolExecutor(max_workers=8) as pool:
        acknowledged = [i for ids in pool.map(poster, range(8)) for i in ids]
    assert len(acknowledged) == 8 * (25 + 2 * 40)
    assert len(set(acknowledged)) == len(acknowledged), "the API gave the same id to two messages"

    # Client-supplied ids make a POST idempotent: repeated, in a batch, twice in one batch.
    repeated, in_batch = str(uuid6.uuid7()), str(uuid6.uuid7())
    with httpx.Client(base_url=stack.url, timeout=15) as client:
        assert post_one(client, {**message(1), "id": repeated}) == repeated
        assert post_one(client, {**message(1), "id": repeated}) == repeated
        ids = post_batch(client, [{**message(2), "id": in_batch}, {**message(2), "id": in_batch}, message(4)])
        assert ids[:2] == [in_batch, in_batch]
        assert post_one(client, {**message(2), "id": in_batch}) == in_batch
    acknowledged += [repeated, in_batch, ids[2]]

    database_url = subprocess_database_url()
    wait_all_stored(database_url, acknowledged, timeout_s=60)
    time.sleep(0.5)  # a duplicate would arrive right after the last row: give it the chance
    assert_exactly_once(database_url, acknowledged)
    assert len(stored_ids(database_url)) == 8 * 105 + 3


# --- 2. kill -9 mid-batch ------------------------------------------------------------------------


def batch_held_in_flight(
    client: httpx.Client,
    table_lock: Callable[[], psycopg.Connection[Any]],
    redis: redis_lib.Redis,
    *,
    warm_up: int,
    size: int,
) -> tuple[list[str], psycopg.Connection[Any], list[str], list[str]]:
    """Store `warm_up` messages, then post a batch of `size` that the worker starts but cannot
    commit: its insert waits on a lock of the table. Returns the stored ids, the lock (roll it
    back to let the insert through), the batch's ids and the started job ids."""
    database_url = subprocess_database_url()
    first = post_batch(client, [message(i) for i in range(warm_up)])
    wait_all_stored(database_url, first, timeout_s=30)
    lock = table_lock()
    in_flight = post_batch(client, [message(i) for i in range(100, 100 + size)])
    job_ids = wait_until(lambda: started_job_ids(redis), timeout_s=15, what="the batch's job to start")
    wait_until(
        lambda: insert_waiting_on_lock(database_url), timeout_s=15, what="the worker's insert to block"
    )
    return first, lock, in_flight, job_ids


def started_executions(redis: redis_lib.Redis) -> list[tuple[str, str]]:
    """(job id, execution id) of every entry of the started registry."""
    registry = StartedJobRegistry(INGEST_QUEUE, connection=redis, serializer=JSONSerializer)
    return registry.get_job_and_execution_ids(cleanup=False)


def test_worker_killed_mid_batch_is_requeued_within_its_bound_and_loses_nothing(
    shared_stack: Callable[..., LiveStack],
    table_lock: Callable[[], psycopg.Connection[Any]],
    output_dir: Path,
) -> None:
    stack = shared_stack()
    stack.web_start()
    worker = stack.worker_start()
    redis = rq_connection(settings.REDIS_URL)
    database_url = subprocess_database_url()

    with httpx.Client(base_url=stack.url, timeout=15) as client:
        first, lock, in_flight, (job_id,) = batch_held_in_flight(
            client, table_lock, redis, warm_up=20, size=50
        )
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        assert job.timeout is not None
        bound_s = abandoned_requeue_bound_s(int(job.timeout))
        (dead_execution,) = started_executions(redis)

        killed_at = time.monotonic()
        stack.kill(worker)
        # Acknowledged while no worker runs at all.
        later = [post_one(client, message(i)) for i in range(200, 210)]
    lock.rollback()
    assert started_executions(redis) == [dead_execution], "the killed worker's job should still look started"

    stack.worker_start()
    # Wait a little past the bound, so that a miss shows as a figure rather than a timeout.
    wait_until(
        lambda: dead_execution not in started_executions(redis),
        timeout_s=bound_s + 15,
        interval_s=0.1,
        what="the abandoned job to be requeued",
    )
    requeued_s = time.monotonic() - killed_at
    acknowledged = first + in_flight + later
    wait_all_stored(database_url, acknowledged, timeout_s=30)
    figures_record(output_dir, kill9_requeue_s=requeued_s, kill9_recovery_s=time.monotonic() - killed_at)
    assert requeued_s <= bound_s, f"requeued {requeued_s:.1f} s after the kill; the bound is {bound_s} s"
    time.sleep(0.5)
    assert_exactly_once(database_url, acknowledged)
    # The batch ran once more and was done with: requeued by the worker (not through rq's
    # scheduler, which would have spent a retry interval), not failed, not waiting again.
    queue = Queue(INGEST_QUEUE, connection=redis, serializer=JSONSerializer)
    assert queue.failed_job_registry.count == 0
    assert queue.scheduled_job_registry.count == 0
    assert started_job_ids(redis) == [] and queue.count == 0


# --- 3. PostgreSQL down --------------------------------------------------------------------------


def test_postgres_down_jobs_retry_and_land_once_it_is_back(
    own_postgres: EmbeddedPostgres, redis_client: redis_lib.Redis, make_stack: StackFactory, output_dir: Path
) -> None:
    stack = make_stack(database_url=own_postgres.url, redis_url=settings.REDIS_URL)
    stack.web_start()
    stack.worker_start()
    redis = rq_connection(settings.REDIS_URL)

    with httpx.Client(base_url=stack.url, timeout=15) as client:
        before = post_batch(client, [message(i) for i in range(10)])
        wait_all_stored(own_postgres.url, before, timeout_s=30)

        own_postgres.stop()
        down_at = time.monotonic()
        down = [post_one(client, message(i)) for i in range(100, 110)]
        down += post_batch(client, [message(i) for i in range(200, 240)])
        started = time.monotonic()
        health = client.get("/health")
        health_s = time.monotonic() - started
        assert health.status_code == 503 and health.json()["database"] == "disconnected", health.text

        # The worker tried, failed, and scheduled a retry with backoff (a job does not sit failed).
        wait_until(
            lambda: "scheduled for retry" in stack.log("worker-1"),
            timeout_s=30,
            what="a retry to be scheduled",
        )
        time.sleep(1)  # stay down across another attempt
        own_postgres.start()
        back_at = time.monotonic()

        acknowledged = before + down
        wait_all_stored(own_postgres.url, acknowledged, timeout_s=60)
        landed_s = time.monotonic() - back_at
        # The web processes' pools reconnect on their own backoff, which may outlast the drain.
        wait_until(
            lambda: client.get("/health").status_code == 200, timeout_s=30, what="/health to be 200 again"
        )
        figures_record(
            output_dir,
            postgres_down_s=back_at - down_at,
            land_after_back_s=landed_s,
            health_db_down_s=health_s,
            health_back_after_s=time.monotonic() - back_at,
        )
    time.sleep(0.5)
    assert_exactly_once(own_postgres.url, acknowledged)
    assert Queue(INGEST_QUEUE, connection=redis, serializer=JSONSerializer).failed_job_registry.count == 0


# --- 4. Redis down -------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def assert_refused_at_once(client: httpx.Client, refused_ids: list[str]) -> dict[str, float]:
    """POST a message and a batch and GET /health while Redis is away: each a 503 with Retry-After.

    All but one message carry client ids; those ids, and the id the server gave the one without
    (which goes straight to the batcher's enqueue: no id to claim first), are added to
    `refused_ids`. Returns the seconds each answer took (a figure to report, not a timing assert).
    """
    ids = [str(uuid6.uuid7()) for _ in range(3)]
    refused_ids += ids
    elapsed: dict[str, float] = {}
    for name, path, payload in (
        ("single", "/messages", {**message(1), "id": ids[0]}),
        ("single_no_id", "/messages", message(4)),
        (
            "batch",
            "/messages/batch",
            {"messages": [{**message(2), "id": ids[1]}, {**message(3), "id": ids[2]}]},
        ),
    ):
        started = time.monotonic()
        response = client.post(path, json=payload)
        elapsed[name] = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"].isdigit()
        # The ids to retry with: a client's own, echoed back, or the one the server gave.
        if "messages" in payload:
            assert response.json()["message_ids"] == [item["id"] for item in payload["messages"]]
        elif "id" in payload:
            assert response.json()["message_ids"] == [payload["id"]]
        else:
            (minted,) = response.json()["message_ids"]
            refused_ids.append(minted)
    started = time.monotonic()
    health = client.get("/health")
    elapsed["health"] = time.monotonic() - started
    assert health.status_code == 503, health.text
    assert health.json()["status"] != "healthy" and health.json()["redis"] == "disconnected"
    assert health.headers["Retry-After"].isdigit()
    # A hang guard only: the answer must come at once, not when some client timeout runs out.
    assert max(elapsed.values()) < 5, elapsed
    return elapsed


def test_redis_down_answers_503_fast_and_recovers_by_itself(
    transactional_db: None, own_redis: EmbeddedRedis, make_stack: StackFactory, output_dir: Path
) -> None:
    database_url = subprocess_database_url()
    stack = make_stack(database_url=database_url, redis_url=own_redis.url)
    stack.web_start()
    stack.worker_start()

    def accepted() -> str | None:
        response = client.post("/messages", json=message(99))
        return str(response.json()["message_id"]) if response.status_code == 201 else None

    with httpx.Client(base_url=stack.url, timeout=15) as client:
        acknowledged = [post_one(client, message(i)) for i in range(5)]

        # Stopped: connections are refused, so nothing of the refused requests can have landed.
        own_redis.stop()
        refused_ids: list[str] = []
        refused = assert_refused_at_once(client, refused_ids)
        own_redis.start()  # same port, same append-only file
        back_at = time.monotonic()
        acknowledged.append(wait_until(accepted, timeout_s=30, what="POST /messages to answer 201 again"))
        recovery_s = time.monotonic() - back_at
        acknowledged += post_batch(client, [message(i) for i in range(10, 20)])

        # Frozen (SIGSTOP): connections open but nothing answers, as with a host gone off the network.
        assert own_redis.process is not None
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        # A request whose commands reached Redis before the read timed out still lands once
        # Redis wakes up: answered 503, its fate unknown to the API (clients retry with their id).
        unknown_ids: list[str] = []
        try:
            frozen = assert_refused_at_once(client, unknown_ids)
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        acknowledged.append(wait_until(accepted, timeout_s=30, what="POST /messages to answer 201 again"))
        wait_until(lambda: client.get("/health").status_code == 200, timeout_s=30, what="/health to be 200")

    figures_record(
        output_dir,
        **{f"redis_stopped_{name}_s": value for name, value in refused.items()},
        **{f"redis_frozen_{name}_s": value for name, value in frozen.items()},
        redis_recovery_s=recovery_s,
    )
    wait_all_stored(database_url, acknowledged, timeout_s=60)
    time.sleep(0.5)
    assert_exactly_once(database_url, acknowledged, unknown=frozenset(unknown_ids))
    assert not set(refused_ids) & set(stored_ids(database_url))


# --- 5. Backlog high-water mark ------------------------------------------------------------------


def test_backlog_over_the_limit_answers_503_and_loses_nothing(shared_stack: Callable[..., LiveStack]) -> None:
    stack = shared_stack(INGEST_MAX_BACKLOG="50")
    stack.web_start()  # no worker: the backlog only grows

    acknowledged: list[str] = []
    refused: list[httpx.Response] = []
    with httpx.Client(base_url=stack.url, timeout=15) as client:
        acknowledged += post_batch(client, [message(i) for i in range(30)])
        for index in range(40):
            response = client.post("/messages", json=message(100 + index))
            if response.status_code == 201:
                acknowledged.append(response.json()["message_id"])
            else:
                refused.append(response)
        batch = client.post("/messages/batch", json={"messages": [message(i) for i in range(5)]})
        refused.append(batch)
        # Refused before the body is read: malformed JSON is not looked at, a client id not claimed.
        refused.append(
            client.post("/messages/batch", content=b"{not json", headers={"Content-Type": "application/json"})
        )
        client_id = str(uuid6.uuid7())
        refused.append(client.post("/messages", json={**message(1), "id": client_id}))

        # One web process and one request at a time: the high-water mark holds exactly.
        assert len(acknowledged) == 50
        assert len(refused) == 23
        for response in refused:
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"].isdigit()
            assert "backlog" in response.json()["detail"]

        stack.worker_start()
        database_url = subprocess_database_url()
        wait_all_stored(database_url, acknowledged, timeout_s=60)
        # Drained: the API takes messages again.
        later = wait_until(
            lambda: (
                (r := client.post("/messages", json=message(1))).status_code == 201 and r.json()["message_id"]
            ),
            timeout_s=10,
            what="201 after the backlog drained",
        )
        acknowledged.append(str(later))
        # The refused client id was never bound to its message: other content may take it.
        taken = client.post("/messages", json={**message(2), "id": client_id})
        assert taken.status_code == 201, taken.text
        assert taken.json()["replay"] is False
        acknowledged.append(client_id)
    wait_all_stored(database_url, acknowledged, timeout_s=30)
    assert_exactly_once(database_url, acknowledged)


def autogroup_nice(pid: int) -> int | None:
    """The nice value of the session (autogroup) of process `pid`: "/autogroup-N nice V"; None
    for a process in init's, which the kernel shows empty and nobody may change (a test runner
    whose ancestors never started a session of their own, as under some CI runners)."""
    shown = Path(f"/proc/{pid}/autogroup").read_text().split()
    return int(shown[-1]) if shown else None


def autogroup_refused() -> str:
    """Why a process in a session of its own may not lower its session's priority here ('' if it
    may): a kernel without autogroups, or a container whose /proc refuses the write."""
    probe = subprocess.run(
        [sys.executable, "-c", "import pathlib; pathlib.Path('/proc/self/autogroup').write_text('1')"],
        start_new_session=True,
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stderr.strip().splitlines()[-1] if probe.returncode else ""


def test_a_deep_backlog_lowers_the_web_servers_cpu_priority_until_it_drains(
    shared_stack: Callable[..., LiveStack],
) -> None:
    if refused := autogroup_refused():
        pytest.skip(f"this machine does not let a session lower its own priority: {refused}")
    # A tenth of the limit: from 100 messages queued; back under 50.
    stack = shared_stack(INGEST_MAX_BACKLOG="1000", INGEST_YIELD_NICE="7")
    own_nice = autogroup_nice(os.getpid())
    stack.web_start()  # no worker yet: the backlog only grows
    assert stack.web is not None
    with httpx.Client(base_url=stack.url, timeout=15) as client:
        acknowledged = post_batch(client, [message(i) for i in range(60)])
        assert autogroup_nice(stack.web.pid) == 0
        acknowledged += post_batch(client, [message(i) for i in range(60, 120)])
        # Set before the answer: the flush that read the backlog set it.
        assert autogroup_nice(stack.web.pid) == 7
        # The server's session alone: the tests' own is untouched.
        assert autogroup_nice(os.getpid()) == own_nice

        worker = stack.worker_start()
        assert autogroup_nice(worker.pid) in (0, None)
        database_url = subprocess_database_url()
        wait_all_stored(database_url, acknowledged, timeout_s=60)
        acknowledged.append(post_one(client, message(500)))
        assert autogroup_nice(stack.web.pid) == 0
    wait_all_stored(database_url, acknowledged, timeout_s=30)
    assert_exactly_once(database_url, acknowledged)


# --- 6. An unstorable row does not sink its batch -------------------------------------------------


def test_unstorable_row_goes_to_dead_letters_and_the_rest_lands(
    shared_stack: Callable[..., LiveStack], admin_client: Any
) -> None:
    stack = shared_stack()
    now = time.time()
    good_ids = [str(uuid.uuid4()) for _ in range(20)]
    good = [[message_id, i + 1, 7, f"good {i}", now] for i, message_id in enumerate(good_ids)]
    nul_id, too_big_id = str(uuid.uuid4()), str(uuid.uuid4())
    nul = [nul_id, 1, 7, "bad\x00row", now]
    too_big = [too_big_id, 2**63, 7, "user id out of bigint range", now]
    # Validation refuses such rows at the door, so put them in a job directly.
    batch_enqueue(batch=[*good[:7], nul, *good[7:15], too_big, *good[15:]])
    stack.worker_start()

    database_url = subprocess_database_url()
    wait_all_stored(database_url, good_ids, timeout_s=60)
    wait_until(lambda: DeadLetter.objects.count() >= 2, timeout_s=15, what="two dead letters")
    assert_exactly_once(database_url, good_ids)
    dead = {str(letter.message_id): letter for letter in DeadLetter.objects.all()}
    assert set(dead) == {nul_id, too_big_id}
    assert dead[nul_id].error and dead[too_big_id].error
    assert "bad" in json.dumps(dead[nul_id].payload)
    queue = Queue(INGEST_QUEUE, connection=rq_connection(settings.REDIS_URL), serializer=JSONSerializer)
    assert queue.failed_job_registry.count == 0 and queue.scheduled_job_registry.count == 0

    page = admin_client.get("/admin/messages_app/deadletter/")
    assert page.status_code == 200
    html = page.content.decode()
    assert nul_id in html and too_big_id in html
    detail = admin_client.get(f"/admin/messages_app/deadletter/{dead[nul_id].pk}/change/")
    assert detail.status_code == 200 and nul_id in detail.content.decode()


# --- 7. SIGTERM finishes the batch in flight ------------------------------------------------------


def test_sigterm_finishes_the_current_batch_before_exit(
    shared_stack: Callable[..., LiveStack], table_lock: Callable[[], psycopg.Connection[Any]]
) -> None:
    stack = shared_stack()
    stack.web_start()
    worker = stack.worker_start()
    redis = rq_connection(settings.REDIS_URL)
    database_url = subprocess_database_url()

    with httpx.Client(base_url=stack.url, timeout=15) as client:
        first, lock, in_flight, job_ids = batch_held_in_flight(client, table_lock, redis, warm_up=5, size=60)

    stack.signal(worker, signal.SIGTERM)
    time.sleep(1)  # the worker has the signal while its insert still waits
    assert worker.poll() is None, "the worker left with its batch in flight"
    lock.rollback()

    assert worker.wait(timeout=30) == 0, stack.log("worker-1")
    assert_exactly_once(database_url, first + in_flight)
    queue = Queue(INGEST_QUEUE, connection=redis, serializer=JSONSerializer)
    assert queue.count == 0
    assert started_job_ids(redis) == []
    assert all(job_id not in queue.get_job_ids() for job_id in job_ids)
    assert queue.failed_job_registry.count == 0
