"""The counters reconciled with the tables while workers run (messages_app/counters.py)."""

from __future__ import annotations

import time

import httpx
import pytest
import redis as redis_lib

from messages_app import counters, services
from messages_app.models import DeadLetter, Message
from metrics_app.selectors import stats_snapshot
from telemetry import metrics
from tests.livestack import LiveStack, wait_until
from tests.test_services import _rows

pytestmark = pytest.mark.django_db(transaction=True)


def _counter(redis_client: redis_lib.Redis, key: str) -> int:
    return int(redis_client.get(key) or 0)


def test_a_quiet_pipeline_gets_the_counters_a_crash_left_short_set_from_the_tables(
    redis_client: redis_lib.Redis,
) -> None:
    # Rows committed by a job that died before its metrics: in the tables, not in the counters.
    services.messages_persist(batch=_rows(12))
    services.messages_persist(batch=[], malformed=["not a row"])
    redis_client.set(metrics.TOTAL_MESSAGES, 5)

    result = counters.counters_reconcile_if_quiet(redis=redis_client)

    assert result == counters.Reconciliation(messages=12, dead_letters=1, drift=7, applied=True)
    assert _counter(redis_client, metrics.TOTAL_MESSAGES) == 12
    assert _counter(redis_client, metrics.TOTAL_DEAD_LETTERS) == 1
    reconciled = stats_snapshot()["reconciled"]
    assert reconciled["messages"] == 12 and reconciled["dead_letters"] == 1
    assert time.time() - reconciled["at"] < 60
    # Nothing changed since: no second count.
    assert counters.counters_reconcile_if_quiet(redis=redis_client) is None


def test_rows_dropped_by_retention_lower_the_counters_too(redis_client: redis_lib.Redis) -> None:
    services.messages_persist(batch=_rows(4))
    redis_client.set(metrics.TOTAL_MESSAGES, 10)  # six rows dropped with their partition
    result = counters.counters_reconcile_if_quiet(redis=redis_client, force=True)
    assert result is not None and result.applied and result.drift == -6
    assert _counter(redis_client, metrics.TOTAL_MESSAGES) == 4


def test_with_a_job_in_flight_the_counters_are_left_alone(redis_client: redis_lib.Redis) -> None:
    """A started job may have committed without having counted yet: setting the counter now
    would count its batch twice."""
    services.messages_persist(batch=_rows(3))  # committed; its metrics are yet to come
    redis_client.set(metrics.TOTAL_MESSAGES, 0)
    registry = services.ingest_queue().started_job_registry
    redis_client.zadd(registry.key, {"some-job:some-execution": time.time() + 60})

    assert counters.counters_reconcile_if_quiet(redis=redis_client) is None
    assert _counter(redis_client, metrics.TOTAL_MESSAGES) == 0

    redis_client.zrem(registry.key, "some-job:some-execution")
    redis_client.incrby(metrics.TOTAL_MESSAGES, 3)  # its worker records the batch
    redis_client.incr(metrics.TOTAL_BATCHES)
    result = counters.counters_reconcile_if_quiet(redis=redis_client)
    assert result is not None and result.applied and result.drift == 0
    assert _counter(redis_client, metrics.TOTAL_MESSAGES) == 3


def test_a_batch_recorded_during_the_count_leaves_the_counters_alone(
    redis_client: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    services.messages_persist(batch=_rows(2))
    count = counters._tables_count

    def count_while_a_batch_lands() -> tuple[int, int]:
        counted = count()
        redis_client.incrby(metrics.TOTAL_MESSAGES, 5)  # a batch committed after the count
        redis_client.incr(metrics.TOTAL_BATCHES)
        return counted

    monkeypatch.setattr(counters, "_tables_count", count_while_a_batch_lands)
    result = counters.counters_reconcile_if_quiet(redis=redis_client)
    assert result is not None and not result.applied
    assert _counter(redis_client, metrics.TOTAL_MESSAGES) == 5  # as the workers left it
    assert stats_snapshot()["reconciled"]["messages"] == 2  # the count stands beside it


@pytest.mark.integration
def test_a_running_worker_puts_the_counters_right_after_a_crash_left_them_short(
    live_stack: LiveStack, redis_client: redis_lib.Redis
) -> None:
    with httpx.Client(base_url=live_stack.url, timeout=10) as client:
        for index in range(3):
            response = client.post("/messages/batch", json={"messages": [
                {"user_id": 1 + i, "channel_id": index + 1, "content": f"m {i}"} for i in range(50)
            ]})  # fmt: skip
            assert response.status_code == 201, response.text
    wait_until(lambda: Message.objects.count() == 150, timeout_s=30, what="150 rows stored")
    wait_until(lambda: _counter(redis_client, metrics.TOTAL_MESSAGES) == 150, timeout_s=30, what="counted")
    # What a worker killed between a commit and its metrics leaves behind.
    redis_client.decrby(metrics.TOTAL_MESSAGES, 50)
    redis_client.delete(counters.RECONCILE_DUE_KEY)  # due now rather than within a minute

    # The next maintenance tick (every few seconds) of the running worker sets it right.
    wait_until(
        lambda: _counter(redis_client, metrics.TOTAL_MESSAGES) == 150,
        timeout_s=30,
        what="total_messages reconciled by the worker",
    )
    assert DeadLetter.objects.count() == 0
    with httpx.Client(base_url=live_stack.url, timeout=10) as client:
        stats = client.get("/stats").json()
    assert stats["total_messages"] == 150 and stats["reconciled"]["messages"] == 150
