"""Writes of the pipeline against real PostgreSQL and Redis: enqueue, persist (exactly once), reset.

Jobs run in-process on rq's SimpleWorker in burst mode with the JSON serializer, as the real
worker runs them, minus the subprocess.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime
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


def test_a_batch_mixing_new_and_known_ids_stores_exactly_the_new_ones() -> None:
    known = _rows(5)
    messages_persist(batch=known)
    first_commit = {str(row.id): (row.content, row.inserted_at) for row in Message.objects.all()}
    # A job re-run after a crash, or a client replaying its own ids, among new rows; a known id
    # comes back with other content, which must not replace what was stored first.
    new = _rows(7, channel_id=2)
    replayed = known[3]._replace(content="changed")
    batch = [new[0], known[0], *new[1:4], known[4], replayed, *new[4:]]
    result = messages_persist(batch=batch)
    assert (result.inserted, result.dead) == (7, 0)
    assert _stored_ids() == {row[0] for row in known + new}
    assert Message.objects.count() == 12
    stored = {str(row.id): (row.content, row.inserted_at) for row in Message.objects.all()}
    assert all(stored[message_id] == first for message_id, first in first_commit.items())


def test_a_batch_of_new_ids_is_stored_by_copy_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    fallbacks = _inserts_counted(monkeypatch)
    assert messages_persist(batch=_rows(40)).inserted == 40
    assert fallbacks == []
    assert Message.objects.count() == 40


@pytest.mark.parametrize("repeat", ["known", "within"])
def test_a_repeated_id_rolls_the_copy_back_and_the_insert_stores_each_id_once(
    monkeypatch: pytest.MonkeyPatch, repeat: str
) -> None:
    earlier = _rows(3)
    if repeat == "known":
        messages_persist(batch=earlier[:1])
        batch = [*_rows(10)[:5], earlier[0], *_rows(5)]
    else:
        batch = [*earlier, *_rows(10), earlier[1]]
    fallbacks = _inserts_counted(monkeypatch)
    result = messages_persist(batch=batch)
    # Nothing the COPY wrote survives its rollback: the INSERT alone stored the batch.
    assert fallbacks == [len(batch)]
    assert result.inserted == len({row[0] for row in batch}) - (repeat == "known")
    assert Message.objects.count() == len({row[0] for row in batch})


def test_a_bad_row_is_isolated_in_a_batch_that_also_holds_a_known_id() -> None:
    known = _rows(2)
    messages_persist(batch=known)
    good = _rows(8, channel_id=3)
    bad = BatchRow(str(uuid.uuid4()), 1, 1, "nul\x00here", time.time())
    result = messages_persist(batch=[*good[:3], known[1], *good[3:6], bad, known[0], *good[6:]])
    assert (result.inserted, result.dead) == (8, 1)
    assert _stored_ids() == {row[0] for row in known + good}
    assert str(DeadLetter.objects.get().message_id) == bad.id


def test_created_at_is_the_receipt_time_the_api_answered_to_the_microsecond() -> None:
    # Values where PostgreSQL's to_timestamp() rounds its product to a double before rounding to
    # the microsecond, and so lands 1 us off the queued_at the API's answer gave (Python's).
    moments = [1795416944.0707905, 1795425250.8650765, 1700000000.25]
    rows = [BatchRow(str(uuid.uuid4()), 1, 1, "hi", moment) for moment in moments]
    messages_persist(batch=rows[:1])
    messages_persist(batch=rows)  # a known id among them: the INSERT path
    stored = {str(row.id): row.created_at for row in Message.objects.all()}
    assert [stored[row.id] for row in rows] == [datetime.fromtimestamp(m, tz=UTC) for m in moments]


def test_ids_in_other_uuid_spellings_from_a_hand_made_job_are_stored_as_their_uuid() -> None:
    ids = [uuid.uuid4() for _ in range(4)]
    spellings = [str(ids[0]).upper(), ids[1].hex, f"{{{ids[2]}}}", str(ids[3])]
    batch = [BatchRow(spelling, 1, 1, "hi", time.time()) for spelling in spellings]
    assert messages_persist(batch=batch).inserted == 4
    assert set(Message.objects.values_list("id", flat=True)) == set(ids)


def test_ids_that_join_into_canonical_ones_are_not_stored_as_those() -> None:
    """Ids of 35 and 37 characters join into two canonical UUIDs: they are dead letters, not the
    two messages those would be."""
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    good = _rows(2)
    cut, grown = (
        BatchRow(first[:-1], 1, 1, "hi", time.time()),
        BatchRow(first[-1] + second, 1, 1, "hi", time.time()),
    )
    batch = [*good, cut, grown]
    result = messages_persist(batch=batch)
    assert (result.inserted, result.dead) == (2, 2)
    assert _stored_ids() == {row.id for row in good}
    assert {letter.payload["id"] for letter in DeadLetter.objects.all()} == {first[:-1], first[-1] + second}


@pytest.mark.parametrize(
    "received",
    [float("nan"), float("inf"), 1e20, 1e18, -1e18, "yesterday", None],
    ids=["nan", "inf", "huge", "past-the-calendar", "before-the-calendar", "text", "null"],
)
def test_a_receipt_time_that_is_no_time_goes_to_dead_letters(received: Any) -> None:
    good = _rows(4)
    bad = BatchRow(str(uuid.uuid4()), 1, 1, "hi", received)
    result = messages_persist(batch=[*good[:2], bad, *good[2:]])
    assert (result.inserted, result.dead) == (4, 1)
    assert str(DeadLetter.objects.get().message_id) == bad.id


def test_a_job_whose_row_has_no_receipt_time_finishes_with_its_metrics(redis_client: redis_lib.Redis) -> None:
    """A job made by hand: its row is a dead letter, and the latencies skip it (they raised
    after the commit, failing a job whose rows were already stored)."""
    good = _rows(3)
    services.batch_enqueue(batch=[*good, [str(uuid.uuid4()), 1, 1, "hi", "yesterday"]])
    _work()
    assert _stored_ids() == {row.id for row in good}
    assert DeadLetter.objects.count() == 1
    assert FailedJobRegistry(queue=services.ingest_queue()).count == 0
    assert int(redis_client.get(metrics.TOTAL_MESSAGES) or 0) == 3


def _inserts_counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each batch the INSERT ... ON CONFLICT fallback stores, from now on."""
    sizes: list[int] = []
    insert = services._rows_insert

    def counted(batch: Any, committed_at: datetime) -> int:
        sizes.append(len(batch))
        return insert(batch, committed_at)

    monkeypatch.setattr(services, "_rows_insert", counted)
    return sizes


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
    assert rows[:2] == [list(row) for row in good[:2]] and rows[-2:] == [list(row) for row in good[2:]]
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
    # Stored as JSON (zlib-compressed from 2 KiB), never pickle: any language can read the queue.
    raw = redis_client.hget(f"rq:job:{job.id}", "data")
    assert isinstance(raw, bytes)
    function, _instance, args, _kwargs = json.loads(raw)
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


