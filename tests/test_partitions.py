"""The partitioned messages table against real PostgreSQL: creation ahead, expiry, exactly-once
across partitions, concurrent maintainers, the default partition, and the upgrade migration."""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import redis as redis_lib
from django.contrib.admin.sites import site
from django.core.management import call_command
from django.db import connection, connections
from django.db.migrations.executor import MigrationExecutor
from django.test import Client, RequestFactory, override_settings
from prometheus_client.parser import text_string_to_metric_families
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from ingestor_site.asgi import application
from messages_app import partitions, services
from messages_app.models import DeadLetter, Message
from messages_app.partitions import uuid7_at
from messages_app.services import IDEMPOTENCY_KEY_PREFIX, batch_enqueue, messages_persist
from messages_app.worker import IngestWorker
from tests.conftest import subprocess_database_url

pytestmark = pytest.mark.django_db(transaction=True)

DAY = timedelta(days=1)


def _today() -> datetime:
    return partitions.interval_start(datetime.now(tz=UTC), DAY)


def _names() -> set[str]:
    return {partition.name for partition in partitions.partitions_list()}


@pytest.fixture(autouse=True)
def partitions_restored() -> Iterator[None]:
    """Partitions as the migrations left them, before and after each test."""
    before = _names()
    yield
    for partition in partitions.partitions_list():
        if partition.name not in before:
            partitions.partition_drop(partition)
    partitions.partitions_maintain()
    connection.close()


def _partition_of(message_id: uuid.UUID | str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM messages WHERE id = %s", [str(message_id)])
        rows = cursor.fetchall()
    assert len(rows) == 1, f"{message_id}: {len(rows)} rows"
    return str(rows[0][0])


def _row(message_id: uuid.UUID | str, received: float, content: str = "hello") -> list[Any]:
    return [str(message_id), 1, 1, content, received]


def _work() -> None:
    queue = services.ingest_queue()
    SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True)


# Creation ahead and expiry


def test_a_fresh_install_has_partitions_from_a_day_back_to_the_ones_ahead_and_a_default() -> None:
    listing = partitions.partitions_list()
    ranged = [partition for partition in listing if not partition.is_default]
    assert [partition.name for partition in listing if partition.is_default] == ["messages_default"]
    now = datetime.now(tz=UTC)
    assert ranged[0].start is not None and ranged[0].start <= now - partitions.CLIENT_ID_MAX_AGE
    assert ranged[-1].end is not None and ranged[-1].end >= _today() + 4 * DAY
    assert all(a.end == b.start for a, b in zip(ranged, ranged[1:], strict=False)), "a gap between partitions"


def test_maintenance_creates_the_partitions_that_come_due_ahead() -> None:
    later = datetime.now(tz=UTC) + 10 * DAY
    report = partitions.partitions_maintain(now=later)
    start = partitions.interval_start(later, DAY)
    expected = {f"messages_p{start + offset * DAY:%Y%m%d}" for offset in range(4)}
    assert expected <= set(report.created)
    assert expected <= _names()
    assert report.covered_until == start + 4 * DAY
    again = partitions.partitions_maintain(now=later)
    assert (again.created, again.dropped, again.errors) == ([], [], [])


def test_dry_run_changes_nothing() -> None:
    before = _names()
    report = partitions.partitions_maintain(now=datetime.now(tz=UTC) + 10 * DAY, dry_run=True)
    assert report.created
    assert _names() == before


def test_expired_partitions_are_dropped_with_their_rows_and_the_rest_kept() -> None:
    old = datetime.now(tz=UTC) - 40 * DAY
    partitions.partitions_maintain(now=old)
    old_id, kept_id = uuid7_at(old), uuid7_at(datetime.now(tz=UTC))
    messages_persist(batch=[_row(old_id, old.timestamp()), _row(kept_id, time.time())])
    old_partition = _partition_of(old_id)
    assert old_partition == f"messages_p{old:%Y%m%d}"
    expired_letter = DeadLetter.objects.create(message_id=uuid.uuid4(), payload={}, error="old")
    DeadLetter.objects.filter(pk=expired_letter.pk).update(created_at=old)
    fresh_letter = DeadLetter.objects.create(message_id=uuid.uuid4(), payload={}, error="new")

    with override_settings(MESSAGE_RETENTION=timedelta(days=30)):
        report = partitions.partitions_maintain()

    assert old_partition in report.dropped
    assert old_partition not in _names()
    assert list(Message.objects.values_list("id", flat=True)) == [kept_id]
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [fresh_letter.pk]
    assert report.dead_letters_expired == 1
    # Nothing younger than the retention goes: the oldest partition left ends after the cut-off.
    first = partitions.partitions_list()[0]
    assert first.end is not None and first.end > datetime.now(tz=UTC) - timedelta(days=30)


