"""Web processes and workers settle Python's garbage collector once loaded (telemetry/collector.py)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib
from django.conf import settings
from rq import Queue
from rq.serializers import JSONSerializer

from messages_app.services import INGEST_QUEUE
from telemetry.collector import YOUNG_THRESHOLD, collector_settle
from tests.conftest import subprocess_database_url
from tests.livestack import BASE_DIR, MANAGE

# Django, rq and the project hold tens of thousands of objects once loaded.
LOADED_OBJECTS_AT_LEAST = 10_000


def collector_state() -> dict[str, Any]:
    """The collector's settings in the process that runs this (a job in the worker test)."""
    return {"threshold": list(gc.get_threshold()), "frozen": gc.get_freeze_count()}


@pytest.fixture
def collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_collector_settle_freezes_what_is_loaded_and_collects_the_young_less_often(
    collector_restored: None,
) -> None:
    _, middle, oldest = gc.get_threshold()
    gc.unfreeze()
    collector_settle()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, oldest)
    assert gc.get_freeze_count() >= LOADED_OBJECTS_AT_LEAST
    # Frozen objects are out of every generation's scan.
    assert sum(gc.get_count()) < LOADED_OBJECTS_AT_LEAST


def _child_env() -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": subprocess_database_url(), "REDIS_URL": settings.REDIS_URL}


def test_a_web_process_settles_the_collector_once_the_application_is_loaded() -> None:
    # What granian's worker imports: ingestor_site.asgi:application.
    script = (
        "import json, ingestor_site.asgi, tests.test_collector as t; print(json.dumps(t.collector_state()))"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", script], env=_child_env(), cwd=BASE_DIR, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["threshold"][0] == YOUNG_THRESHOLD
    assert state["frozen"] >= LOADED_OBJECTS_AT_LEAST


@pytest.mark.integration
def test_the_worker_command_settles_the_collector_before_it_works(redis_client: redis_lib.Redis) -> None:
    queue = Queue(INGEST_QUEUE, connection=redis_client, serializer=JSONSerializer)
    job = queue.enqueue("tests.test_collector.collector_state", result_ttl=600)
    try:
        subprocess.run(  # noqa: S603
            [sys.executable, MANAGE, "rqworker", "--burst"], env=_child_env(), cwd=BASE_DIR,
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        job.refresh()  # type: ignore[no-untyped-call]  # rq leaves it unannotated
        state = job.return_value()
        assert state is not None, job.get_status()
        assert state["threshold"][0] == YOUNG_THRESHOLD
        assert state["frozen"] >= LOADED_OBJECTS_AT_LEAST
    finally:
        job.delete()
