"""`manage.py rqworker` works as Django users expect, with no extra flags, on this project's JSON jobs.

django-rq's own command defaults to rq's pickle serializer and would fail every JSON job with a
DeserializationError; the project's command must not. Its worker runs rq's scheduler in a child
process that must not outlive it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import psutil
import pytest
import redis as redis_lib
from django.conf import settings
from rq import Queue
from rq.serializers import JSONSerializer

from messages_app.models import Message
from messages_app.services import INGEST_QUEUE, batch_enqueue
from tests.conftest import subprocess_database_url
from tests.livestack import BASE_DIR, MANAGE, wait_until

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize("args", [["ingest", "--burst"], ["--burst"]], ids=["named-queue", "default-queue"])
def test_plain_rqworker_burst_processes_a_json_job(
    transactional_db: None, redis_client: redis_lib.Redis, args: list[str]
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    batch = [[message_id, i + 1, 5, f"worker command {i}", time.time()] for i, message_id in enumerate(ids)]
    batch_enqueue(batch=batch)
    queue = Queue(INGEST_QUEUE, connection=redis_client, serializer=JSONSerializer)
    assert queue.count == 1

    result = subprocess.run(
        [sys.executable, MANAGE, "rqworker", *args],
        env={**os.environ, "DATABASE_URL": subprocess_database_url(), "REDIS_URL": settings.REDIS_URL},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "DeserializationError" not in output and "Traceback" not in output, output
    stored = sorted(str(i) for i in Message.objects.values_list("id", flat=True))
    assert stored == sorted(ids)
    assert queue.count == 0
    assert queue.failed_job_registry.count == 0
    assert int(redis_client.get("queue_length") or 0) == 0


def _dead(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_the_workers_scheduler_child_dies_with_a_worker_killed_with_kill_9(
    redis_client: redis_lib.Redis,
) -> None:
    # A scheduler child that outlived its worker would keep the worker's Redis connection open,
    # and the dequeue pending on it would take jobs for a worker that is gone.
    worker = subprocess.Popen(
        [sys.executable, MANAGE, "rqworker", "ingest", "--name", f"scheduler-check-{uuid.uuid4().hex}"],
        env={**os.environ, "DATABASE_URL": subprocess_database_url(), "REDIS_URL": settings.REDIS_URL},
        cwd=BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        (scheduler,) = wait_until(
            lambda: psutil.Process(worker.pid).children(), timeout_s=60, what="the worker's scheduler child"
        )
        worker.kill()
        worker.wait(timeout=10)
        wait_until(lambda: _dead(scheduler), timeout_s=10, what="the scheduler child to die with its worker")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