def test_a_partition_left_detached_by_an_interrupted_drop_is_dropped_by_the_next_run() -> None:
    old = datetime.now(tz=UTC) - 40 * DAY
    partitions.partitions_maintain(now=old)
    name = f"messages_p{old:%Y%m%d}"
    kept = f"messages_p{old + DAY:%Y%m%d}"
    with connection.cursor() as cursor:
        for table in (name, kept):  # one detached to drop, one detached by a human to keep
            cursor.execute(f"ALTER TABLE messages DETACH PARTITION {table}")
        cursor.execute(f"COMMENT ON TABLE {name} IS %s", [partitions.DETACHED_COMMENT])
    try:
        report = partitions.partitions_maintain()
        assert name in report.dropped
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s), to_regclass(%s)", [name, kept])
            assert cursor.fetchone() == (None, kept)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {kept}")


def test_without_retention_nothing_is_dropped() -> None:
    old = datetime.now(tz=UTC) - 400 * DAY
    partitions.partitions_maintain(now=old)
    before = _names()
    report = partitions.partitions_maintain()
    assert report.dropped == []
    assert before <= _names()


def test_a_maintainer_finding_the_lock_taken_does_nothing() -> None:
    with psycopg.connect(subprocess_database_url().replace("postgres://", "postgresql://")) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [partitions.ADVISORY_LOCK_KEY])
        report = partitions.partitions_maintain(now=datetime.now(tz=UTC) + 10 * DAY)
    assert not report.ran
    assert report.created == []


def test_concurrent_maintainers_create_each_partition_once_without_errors() -> None:
    later = datetime.now(tz=UTC) + 20 * DAY

    def maintain(_: int) -> partitions.MaintenanceReport:
        try:
            return partitions.partitions_maintain(now=later)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=4) as pool:
        reports = list(pool.map(maintain, range(8)))
    assert all(report.errors == [] for report in reports)
    created = [name for report in reports for name in report.created]
    assert len(created) == len(set(created))
    ranged = [partition for partition in partitions.partitions_list() if not partition.is_default]
    assert all(
        a.end is not None and b.start is not None and a.end <= b.start
        for a, b in zip(ranged, ranged[1:], strict=False)
    )


def test_the_worker_tick_runs_maintenance_once_per_period(redis_client: redis_lib.Redis) -> None:
    first = partitions.partitions_maintain_when_due(redis=redis_client)
    second = partitions.partitions_maintain_when_due(redis=redis_client)
    assert first is not None and first.ran
    assert second is None
    assert (
        float(redis_client.get("ingestor:partitions:covered_until") or 0) >= (_today() + 4 * DAY).timestamp()
    )
    assert redis_client.get("ingestor:partitions:default_rows") == b"0"


def test_a_worker_runs_maintenance_on_its_own_tick_at_start_up(redis_client: redis_lib.Redis) -> None:
    queue = services.ingest_queue()
    with override_settings(MESSAGE_PARTITIONS_AHEAD=6):
        IngestWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True)
    assert f"messages_p{_today() + 6 * DAY:%Y%m%d}" in _names()
    assert (
        float(redis_client.get("ingestor:partitions:covered_until") or 0) == (_today() + 7 * DAY).timestamp()
    )


def test_the_command_lists_partitions_and_says_what_a_dry_run_would_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with override_settings(MESSAGE_PARTITIONS_AHEAD=8):
        call_command("messages_partitions", "--dry-run")
    out = capsys.readouterr().out
    assert f"would create messages_p{_today() + 8 * DAY:%Y%m%d}" in out
    assert f"messages_p{_today():%Y%m%d}" in out
    assert f"messages_p{_today() + 8 * DAY:%Y%m%d}" not in _names()


# The default partition


def test_a_row_with_no_partition_lands_in_the_default_is_reported_and_moves_when_its_partition_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    far = datetime.now(tz=UTC) + 30 * DAY
    message_id = uuid7_at(far)
    assert messages_persist(batch=[_row(message_id, time.time())]).inserted == 1
    assert _partition_of(message_id) == "messages_default"
    with caplog.at_level(logging.ERROR, logger="messages_app.partitions"):
        report = partitions.partitions_maintain()
    assert report.default_rows == 1
    assert "messages_default holds 1 rows" in caplog.text

    report = partitions.partitions_maintain(now=far)
    assert report.moved_from_default == 1
    assert _partition_of(message_id) == f"messages_p{far:%Y%m%d}"
    assert partitions.default_rows_count() == 0
    # Still one row per id once it moved: the same id again is ignored.
    assert messages_persist(batch=[_row(message_id, time.time())]).inserted == 0
    assert Message.objects.filter(id=message_id).count() == 1


