"""Redis behind Sentinel, with a master killed (kill -9) under load and its replica promoted.

The real web server and worker run as subprocesses with REDIS_SENTINELS; Debian's redis-server
and redis-sentinel run on loopback ports of their own (never the machine's Redis). Sentinel's
timing is shortened so a failover fits in a test: down-after-milliseconds 1000 (Redis's default
30 s) and failover-timeout 5000 (default 3 min); quorum 2 of 3 sentinels.

Each run writes what it measured (seconds of 503s, acknowledged messages lost) to failover.json
in the test's output folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from rq import Queue
from rq.serializers import JSONSerializer

from ingestor_site.replicated_redis import ReplicatedRedis, missing_binaries
from messages_app.models import Message
from messages_app.services import INGEST_QUEUE
from telemetry.connection import replicated_pipeline
from tests.conftest import subprocess_database_url
from tests.livestack import BASE_DIR, LiveStack, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(missing_binaries()),
        reason=f"needs Debian's redis-server and redis-sentinel (missing: {', '.join(missing_binaries())}); "
        "CI installs them",
    ),
]

LOAD_CLIENTS = 6
MESSAGES_PER_REQUEST = 10
LOAD_BEFORE_KILL_S = 2.0
# The load goes on after the API accepts again, so messages acknowledged by the new master count too.
LOAD_AFTER_RECOVERY_S = 2.0
RECOVERY_LIMIT_S = 60.0
# A batch whose worker died with the master waits for its heartbeat to lapse (job timeout + 5 s)
# before another worker takes it again: the test's jobs time out after JOB_TIMEOUT_S.
JOB_TIMEOUT_S = 5
# Nothing pending in Redis for QUIET_S: what is missing then is lost. DRAIN_LIMIT_S bounds it all.
QUIET_S = 5.0
DRAIN_LIMIT_S = 200.0  # under the suite's 300 s per-test timeout


@pytest.fixture
def replicated_redis(tmp_path: Path) -> Iterator[ReplicatedRedis]:
    servers = ReplicatedRedis(tmp_path / "redis", down_after_ms=1000, failover_timeout_ms=5000)
    try:
        yield servers.start()
    finally:
        servers.stop()


@dataclass
class Answer:
    at: float
    status: int  # 0: no answer (connection refused, timeout)
    message_ids: list[str] = field(default_factory=list)


class Load:
    """Closed-loop clients posting small batches and keeping every answer, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(LOAD_CLIENTS)]

    def _client(self, number: int) -> None:
        sequence = 0
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                sequence += 1
                body = {
                    "messages": [
                        {"user_id": number + 1, "channel_id": 7, "content": f"c{number}-{sequence}-{i}"}
                        for i in range(MESSAGES_PER_REQUEST)
                    ]
                }
                try:
                    response = client.post("/messages/batch", json=body)
                except httpx.HTTPError:
                    self._record(Answer(time.monotonic(), 0))
                    time.sleep(0.01)
                    continue
                ids = response.json().get("message_ids", []) if response.status_code == 201 else []
                self._record(Answer(time.monotonic(), response.status_code, ids))
                if response.status_code != 201:
                    time.sleep(0.01)  # as a client backs off; keeps the log of answers small

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=30)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def accepted_since(self, moment: float) -> bool:
        return any(answer.status == 201 and answer.at > moment for answer in self.snapshot())


class WorkerSupervisor:
    """Starts a new worker when the last one exits, as `make run`'s supervisor (or systemd) does.

    rq's worker quits on a connection error in the middle of finishing a job: with the master
    gone, it does. Its job waits in the started registry until the next worker reclaims it.
    """

    def __init__(self, stack: LiveStack) -> None:
        self.stack = stack
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            if self.stack.workers[-1].poll() is not None:
                self.restarts += 1
                self.stack.worker_start()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


def _ingest_queue_on_master(servers: ReplicatedRedis) -> Queue | None:
    address = servers.master_by_sentinels()
    if address is None:
        return None
    client = redis_lib.Redis(host=address[0], port=address[1], socket_timeout=2)
    return Queue(INGEST_QUEUE, connection=client, serializer=JSONSerializer)


