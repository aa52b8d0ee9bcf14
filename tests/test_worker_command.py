"""`manage.py rqworker` works as Django users expect, with no extra flags, on this project's JSON jobs.

django-rq's own command defaults to rq's pickle serializer and would fail every JSON job with a
DeserializationError; the project's command must not. Its worker forks no scheduler: it puts due
retries back on the queue itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import psutil
import pytest
import redis as redis_lib
from django.conf import settings
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from ingestor_site.processes import WORKER_SETTINGS
from messages_app.models import Message
from messages_app.services import INGEST_QUEUE, PERSIST_JOB, batch_enqueue
from tests.conftest import subprocess_database_url
from tests.livestack import BASE_DIR, MANAGE, wait_until

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize(
    "args",
    [["ingest", "--burst"], ["--burst"], ["ingest", "--burst", "--settings", WORKER_SETTINGS]],
    ids=["named-queue", "default-queue", "worker-settings"],
)
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


def test_the_worker_forks_no_scheduler_and_runs_a_due_retry_itself(
    transactional_db: None, redis_client: redis_lib.Redis
) -> None:
    worker = subprocess.Popen(
        [sys.executable, MANAGE, "rqworker", "ingest", "--name", f"scheduler-check-{uuid.uuid4().hex}"],
        env={**os.environ, "DATABASE_URL": subprocess_database_url(), "REDIS_URL": settings.REDIS_URL},
        cwd=BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        queue = Queue(INGEST_QUEUE, connection=redis_client, serializer=JSONSerializer)
        wait_until(lambda: Worker.count(queue=queue) == 1, timeout_s=60, what="the worker to register")
        message_id = str(uuid.uuid4())
        # As a failed batch's retry waits: in the scheduled registry, due now.
        queue.enqueue_at(datetime.now(UTC), PERSIST_JOB, [[message_id, 1, 5, "retried", time.time()]])
        wait_until(
            lambda: Message.objects.filter(id=message_id).exists(),
            timeout_s=30,
            what="the retry to be stored",
        )
        assert psutil.Process(worker.pid).children() == []
    finally:
        worker.kill()
        worker.wait()


# What a process has imported once Django is set up and the system checks every management
# command runs (the URL configuration's included) have run.
_LOADED_PROBE = """
import json, sys
import django
django.setup()
from django.core import checks
checks.run_checks()
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize(
    ("settings_module", "loaded"),
    [("ingestor_site.settings", True), (WORKER_SETTINGS, False)],
    ids=["site", "worker"],
)
def test_the_worker_settings_load_no_page_apps_and_no_views(settings_module: str, loaded: bool) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _LOADED_PROBE],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": settings_module},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = set(json.loads(result.stdout))
    page_only = {"django.contrib.admin", "channels", "django_htmx", "ingestor_site.urls", "metrics_app.views"}
    assert (page_only <= modules) if loaded else not (page_only & modules), sorted(page_only & modules)