def test_metrics_expose_the_default_partitions_rows_and_how_far_partitions_reach(
    redis_client: redis_lib.Redis,
) -> None:
    messages_persist(batch=[_row(uuid7_at(datetime.now(tz=UTC) + 30 * DAY), time.time())])
    partitions.partitions_maintain_when_due(redis=redis_client)
    text = Client().get("/metrics").content.decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["ingestor_messages_default_partition_rows"].samples[0].value == 1
    covered = families["ingestor_message_partitions_covered_until_seconds"].samples[0].value
    assert covered >= (_today() + 4 * DAY).timestamp()


def test_a_job_made_without_the_api_with_uuid4_ids_is_stored_once() -> None:
    batch = [_row(uuid.uuid4(), time.time(), f"m{i}") for i in range(20)]
    assert messages_persist(batch=batch).inserted == 20
    assert messages_persist(batch=batch).inserted == 0
    assert Message.objects.count() == 20


# Exactly once across partitions


def test_the_same_id_received_either_side_of_a_partition_boundary_is_one_row() -> None:
    boundary = _today()
    message_id = uuid7_at(boundary - timedelta(milliseconds=1))
    first = messages_persist(batch=[_row(message_id, (boundary - timedelta(seconds=1)).timestamp(), "first")])
    other = uuid7_at(datetime.now(tz=UTC))
    second = messages_persist(
        batch=[
            _row(message_id, (boundary + timedelta(seconds=30)).timestamp(), "retry"),
            _row(other, time.time()),
        ]
    )
    assert (first.inserted, second.inserted) == (1, 1)
    assert Message.objects.get(id=message_id).content == "first"
    assert _partition_of(message_id) == f"messages_p{boundary - DAY:%Y%m%d}"
    assert _partition_of(other) == f"messages_p{boundary:%Y%m%d}"


def _post(payload: dict[str, Any]) -> httpx.Response:
    """POST /messages through the real ASGI application (its batcher enqueues into Redis)."""

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.post("/messages", json=payload)

    return asyncio.run(post())


def test_a_client_retry_after_the_partition_rolled_over_is_one_row(redis_client: redis_lib.Redis) -> None:
    # Minted just before midnight, sent (and sent again) after it: its row is in yesterday's partition.
    client_id = str(uuid7_at(_today() - timedelta(milliseconds=1)))
    message = {"user_id": 1, "channel_id": 2, "content": "sent before midnight", "id": client_id}
    first = _post(message)
    assert first.status_code == 201, first.text
    _work()
    retry = _post(message)
    assert retry.status_code == 201, retry.text
    assert retry.json()["message_id"] == client_id
    # Past the API's idempotency window (its key gone), only the table's key on id stands between
    # a late retry and a second row.
    redis_client.delete(f"{IDEMPOTENCY_KEY_PREFIX}{client_id}")
    late = _post({**message, "content": "the retry"})
    assert late.status_code == 201, late.text
    _work()
    assert Message.objects.count() == 1
    assert Message.objects.get(id=client_id).content == "sent before midnight"
    assert _partition_of(client_id) == f"messages_p{_today() - DAY:%Y%m%d}"


def test_a_re_run_job_stores_its_rows_across_partitions_and_its_dead_letters_once(
    redis_client: redis_lib.Redis,
) -> None:
    now = datetime.now(tz=UTC)
    batch = [
        _row(uuid7_at(now - timedelta(hours=23)), time.time(), "yesterday or today"),
        _row(uuid7_at(now), time.time(), "now"),
        _row(uuid7_at(now), time.time(), "bad\x00row"),
        _row(uuid.uuid4(), time.time(), "no time in its id"),
    ]
    # A worker killed after its commit runs the same job again: the same batch, twice.
    batch_enqueue(batch=batch)
    batch_enqueue(batch=batch)
    _work()
    assert Message.objects.count() == 3
    assert list(DeadLetter.objects.values_list("message_id", flat=True)) == [uuid.UUID(batch[2][0])]


# Reads across partitions