def test_rows_decode_keeps_the_rows_as_decoded_and_every_other_entry_apart() -> None:
    row = BatchRow(str(uuid.uuid4()), 1, 2, "hi", 1.5)
    first, second = list(row), list(row)
    rows, malformed = rows_decode([first, None, [1, 2], "text", second])
    # The lists themselves, in BatchRow's field order: no object built per row.
    assert rows[0] is first and rows[1] is second
    assert BatchRow._make(rows[0]) == row
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


# messages_persist_streamed: a worker's transaction, written a chunk at a time


def _chunks_made(chunks: list[list[Any]], made: list[int]) -> Any:
    """The chunks as messages_persist_streamed takes them (as a job's rows arrive: JSON lists),
    noting each one as it is asked for."""
    for index, chunk in enumerate(chunks):
        made.append(index)
        yield rows_decode([list(row) if isinstance(row, tuple) else row for row in chunk])


def test_streamed_chunks_go_in_one_transaction_each_asked_for_after_the_last_went_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written: list[int] = []  # the chunks made, as each row goes into the COPY
    made: list[int] = []
    real_moments = services._moments

    def moments(received: Any) -> Any:
        written.append(len(made))  # a chunk's rows are being written: how many were made by then
        return real_moments(received)

    monkeypatch.setattr(services, "_moments", moments)
    chunks: list[list[Any]] = [_rows(3), _rows(2), _rows(4)]
    result, rows, malformed = services.messages_persist_streamed(_chunks_made(chunks, made), job_id="j")
    assert (result.inserted, result.dead) == (9, 0)
    assert written == [1, 2, 3], "each chunk written before the next one was made"
    assert [row[0] for row in rows] == [row[0] for chunk in chunks for row in chunk] and malformed == []
    assert _stored_ids() == {row[0] for chunk in chunks for row in chunk}
    assert len(set(Message.objects.values_list("inserted_at", flat=True))) == 1  # one commit


