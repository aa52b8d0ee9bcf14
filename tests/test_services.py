"""Writes of the pipeline against real PostgreSQL and Redis: enqueue, persist (exactly once), reset.

Jobs run in-process on rq's SimpleWorker in burst mode with the JSON serializer, as the real
worker runs them, minus the subprocess.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import zlib
from typing import Any

import pytest
import redis as redis_lib
from django.core.management import call_command
from rq import SimpleWorker
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from messages_app import services
from messages_app.models import BIGINT_MAX, DeadLetter, Message
from messages_app.services import (
    PERSIST_RETRY,
    BatchRow,
    batch_enqueue,
    messages_persist,
    messages_reset,
    rows_decode,
)
from telemetry import metrics

pytestmark = pytest.mark.django_db(transaction=True)


def _rows(count: int, *, channel_id: int = 1, received: float | None = None) -> list[BatchRow]:
    received = time.time() if received is None else received
    return [
        BatchRow(str(uuid.uuid4()), 1 + index, channel_id, f"message {index}", received)
        for index in range(count)
    ]


def _work() -> None:
    """Run every queued job to the end, in this process."""
    queue = services.ingest_queue()
    worker = SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer)
    worker.work(burst=True)


def _stored_ids() -> set[str]:
    return {str(pk) for pk in Message.objects.values_list("id", flat=True)}


# messages_persist


def test_persist_stores_every_row_with_its_fields() -> None:
    batch = _rows(3, channel_id=7, received=1_700_000_000.25)
    result = messages_persist(batch=batch)
    assert (result.inserted, result.dead) == (3, 0)
    stored = {str(row.id): row for row in Message.objects.all()}
    assert set(stored) == {row[0] for row in batch}
    first = stored[batch[0][0]]
    assert (first.user_id, first.channel_id, first.content) == (1, 7, "message 0")
    assert first.created_at.timestamp() == pytest.approx(1_700_000_000.25, abs=1e-3)
    assert first.inserted_at >= first.created_at


def test_persisting_the_same_batch_twice_stores_each_row_once() -> None:
    batch = _rows(50)
    assert messages_persist(batch=batch).inserted == 50
    again = messages_persist(batch=batch)
    assert (again.inserted, again.dead) == (0, 0)
    assert Message.objects.count() == 50


def test_persist_stores_a_row_repeated_inside_one_batch_once() -> None:
    batch = _rows(3)
    result = messages_persist(batch=[*batch, batch[1], batch[1]])
    assert result.inserted == 3
    assert _stored_ids() == {row[0] for row in batch}


def test_persist_accepts_the_extremes_validation_lets_through() -> None:
    batch = [
        BatchRow(str(uuid.uuid4()), BIGINT_MAX, BIGINT_MAX, "x" * 2000, time.time()),
        BatchRow(str(uuid.uuid4()), 1, 1, "\U0001f600" * 2000, time.time()),
        BatchRow(str(uuid.uuid4()), 1, 1, "quotes ' \" \\ and {braces} , commas", time.time()),
    ]
    assert messages_persist(batch=batch).inserted == 3
    assert set(Message.objects.values_list("content", flat=True)) == {row[3] for row in batch}


@pytest.mark.parametrize(
    "bad_values",
    [
        [None, 1, 1, "a\x00b", 0.0],  # NUL: PostgreSQL's text cannot hold it
        [None, BIGINT_MAX + 1, 1, "too big", 0.0],  # outside bigint
        [None, 1, -(2**63) - 1, "too small", 0.0],
        [None, 1, 1, "x" * 2001, 0.0],  # over varchar(2000)
        [None, 1, 1, "lone \ud800 surrogate", 0.0],  # not encodable as UTF-8
    ],
    ids=["nul", "bigint-overflow", "bigint-underflow", "too-long", "lone-surrogate"],
)
def test_a_bad_row_goes_to_dead_letters_and_the_rest_of_its_batch_lands(bad_values: list[Any]) -> None:
    bad_row = BatchRow(str(uuid.uuid4()), bad_values[1], bad_values[2], bad_values[3], time.time())
    good = _rows(9)
    batch = [*good[:4], bad_row, *good[4:]]
    result = messages_persist(batch=batch, job_id="job-1")
    assert (result.inserted, result.dead) == (9, 1)
    assert _stored_ids() == {row[0] for row in good}
    letter = DeadLetter.objects.get()
    assert str(letter.message_id) == bad_row[0]
    assert letter.job_id == "job-1"
    assert letter.error
    # jsonb refuses some of what text refuses (a lone surrogate): then every field is kept as a repr.
    assert letter.payload["id"] in (bad_row[0], repr(bad_row[0]))


@pytest.mark.parametrize(
    "corrupt_row",
    [
        ["not-a-uuid", 1, 1, "x", 0.0],
        ["only", "four", "fields", "x"],
        [None, 1, 1, "x", 0.0, "extra"],
        None,
        42,
    ],
    ids=["bad-uuid", "short", "long", "null", "number"],
)
def test_a_corrupt_row_from_outside_the_api_is_kept_aside_too(corrupt_row: Any) -> None:
    good = _rows(4)
    # As a job's argument arrives from JSON: lists.
    rows, malformed = rows_decode(
        [*[list(row) for row in good[:2]], corrupt_row, *[list(row) for row in good[2:]]]
    )
    assert rows[:2] == good[:2] and rows[-2:] == good[2:]
    result = messages_persist(batch=rows, malformed=malformed, job_id="hand-made")
    assert (result.inserted, result.dead) == (4, 1)
    assert _stored_ids() == {row[0] for row in good}
    letter = DeadLetter.objects.get()
    assert letter.job_id == "hand-made"
    # No usable id: a key derived from the row stands in, so a re-run keeps one dead letter.
    again = messages_persist(batch=[*good[:2], corrupt_row, *good[2:]], job_id="hand-made")
    assert (again.inserted, DeadLetter.objects.count()) == (0, 1)


def test_several_bad_rows_are_each_isolated() -> None:
    good = _rows(20)
    bad = [BatchRow(str(uuid.uuid4()), 1, 1, f"bad\x00{index}", time.time()) for index in range(3)]
    batch = [bad[0], *good[:10], bad[1], *good[10:], bad[2]]
    result = messages_persist(batch=batch)
    assert (result.inserted, result.dead) == (20, 3)
    assert {str(pk) for pk in DeadLetter.objects.values_list("message_id", flat=True)} == {
        row[0] for row in bad
    }
    # The NUL cannot go into jsonb either: the payload keeps a readable repr of the content.
    assert all("\\x00" in letter.payload["content"] for letter in DeadLetter.objects.all())


# Jobs through rq, in-process


def test_batch_enqueue_puts_one_json_job_with_a_retry_policy(redis_client: redis_lib.Redis) -> None:
    batch = _rows(4)
    enqueued = batch_enqueue(batch=batch)
    assert enqueued.backlog == 4
    assert enqueued.jobs_waiting == 1
    (job,) = services.ingest_queue().get_jobs()
    # Each BatchRow travels as a JSON list, in its field order.
    as_json = [[row.id, row.user_id, row.channel_id, row.content, row.received] for row in batch]
    assert list(job.args) == [as_json]
    assert job.retries_left == PERSIST_RETRY.max
    assert job.timeout is not None and job.timeout <= 60
    # Stored as (zlib-compressed) JSON, never pickle: any language can read the queue.
    raw = redis_client.hget(f"rq:job:{job.id}", "data")
    assert isinstance(raw, bytes)
    function, _instance, args, _kwargs = json.loads(zlib.decompress(raw))
    assert function == "messages_app.jobs.persist_batch"
    assert args == [as_json]


def test_a_job_run_by_a_worker_persists_its_batch_and_updates_the_metrics(
    redis_client: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = _rows(30), _rows(20)
    batch_enqueue(batch=first)
    batch_enqueue(batch=second)
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 50
    with caplog.at_level(logging.INFO, logger="messages_app.worker"):
        _work()

    assert _stored_ids() == {row[0] for row in first + second}
    assert services.ingest_queue().count == 0
    assert int(redis_client.get(metrics.TOTAL_MESSAGES) or 0) == 50
    # The first job took the second, queued behind it, into its transaction: one batch.
    assert int(redis_client.get(metrics.TOTAL_BATCHES) or 0) == 1
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 0
    raw_histogram: dict[bytes, bytes] = redis_client.hgetall(metrics.LATENCY_HISTOGRAM)  # type: ignore[assignment]
    histogram = {key.decode(): float(value) for key, value in raw_histogram.items()}
    assert histogram["count"] == 50
    assert histogram["sum"] > 0
    assert sum(value for key, value in histogram.items() if key.startswith("b")) == 50
    # The per-second hashes the dashboard merges hold the same batch.
    seconds = [redis_client.hgetall(key) for key in redis_client.scan_iter(f"{metrics.SECOND_KEY_PREFIX}*")]
    merged = metrics.window_summary(seconds)
    assert merged["persisted"] == 50
    assert merged["batches"] == 1
    assert merged["lat_count"] == 50
    assert merged["accepted"] == 50
    last = json.loads(redis_client.get(metrics.LAST_BATCH) or "{}")
    assert (last["size"], last["inserted"], last["dead"]) == (50, 50, 0)
    assert redis_client.llen(metrics.RECENT_BATCHES) == 1
    logged = [record.getMessage() for record in caplog.records if "saved" in record.getMessage()]
    assert len(logged) == 1
    assert logged[0].startswith("Batch #1 saved: 50 messages in ")
    assert logged[0].endswith("| total 50")


def test_a_job_run_twice_stores_its_rows_once(redis_client: redis_lib.Redis) -> None:
    batch = _rows(10)
    batch_enqueue(batch=batch)
    _work()
    batch_enqueue(batch=batch)  # as a retried or duplicated job would
    _work()
    assert Message.objects.count() == 10
    assert int(redis_client.get(metrics.TOTAL_MESSAGES) or 0) == 10
    assert int(redis_client.get(metrics.TOTAL_BATCHES) or 0) == 2
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 0


def test_a_job_with_a_bad_row_succeeds_and_counts_the_dead_letter(redis_client: redis_lib.Redis) -> None:
    good = _rows(5)
    bad = BatchRow(str(uuid.uuid4()), 1, 1, "nul\x00here", time.time())
    batch_enqueue(batch=[*good, bad])
    _work()
    assert Message.objects.count() == 5
    assert DeadLetter.objects.count() == 1
    queue = services.ingest_queue()
    assert FailedJobRegistry(queue=queue).count == 0
    assert int(redis_client.get(metrics.TOTAL_DEAD_LETTERS) or 0) == 1
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 0
    assert json.loads(redis_client.get(metrics.LAST_BATCH) or "{}")["dead"] == 1


def test_a_job_holding_entries_that_are_not_rows_sets_them_aside_and_lands_the_rest(
    redis_client: redis_lib.Redis,
) -> None:
    good = _rows(5)
    # A job made by hand or corrupted: entries of the wrong shape, among good rows.
    batch_enqueue(batch=[*good[:2], ["only", "four", "fields", "x"], *good[2:], [*good[0], "extra"]])
    _work()
    assert _stored_ids() == {row.id for row in good}
    assert DeadLetter.objects.count() == 2
    assert FailedJobRegistry(queue=services.ingest_queue()).count == 0
    assert json.loads(redis_client.get(metrics.LAST_BATCH) or "{}")["dead"] == 2


def test_rows_decode_rebuilds_rows_and_keeps_every_other_entry_apart() -> None:
    row = BatchRow(str(uuid.uuid4()), 1, 2, "hi", 1.5)
    rows, malformed = rows_decode([list(row), None, [1, 2], "text", list(row)])
    assert rows == [row, row] and all(type(decoded) is BatchRow for decoded in rows)
    assert rows[0].content == "hi" and rows[0].received == 1.5
    assert malformed == [None, [1, 2], "text"]


# messages_reset


def test_reset_empties_the_tables_and_counters_but_keeps_the_backlog(redis_client: redis_lib.Redis) -> None:
    batch_enqueue(batch=_rows(3))
    _work()
    messages_persist(batch=[BatchRow(str(uuid.uuid4()), 1, 1, "\x00", time.time())])
    batch_enqueue(batch=_rows(2))  # acknowledged, not yet persisted
    messages_reset()
    assert Message.objects.count() == 0
    assert DeadLetter.objects.count() == 0
    assert redis_client.get(metrics.TOTAL_MESSAGES) is None
    assert redis_client.get(metrics.LATENCY_HISTOGRAM) is None
    assert list(redis_client.scan_iter(f"{metrics.SECOND_KEY_PREFIX}*")) == []
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 2
    assert services.ingest_queue().count == 1


def test_metrics_reconcile_sets_the_counters_a_crash_left_short_from_the_tables(
    redis_client: redis_lib.Redis,
) -> None:
    # Rows committed by a job that died before recording its metrics: in the table, not counted.
    services.messages_persist(batch=_rows(12))
    services.messages_persist(batch=[], malformed=["not a row"])
    redis_client.set(metrics.TOTAL_MESSAGES, 5)
    assert Message.objects.count() == 12 and DeadLetter.objects.count() == 1

    call_command("metrics_reconcile", verbosity=0)

    assert int(redis_client.get(metrics.TOTAL_MESSAGES) or 0) == 12
    assert int(redis_client.get(metrics.TOTAL_DEAD_LETTERS) or 0) == 1