def test_a_date_filter_in_the_admin_scans_only_the_partitions_of_those_days(admin_user: Any) -> None:
    today_id = uuid7_at(datetime.now(tz=UTC))
    messages_persist(batch=[_row(today_id, time.time())])
    partitions.partitions_maintain(now=datetime.now(tz=UTC) - 10 * DAY)
    request = RequestFactory().get(
        "/admin/messages_app/message/",
        {"created_at__gte": str(_today()), "created_at__lt": str(_today() + DAY)},
    )
    request.user = admin_user
    model_admin = site._registry[Message]
    changelist = model_admin.get_changelist_instance(request)
    queryset = changelist.get_queryset(request)
    assert [row.id for row in queryset] == [today_id]
    plan = queryset.explain()
    scanned = {name for name in _names() if name in plan}
    assert scanned <= {f"messages_p{_today() + offset * DAY:%Y%m%d}" for offset in (-1, 0, 1)}
    assert f"messages_p{_today() - 5 * DAY:%Y%m%d}" not in plan
    assert "messages_default" not in plan


# Upgrading an installation whose table is not partitioned


def test_the_migration_moves_an_unpartitioned_table_with_its_rows_into_partitions() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([("messages_app", "0001_initial")])
    try:
        assert not partitions.is_partitioned()
        # A worker started before the migration ran changes nothing and says why.
        early = partitions.partitions_maintain()
        assert early.created == [] and "not partitioned yet" in early.errors[0]
        now = datetime.now(tz=UTC)
        v7 = [uuid7_at(now - offset * DAY) for offset in (0, 1, 2, 9)]
        legacy = [uuid.uuid4() for _ in range(3)]
        with connection.cursor() as cursor:
            for index, message_id in enumerate(v7 + legacy):
                cursor.execute(
                    "INSERT INTO messages VALUES (%s, %s, 1, 'old', now(), now())",
                    [str(message_id), index + 1],
                )
            for _ in range(2):  # a re-run job stored this dead letter twice before the unique key
                cursor.execute(
                    "INSERT INTO dead_letters (message_id, payload, error, job_id, created_at) "
                    "VALUES (%s, '{}', 'e', 'j', now())",
                    [str(v7[0])],
                )
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())

    assert partitions.is_partitioned()
    assert Message.objects.count() == 7
    for offset, message_id in zip((0, 1, 2, 9), v7, strict=True):
        assert _partition_of(message_id) == f"messages_p{now - offset * DAY:%Y%m%d}"
    assert {_partition_of(message_id) for message_id in legacy} == {"messages_default"}
    assert DeadLetter.objects.count() == 1
    # The primary key and the model's indexes are back, on the partitioned table.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'messages'::regclass"
        )
        indexes = {row[0] for row in cursor.fetchall()}
    assert indexes == {"messages_pkey", *(index.name for index in Message._meta.indexes)}
    assert messages_persist(batch=[_row(v7[1], time.time()), _row(legacy[0], time.time())]).inserted == 0


def test_minted_ids_are_uuid7s_of_now_with_the_receipt_fraction_and_random_bits() -> None:
    before_ns = time.time_ns()
    minted = [uuid.UUID(text) for text in partitions.uuid7_strings(20_000)]
    after_ns = time.time_ns()
    assert len(set(minted)) == 20_000
    assert minted == sorted(minted), "in the order they were asked for"
    assert all(value.version == 7 and value.variant == uuid.RFC_4122 for value in minted)
    # One read of the clock: the same millisecond and sub-millisecond fraction for all.
    assert len({value.int >> 64 for value in minted}) == 1
    millis = minted[0].int >> 80
    assert before_ns // 1_000_000 <= millis <= after_ns // 1_000_000
    assert partitions.id_time(minted[0]) == datetime.fromtimestamp(millis / 1000, tz=UTC)
    assert all(text == str(uuid.UUID(text)) for text in partitions.uuid7_strings(100))  # canonical form
    assert partitions.uuid7_strings(0) == []


def test_a_lone_minted_id_is_a_uuid7_of_now_with_random_bits() -> None:
    """POST /messages mints one id at a time, by a path of its own."""
    before_ns = time.time_ns()
    texts = [partitions.uuid7_strings(1)[0] for _ in range(5_000)]
    after_ns = time.time_ns()
    minted = [uuid.UUID(text) for text in texts]
    assert len(set(minted)) == 5_000
    assert all(text == str(value) for text, value in zip(texts, minted, strict=True))  # canonical form
    assert all(value.version == 7 and value.variant == uuid.RFC_4122 for value in minted)
    assert all(before_ns // 1_000_000 <= value.int >> 80 <= after_ns // 1_000_000 for value in minted)
    # The 62 random bits, every one of them set in some id and clear in another.
    random_bits = [value.int & ((1 << 62) - 1) for value in minted]
    assert functools.reduce(operator.or_, random_bits) == (1 << 62) - 1
    assert functools.reduce(operator.and_, random_bits) == 0
