"""The dashboard's HTTP side against real PostgreSQL and Redis: /metrics, /simulate, /reset, the page."""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from django.conf import settings
from django.contrib.auth.models import User
from django.templatetags.static import static
from django.test import Client, override_settings
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from messages_app import services
from messages_app.models import Message
from metrics_app.exposition import PipelineCollector
from metrics_app.selectors import PrometheusRead
from telemetry import metrics

pytestmark = pytest.mark.django_db(transaction=True)

VENDOR_README = Path(__file__).resolve().parent.parent / "static" / "vendor" / "README.md"


def _work() -> None:
    queue = services.ingest_queue()
    SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True)


def _queued_messages() -> list[list[Any]]:
    """The rows of every job waiting on the ingest queue."""
    return [row for job in services.ingest_queue().get_jobs() for row in job.args[0]]


def _user(*, staff: bool) -> User:
    return User.objects.create_user(username=f"u{uuid.uuid4().hex[:8]}", password="x", is_staff=staff)


# /metrics


def test_metrics_expose_counters_gauges_and_a_cumulative_latency_histogram(
    redis_client: redis_lib.Redis,
) -> None:
    latencies_ms = [0.5, 4, 4, 40, 400, 70_000]
    with redis_client.pipeline() as pipe:
        metrics.accepted_record(pipe, count=7, now=time.time())
        pipe.incrby(metrics.QUEUE_LENGTH, 7)
        metrics.batch_record(pipe, size=6, inserted=5, dead=1, latencies_ms=Counter(latencies_ms), duration_s=0.01,
                             worker="w1", now=time.time())  # fmt: skip
        pipe.execute()

    response = Client().get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {family.name: family for family in text_string_to_metric_families(response.content.decode())}
    value = {name: family.samples[0].value for name, family in families.items() if len(family.samples) == 1}
    assert families["ingestor_messages_accepted"].type == "counter"
    assert value["ingestor_messages_accepted"] == 7
    assert value["ingestor_messages_persisted"] == 5
    assert value["ingestor_batches_persisted"] == 1
    assert value["ingestor_dead_letters"] == 1
    assert families["ingestor_queue_messages"].type == "gauge"
    assert value["ingestor_queue_messages"] == 1

    histogram = families["ingestor_message_latency_seconds"]
    assert histogram.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 1
    assert buckets["0.005"] == 3
    assert buckets["0.05"] == 4
    assert buckets["0.5"] == 5
    assert buckets["60"] == 5
    assert buckets["+Inf"] == 6
    counts = list(buckets.values())
    assert counts == sorted(counts), "buckets are cumulative"
    assert [float(le) for le in buckets] == sorted(float(le) for le in buckets)
    (count,) = [s.value for s in histogram.samples if s.name.endswith("_count")]
    (total,) = [s.value for s in histogram.samples if s.name.endswith("_sum")]
    assert count == 6
    assert total == pytest.approx(sum(latencies_ms) / 1000)


def test_metrics_start_at_zero_on_an_empty_pipeline(redis_client: redis_lib.Redis) -> None:
    families = {f.name: f for f in text_string_to_metric_families(Client().get("/metrics").content.decode())}
    assert families["ingestor_messages_persisted"].samples[0].value == 0
    buckets = [s.value for s in families["ingestor_message_latency_seconds"].samples]
    assert set(buckets) == {0}


def test_metrics_keep_their_names_types_and_help_texts(redis_client: redis_lib.Redis) -> None:
    text = Client().get("/metrics").content.decode()
    families = {
        family.name: (family.type, family.documentation) for family in text_string_to_metric_families(text)
    }
    assert families == {
        "ingestor_messages_accepted": ("counter", "Messages the API acknowledged (201) into the queue."),
        "ingestor_messages_persisted": ("counter", "Messages committed to PostgreSQL."),
        "ingestor_batches_persisted": ("counter", "Batches (rq jobs) committed to PostgreSQL."),
        "ingestor_dead_letters": ("counter", "Messages PostgreSQL refused, kept in the dead-letter table."),
        "ingestor_queue_messages": ("gauge", "Messages accepted and not yet persisted."),
        "ingestor_workers": ("gauge", "rq workers registered on the ingest queue."),
        "ingestor_persisted_per_second": (
            "gauge", f"Messages persisted per second over the last {metrics.RATE_WINDOW_S} seconds."
        ),
        "ingestor_messages_default_partition_rows": (
            "gauge", "Messages whose id falls in no time partition (kept in messages_default)."
        ),
        "ingestor_message_partitions_covered_until_seconds": (
            "gauge", "Unix time up to which partitions exist for new messages (0 before the first maintenance)."
        ),
        "ingestor_latency_window_seconds": (
            "gauge", f"Receipt-to-commit latency over the last {metrics.LATENCY_WINDOW_S} seconds."
        ),
        "ingestor_message_latency_seconds": ("histogram", "Receipt-to-commit latency of every persisted message."),
    }  # fmt: skip
    # Counters carry the _total suffix; no _created series (they are families, not client Counters).
    assert "ingestor_messages_accepted_total 0.0" in text
    assert "_created" not in text
    quantiles = [
        line.split(" ")[0] for line in text.splitlines() if line.startswith("ingestor_latency_window")
    ]
    assert quantiles == [
        f'ingestor_latency_window_seconds{{quantile="{q}"}}' for q in ("avg", "0.5", "0.95", "0.99")
    ]