def jobs_pending(servers: ReplicatedRedis) -> int:
    """Jobs of the ingest queue still to run: waiting, taken, running or scheduled for a retry.

    Read key by key: the registries' own `count` cleans them up first, which would change what
    the workers are about to do.
    """
    queue = _ingest_queue_on_master(servers)
    if queue is None:
        return 1  # no master right now: assume the worst
    connection = queue.connection
    try:
        return (
            int(connection.llen(queue.key))
            + int(connection.llen(queue.intermediate_queue_key))
            + int(connection.zcard(queue.started_job_registry.key))
            + int(connection.zcard(queue.scheduled_job_registry.key))
        )
    except redis_lib.RedisError:
        return 1
    finally:
        connection.close()


def jobs_failed(servers: ReplicatedRedis) -> int:
    queue = _ingest_queue_on_master(servers)
    if queue is None:
        return -1
    try:
        return int(queue.connection.zcard(queue.failed_job_registry.key))
    finally:
        queue.connection.close()


@dataclass
class FailoverReport:
    acknowledged: int
    lost: int
    refused_answers: int  # answers other than 201 (503s and no answer at all)
    unavailable_s: float  # from the kill to the first 201 after it
    refusing_s: float  # from the first refused answer after the kill to the next 201
    promotion_s: float  # from the kill until the sentinels name the replica master
    lost_after_recovery: int  # of those acknowledged once the API accepted again
    worker_restarts: int
    failed_jobs: int  # in rq's failed registry at the end (their messages count as lost)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def failover_run(servers: ReplicatedRedis, output_dir: Path, **settings_env: str) -> FailoverReport:
    """Load through the real server and worker; kill -9 the master; restart it (as a supervisor
    would) once the sentinels have promoted the replica; wait for every acknowledged message."""
    stack = LiveStack(
        database_url=subprocess_database_url(),
        redis_url="redis://sentinel-managed/0",
        log_dir=output_dir,
        REDIS_SENTINELS=servers.sentinel_setting,
        REDIS_MASTER_NAME=servers.master_name,
        INGEST_JOB_TIMEOUT=str(JOB_TIMEOUT_S),
        **settings_env,
    )
    load = Load(stack.url)
    supervisor = WorkerSupervisor(stack)
    try:
        try:
            stack.web_start()
            stack.worker_start()
            started = f"Worker {stack.worker_name(1)}: started"
            wait_until(lambda: started in stack.log("worker-1"), timeout_s=30, what="the worker to start")
            supervisor.start()
            master = servers.wait_ready()
            load.start()
            time.sleep(LOAD_BEFORE_KILL_S)
            assert load.accepted_since(0), "the API accepted nothing before the kill"
            wait_until(Message.objects.exists, timeout_s=30, what="the worker to store messages")

            killed_at = time.monotonic()
            servers.kill(master)
            wait_until(
                lambda: servers.master_by_sentinels() not in (None, master.address),
                timeout_s=RECOVERY_LIMIT_S,
                interval_s=0.05,
                what="the sentinels to promote the replica",
            )
            promotion_s = time.monotonic() - killed_at
            servers.restart(master)
            wait_until(
                lambda: load.accepted_since(killed_at + promotion_s),
                timeout_s=RECOVERY_LIMIT_S,
                what="the API to accept messages again after the failover",
            )
            time.sleep(LOAD_AFTER_RECOVERY_S)
        finally:
            load.stop()
        answers = sorted(load.snapshot(), key=lambda answer: answer.at)
        acknowledged = {message_id for answer in answers for message_id in answer.message_ids}
        # Until every acknowledged message is stored, or no job is left anywhere in Redis to bring
        # the rest (then they are lost). A batch whose worker died with the master can wait in
        # rq's intermediate queue for its one-minute clean-up and then for a retry.
        stored: set[str] = set()
        deadline = time.monotonic() + DRAIN_LIMIT_S
        quiet_since: float | None = None
        while not acknowledged <= stored and time.monotonic() < deadline:
            stored = {
                str(i) for i in Message.objects.filter(id__in=acknowledged).values_list("id", flat=True)
            }
            if jobs_pending(servers):
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > QUIET_S:
                break
            time.sleep(0.5)
        failed_jobs = jobs_failed(servers)
    finally:
        supervisor.stop()
        stack.stop()

    after_kill = [answer for answer in answers if answer.at >= killed_at]
    first_refused = next((answer.at for answer in after_kill if answer.status != 201), killed_at)
    first_accepted = next(
        answer.at for answer in after_kill if answer.status == 201 and answer.at > first_refused
    )
    recovered = {i for answer in answers if answer.at >= first_accepted for i in answer.message_ids}
    report = FailoverReport(
        acknowledged=len(acknowledged),
        lost=len(acknowledged - stored),
        refused_answers=sum(1 for answer in answers if answer.status != 201),
        unavailable_s=round(first_accepted - killed_at, 3),
        refusing_s=round(first_accepted - first_refused, 3),
        promotion_s=round(promotion_s, 3),
        lost_after_recovery=len(recovered - stored),
        worker_restarts=supervisor.restarts,
        failed_jobs=failed_jobs,
    )
    (output_dir / "failover.json").write_text(report.to_json())
    print(f"failover with {settings_env or 'defaults'}: {report.to_json()}")
    return report


