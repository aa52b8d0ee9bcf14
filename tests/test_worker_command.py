"""`manage.py rqworker` works as Django users expect, with no extra flags, on this project's JSON jobs.

django-rq's own command defaults to rq's pickle serializer and would fail every JSON job with a
DeserializationError; the project's command must not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
import redis as redis_lib
from django.conf import settings
from rq import Queue
from rq.serializers import JSONSerializer

from messages_app.models import Message
from messages_app.services import INGEST_QUEUE, batch_enqueue
from tests.conftest import subprocess_database_url
from tests.livestack import BASE_DIR, MANAGE

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