def test_a_scrape_with_redis_down_raises_the_redis_error_the_view_answers_503_for() -> None:
    def redis_down() -> PrometheusRead:
        raise RedisConnectionError("Connection refused")

    registry = CollectorRegistry()
    registry.register(PipelineCollector(read=redis_down))
    with pytest.raises(RedisConnectionError):
        generate_latest(registry)


# /simulate


def test_simulate_queues_the_burst_through_the_batcher_and_answers_202(redis_client: redis_lib.Redis) -> None:
    response = Client().post("/simulate", {"count": 1234}, content_type="application/json")

    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 1234
    rows = _queued_messages()
    assert len(rows) == 1234
    assert len({row[0] for row in rows}) == 1234
    # In jobs of at most BATCH_SIZE, as the API's group commit makes them.
    assert all(len(job.args[0]) <= settings.BATCH_SIZE for job in services.ingest_queue().get_jobs())
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 1234
    assert int(redis_client.get(metrics.TOTAL_ACCEPTED) or 0) == 1234
    _work()
    assert Message.objects.count() == 1234
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 0


def test_simulate_from_the_dashboard_form_answers_a_notice(redis_client: redis_lib.Redis) -> None:
    response = Client().post("/simulate", {"count": "10000"}, headers={"HX-Request": "true"})

    assert response.status_code == 202
    assert 'id="notice"' in response.content.decode()
    assert "Queued 10,000 simulated messages." in response.content.decode()
    assert len(_queued_messages()) == 10_000


@pytest.mark.parametrize("count", [0, 10_001, -5, "many", None, 12.5, True])
def test_simulate_refuses_a_count_outside_1_to_10000(redis_client: redis_lib.Redis, count: Any) -> None:
    response = Client().post("/simulate", {"count": count}, content_type="application/json")
    assert response.status_code == 422
    assert "from 1 to 10000" in response.json()["detail"]
    assert _queued_messages() == []


@pytest.mark.parametrize("body", ["{not json", "[" * 100_000])
def test_simulate_refuses_malformed_or_absurdly_nested_json_with_422(
    redis_client: redis_lib.Redis, body: str
) -> None:
    response = Client().post("/simulate", data=body, content_type="application/json")
    assert response.status_code == 422
    assert response.json()["detail"]
    assert _queued_messages() == []


@override_settings(INGEST_API_KEYS=frozenset({"secret"}))
def test_simulate_needs_staff_when_api_keys_guard_the_writes(redis_client: redis_lib.Redis) -> None:
    anonymous = Client().post("/simulate", {"count": 5}, content_type="application/json")
    assert anonymous.status_code == 403
    assert _queued_messages() == []
    staff = Client()
    staff.force_login(_user(staff=True))
    assert staff.post("/simulate", {"count": 5}, content_type="application/json").status_code == 202
    assert len(_queued_messages()) == 5


def test_simulate_only_accepts_post_with_a_csrf_token(redis_client: redis_lib.Redis) -> None:
    assert Client().get("/simulate").status_code == 405
    assert Client(enforce_csrf_checks=True).post("/simulate", {"count": 5}).status_code == 403
    assert _queued_messages() == []


@pytest.mark.parametrize(("path", "allowed"), [("/simulate", "POST"), ("/reset", "DELETE")])
@pytest.mark.parametrize("method", ["PUT", "PATCH", "GET", "TRACE"])
def test_the_buttons_answer_405_in_json_to_other_methods_even_without_a_csrf_token(
    path: str, allowed: str, method: str
) -> None:
    response = Client(enforce_csrf_checks=True).generic(method, path)
    assert response.status_code == 405
    assert response["Allow"] == allowed
    assert "not allowed" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), [("POST", "/simulate"), ("DELETE", "/reset")])
def test_the_buttons_refuse_a_missing_csrf_token_in_json(method: str, path: str) -> None:
    response = Client(enforce_csrf_checks=True).generic(method, path)
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


def test_the_admins_csrf_failure_is_still_djangos_page() -> None:
    response = Client(enforce_csrf_checks=True).post("/admin/login/", {"username": "x", "password": "y"})
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")