def test_a_chunk_is_converted_and_written_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL takes in a chunk's first rows while the rest are converted: a drained
    transaction opens with one chunk of up to 20,000 rows."""
    converted: list[int] = []
    real_uuid_bytes = services._uuid_bytes

    def uuid_bytes(ids: Any) -> Any:
        converted.append(len(ids))
        return real_uuid_bytes(ids)

    monkeypatch.setattr(services, "COPY_SLICE_ROWS", 2)
    monkeypatch.setattr(services, "_uuid_bytes", uuid_bytes)
    chunks: list[list[Any]] = [_rows(5), _rows(1)]
    result, _, _ = services.messages_persist_streamed(_chunks_made(chunks, []), job_id="j")
    assert (result.inserted, result.dead) == (6, 0)
    assert converted == [2, 2, 1, 1]
    stored = {str(message.id): message for message in Message.objects.all()}
    for row in (row for chunk in chunks for row in chunk):
        message = stored[row.id]
        assert (message.user_id, message.channel_id, message.content) == (
            row.user_id,
            row.channel_id,
            row.content,
        )
        assert message.created_at.timestamp() == pytest.approx(row.received, abs=1e-6)


def test_a_streamed_transaction_refused_is_stored_again_whole() -> None:
    """An id repeated across chunks (a replay) and a bad row in a later chunk: the COPY fails, and
    everything gathered is stored as messages_persist stores a batch."""
    first, second = _rows(3), _rows(3)
    bad = BatchRow(str(uuid.uuid4()), BIGINT_MAX + 1, 1, "too big", time.time())
    chunks: list[list[Any]] = [[*first, "not a row"], [*second, first[0], bad]]
    result, rows, malformed = services.messages_persist_streamed(_chunks_made(chunks, []), job_id="j")
    assert (result.inserted, result.dead) == (6, 2)
    assert _stored_ids() == {row[0] for row in (*first, *second)}
    assert len(rows) == 8 and malformed == ["not a row"]
    assert DeadLetter.objects.count() == 2


def test_a_chunk_that_cannot_be_made_rolls_the_transaction_back_and_raises_its_error() -> None:
    class Gone(Exception):
        pass

    def chunks() -> Any:
        yield rows_decode([list(row) for row in _rows(3)])
        raise Gone("Redis went away while claiming the next jobs")

    with pytest.raises(Gone):
        services.messages_persist_streamed(chunks(), job_id="j")
    assert Message.objects.count() == 0


def test_rows_received_after_their_transaction_started_are_not_stored_as_inserted_before_it() -> None:
    """A transaction takes in jobs queued while it runs: their rows' `inserted_at` is their own
    receipt, not the transaction's start, so receipt -> commit is never negative."""
    started = time.time()
    early, late = _rows(2, received=started - 1), _rows(2, received=started + 5)
    result, _, _ = services.messages_persist_streamed(_chunks_made([early, late], []), job_id="j")
    assert result.inserted == 4
    stored = {str(message.id): message for message in Message.objects.all()}
    late_at = stored[late[0].id].created_at
    assert all(stored[row.id].inserted_at == late_at for row in late)
    assert all(stored[row.id].created_at <= stored[row.id].inserted_at < late_at for row in early)


def test_rows_stored_again_by_insert_are_not_inserted_before_their_receipt() -> None:
    """The same for the INSERT ... ON CONFLICT path (here: an id repeated within the batch)."""
    (row,) = _rows(1, received=time.time() + 5)
    result = services.messages_persist(batch=[row, row, *_rows(1)])
    assert (result.inserted, result.dead) == (2, 0)
    assert all(message.inserted_at >= message.created_at for message in Message.objects.all())
    assert Message.objects.get(id=row.id).inserted_at == Message.objects.get(id=row.id).created_at