def test_api_accepts_again_once_sentinel_promotes_the_replica(
    transactional_db: None, replicated_redis: ReplicatedRedis, output_dir: Path
) -> None:
    report = failover_run(replicated_redis, output_dir)
    assert report.acknowledged > 0
    # Asynchronous replication: a master killed right after answering may take its last batches
    # along (how many is measured, not asserted); what the promoted replica accepted must land.
    assert report.lost_after_recovery == 0


def test_no_acknowledged_message_is_lost_when_one_replica_must_confirm(
    transactional_db: None, replicated_redis: ReplicatedRedis, output_dir: Path
) -> None:
    report = failover_run(replicated_redis, output_dir, INGEST_REDIS_MIN_REPLICAS="1")
    assert report.acknowledged > 0
    assert report.lost == 0


CLIENTS_PROBE = """
import asyncio, django
django.setup()
from django_rq import get_connection
from channels.layers import get_channel_layer
from telemetry.connection import redis_async_client, redis_connection

sync = redis_connection()
sync.set("probe", "sync")
rq = get_connection("ingest")
rq.set("probe-rq", "rq")

async def main():
    client = redis_async_client()
    try:
        await client.set("probe-async", "async")
        role = (await client.role())[0]
    finally:
        await client.aclose()
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "probe"})
    received = await layer.receive(channel)
    return role, received["type"]

async_role, layer_message = asyncio.run(main())
print(sync.role()[0].decode(), rq.role()[0].decode(), async_role.decode(), layer_message)
"""


def test_every_redis_client_follows_the_sentinels_to_the_master(
    replicated_redis: ReplicatedRedis, tmp_path: Path
) -> None:
    """The API's client, the rq worker's, the dashboard's and the Channels layer all write to the
    master Sentinel names, from settings built by REDIS_SENTINELS alone (REDIS_URL points nowhere)."""
    master = replicated_redis.wait_ready()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "ingestor_site.settings",
        "REDIS_URL": "redis://sentinel-managed:1/3",
        "REDIS_SENTINELS": replicated_redis.sentinel_setting,
        "REDIS_MASTER_NAME": replicated_redis.master_name,
    }
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", CLIENTS_PROBE],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["master", "master", "master", "probe"]
    # They wrote to database 3 of the master, the one REDIS_URL names.
    assert master.cli("-n", "3", "GET", "probe") == "sync"
    assert master.cli("-n", "3", "GET", "probe-rq") == "rq"
    assert master.cli("-n", "3", "GET", "probe-async") == "async"


def test_a_write_returns_once_the_replica_has_it(replicated_redis: ReplicatedRedis) -> None:
    master = replicated_redis.wait_ready()
    replica = next(node for node in replicated_redis.nodes if node is not master)
    client = redis_lib.Redis(host=master.host, port=master.port)
    try:
        with replicated_pipeline(client, min_replicas=1, timeout_ms=5000) as pipe:
            pipe.set("confirmed", "yes")
            pipe.execute()
        # WAIT returned: the replica holds the write already, no polling needed.
        assert replica.cli("GET", "confirmed") == "yes"
    finally:
        client.close()