# /reset


def _stored_pipeline(redis_client: redis_lib.Redis) -> None:
    services.batch_enqueue(batch=[[str(uuid.uuid4()), 1, 1, f"m{i}", time.time()] for i in range(3)])
    _work()
    assert Message.objects.count() == 3


@pytest.mark.parametrize("staff", [None, False])
def test_reset_is_refused_to_anyone_but_staff(redis_client: redis_lib.Redis, staff: bool | None) -> None:
    _stored_pipeline(redis_client)
    client = Client()
    if staff is not None:
        client.force_login(_user(staff=staff))
    response = client.delete("/reset")
    assert response.status_code == 403
    assert Message.objects.count() == 3
    assert int(redis_client.get(metrics.TOTAL_MESSAGES) or 0) == 3


def test_reset_by_staff_empties_messages_and_counters(redis_client: redis_lib.Redis) -> None:
    _stored_pipeline(redis_client)
    client = Client()
    client.force_login(_user(staff=True))
    assert client.post("/reset").status_code == 405

    response = client.delete("/reset", headers={"HX-Request": "true"})

    assert response.status_code == 200
    assert "Reset done" in response.content.decode()
    assert Message.objects.count() == 0
    assert int(redis_client.get(metrics.TOTAL_MESSAGES) or 0) == 0
    assert redis_client.llen(metrics.RECENT_BATCHES) == 0


def test_reset_needs_the_csrf_token_the_page_sends(
    redis_client: redis_lib.Redis, collected_static: None
) -> None:
    _stored_pipeline(redis_client)
    client = Client(enforce_csrf_checks=True)
    client.force_login(_user(staff=True))
    assert client.delete("/reset").status_code == 403
    page = client.get("/").content.decode()
    (headers,) = re.findall(r"<body hx-headers='([^']+)'>", page)
    response = client.delete("/reset", headers=json.loads(headers))
    assert response.status_code == 200
    assert Message.objects.count() == 0


# The page


def test_dashboard_renders_the_figures_with_separators(
    redis_client: redis_lib.Redis, collected_static: None
) -> None:
    # Three recent batches, then lifetime totals far from them: 1,234,567 messages in 1,000 batches.
    with redis_client.pipeline() as pipe:
        for size in (200, 300, 450):
            metrics.batch_record(pipe, size=size, inserted=size, dead=0, latencies_ms={5.0: size},
                                 duration_s=0.01, worker="w1", now=time.time() - 2)  # fmt: skip
        pipe.execute()
    redis_client.mset({metrics.TOTAL_MESSAGES: 1_234_567, metrics.TOTAL_BATCHES: 1_000,
                       metrics.QUEUE_LENGTH: 4_321})  # fmt: skip

    response = Client().get("/")

    assert response.status_code == 200
    page = response.content.decode()
    assert '<data class="value" value="1234567">1,234,567</data>' in page
    assert '<data class="value" value="4321">4,321</data>' in page
    # The average batch size of the recent window (950 / 3), not the lifetime one (1,234.6).
    assert '<data class="value" value="316.7">317</data>' in page
    assert f"per batch, last {metrics.LATENCY_WINDOW_S} s" in page
    assert 'hx-ext="ws,dashboard-frames"' in page and 'ws-connect="/ws/stats"' in page
    for asset in ("django_htmx/htmx-2.min.js", "django_htmx/ext/hx-ws-2.min.js", "vendor/chart.umd.min.js",
                  "dashboard/dashboard.js", "dashboard/dashboard.css"):  # fmt: skip
        assert static(asset) in page
    assert re.search(r"<body hx-headers='\{\"X-CSRFToken\": \"\w+\"\}'>", page)
    assert "Simulate burst" in page
    assert "hx-delete" not in page, "no Reset for anonymous visitors"


def test_dashboard_offers_reset_with_a_confirmation_to_staff(
    redis_client: redis_lib.Redis, collected_static: None
) -> None:
    client = Client()
    client.force_login(_user(staff=True))
    page = client.get("/").content.decode()
    assert 'hx-delete="/reset"' in page
    assert "hx-confirm=" in page


@pytest.mark.parametrize("method", ["TRACE", "POST", "PUT", "DELETE"])
def test_the_dashboard_answers_405_to_anything_but_get_and_head(
    redis_client: redis_lib.Redis, method: str
) -> None:
    response = Client().generic(method, "/")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


def test_vendored_chart_js_is_served_as_pinned(collected_static: None) -> None:
    response = Client().get(static("vendor/chart.umd.min.js"))
    assert response.status_code == 200
    body = response.getvalue()
    assert body.startswith(b"/*!\n * Chart.js v4.6.1")
    assert hashlib.sha256(body).hexdigest() in VENDOR_README.read_text()
