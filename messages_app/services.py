"""Writes of the ingest pipeline: enqueue a batch, persist a batch, reset."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import django_rq
import psycopg
from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from psycopg.types.string import BytesBinaryDumper
from redis.asyncio import Redis as AsyncRedis
from rq import Queue, Retry

from messages_app.job_writer import JobWriter
from messages_app.models import DeadLetter, Message
from telemetry import metrics
from telemetry.connection import redis_connection

logger = logging.getLogger(__name__)

INGEST_QUEUE = "ingest"


class BatchRow(NamedTuple):
    """One message of a batch, as the API accepted it.

    In the rq job it travels as a JSON list in this field order (a tuple encodes as a list),
    which the worker reads as it is (rows_decode()).
    """

    id: str
    user_id: int
    channel_id: int
    content: str
    received: float  # when the API received it, seconds since the epoch


_ROW_FIELDS = len(BatchRow._fields)


def rows_decode(batch: list[Any]) -> tuple[list[list[Any]], list[Any]]:
    """A job's batch as JSON decoded it: its rows of the right shape, and whatever else it holds.

    The rows are the lists JSON made, in BatchRow's field order: building a BatchRow for each
    cost ~0.15 us a row, and the worker reads their fields by position anyway. The values are
    not checked here: PostgreSQL refuses what does not fit, and messages_persist sets those rows
    aside. A job not made by the API (corrupt, or enqueued by hand) may also hold entries that
    are not rows at all; those are returned apart, for the dead-letter table.
    """
    rows = [entry for entry in batch if type(entry) is list and len(entry) == _ROW_FIELDS]
    if len(rows) == len(batch):
        return rows, []
    malformed = [entry for entry in batch if not (type(entry) is list and len(entry) == _ROW_FIELDS)]
    return rows, malformed


# PostgreSQL down: retry with backoff for about 25 minutes before giving a job up to the failed
# registry (from which `rq requeue` brings it back); a worker killed mid-batch uses one retry too.
# rq picks interval[len(interval) - retries_left]: a shorter list than `max` repeats its FIRST
# value (here 23 retries 1 s apart, ~2.4 minutes in all), so the list spells out every retry.
PERSIST_JOB = "messages_app.jobs.persist_batch"
# The job's meta field that says how many rows it carries: a worker reads it (not the whole job)
# to choose which queued jobs to take into its transaction (messages_app/jobs.py).
JOB_ROWS_META = "rows"
PERSIST_RETRY = Retry(max=30, interval=[1, 2, 4, 8, 15, 30, *[60] * 24])


@functools.cache
def ingest_queue() -> Queue:
    """The `ingest` queue, built once per process on the shared Redis client (django_rq.get_queue()
    alone would open a connection per call)."""
    return django_rq.get_queue(INGEST_QUEUE, connection=redis_connection())


class Enqueued(NamedTuple):
    """What Redis said right after a batch went in."""

    backlog: int  # messages accepted and not yet persisted, this batch included
    jobs_waiting: int  # jobs in the queue no worker has taken yet: how far behind the workers are


def batch_enqueue(*, batch: Sequence[Sequence[Any]]) -> Enqueued:
    """Put one batch in Redis as one rq job, with its counters, in one atomic command (confirmed
    by INGEST_REDIS_MIN_REPLICAS replicas when set).

    `batch` holds BatchRows, or lists in BatchRow's field order (tests, jobs made by hand).
    Blocking (redis-py): the API's batcher runs it in a thread, once per batch, only when
    INGEST_REDIS_MIN_REPLICAS asks for WAIT; otherwise it awaits batch_enqueue_async.
    """
    written = _persist_job_writer().write(
        ingest_queue().connection,
        batch,
        **_persist_job_of(batch),
        min_replicas=settings.INGEST_REDIS_MIN_REPLICAS,
        replica_timeout_ms=settings.INGEST_REDIS_REPLICA_TIMEOUT_MS,
    )
    return Enqueued(backlog=written.backlog, jobs_waiting=written.jobs_waiting)


async def batch_enqueue_async(
    client: AsyncRedis, *, batch: Sequence[Sequence[Any]], reply_spin_s: float = 0.0
) -> Enqueued:
    """batch_enqueue on an asyncio client (telemetry.connection.redis_async_client) of the event
    loop it runs on: the batcher's way while INGEST_REDIS_MIN_REPLICAS is 0. A blocking enqueue
    in a thread wakes that thread and then the loop again for every flush, each wake-up of a
    sleeping core ~0.1 ms on this kind of virtual machine: most of what a lone message waited."""
    written = await _persist_job_writer().write_async(
        client, batch, reply_spin_s=reply_spin_s, **_persist_job_of(batch)
    )
    return Enqueued(backlog=written.backlog, jobs_waiting=written.jobs_waiting)


def _persist_job_of(batch: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """What a persist job of `batch` says of itself, and the messages it counts as accepted."""
    return {
        "meta": {JOB_ROWS_META: len(batch)},
        "description": f"persist a batch of {len(batch)} messages",
        "counted": len(batch),
    }


@functools.cache
def _persist_job_writer() -> JobWriter:
    """The persist job as rq would enqueue it (messages_app/job_writer.py), built once per process."""
    return JobWriter(
        ingest_queue(),
        # By name: the job module imports this one.
        PERSIST_JOB,
        timeout=settings.INGEST_JOB_TIMEOUT,
        result_ttl=0,
        failure_ttl=7 * 24 * 3600,
        retry=PERSIST_RETRY,
    )


@dataclass(frozen=True)
class PersistResult:
    inserted: int
    dead: int


# _rows_copy converts and writes a chunk's rows this many at a time, so PostgreSQL starts taking
# in the first while the rest are converted. One worker draining a backlog opens each transaction
# with a chunk of up to 20,000 rows (messages_app/jobs.py): converted whole, PostgreSQL waited
# ~10 ms of every ~135 for its first row (README, Benchmarks).
COPY_SLICE_ROWS = 1_000


def _rows_copy(chunks: Iterable[Sequence[Sequence[Any]]], committed_at: datetime) -> int:
    """Store the rows of every chunk with one binary COPY; return how many. A known id fails it
    (unique violation).

    COPY costs PostgreSQL about 60% of what INSERT ... ON CONFLICT costs a row (it buffers rows
    into multi-inserts, and checks no conflict before each), and binary fields need no parsing
    on either side. The ids and times are converted COPY_SLICE_ROWS at once (README). Rows go to
    PostgreSQL as they are written, which takes them in while the next ones are converted and the
    next chunk is made.
    """
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        # Binary COPY sends a field's bytes and no type: a uuid's are its 16 bytes, which a bytea
        # dumper passes through (psycopg's uuid dumper wants uuid.UUID objects, ~0.7 us a row to
        # build from the strings). The bytea dumper psycopg picks by default also unwraps DB-API
        # Binary objects, in Python; its plain bytes dumper is compiled: ~0.2 us a row less.
        cursor.adapters.register_dumper(bytes, BytesBinaryDumper)
        with cursor.copy(_copy_sql()) as copy:
            copy.set_types(["bytea", "int8", "int8", "text", "timestamptz", "timestamptz"])
            for piece in _slices(chunks):
                ids, user_ids, channel_ids, contents, received = zip(*piece, strict=True)
                moments = _moments(received)
                created_at = map(moments.__getitem__, received)
                inserted_at = _inserted_at(committed_at, moments)
                for row in zip(_uuid_bytes(ids), user_ids, channel_ids, contents, created_at,
                               itertools.repeat(inserted_at)):  # fmt: skip
                    copy.write_row(row)
        return cursor.rowcount  # read before the cursor closes, which forgets it


def _slices(chunks: Iterable[Sequence[Sequence[Any]]]) -> Iterator[Sequence[Sequence[Any]]]:
    """Every chunk's rows, COPY_SLICE_ROWS at a time; each chunk asked for once the slices
    before it are taken."""
    for chunk in chunks:
        for start in range(0, len(chunk), COPY_SLICE_ROWS):
            yield chunk[start : start + COPY_SLICE_ROWS]


def _uuid_bytes(ids: Sequence[Any]) -> list[bytes]:
    """The ids as 16 bytes each: canonical UUID strings (all the API makes) in one pass over them
    all, anything else one by one as uuid.UUID reads it (ValueError for what is not a UUID)."""
    count = len(ids)
    dashes = "-" * count
    with contextlib.suppress(TypeError, ValueError):
        joined = "".join(ids)
        # 36 characters each (not just in total: ids of 35 and 37 characters would join into two
        # valid ones), dashes where the canonical form has them and nowhere else, and the rest
        # hexadecimal digits: then every id is the 16 bytes of its 32 digits.
        if all(len(message_id) == 36 for message_id in ids) and all(
            joined[at::36] == dashes for at in (8, 13, 18, 23)
        ):
            raw = bytes.fromhex(joined.replace("-", ""))
            if len(raw) == 16 * count:
                return [raw[at : at + 16] for at in range(0, len(raw), 16)]
    return [uuid.UUID(str(message_id)).bytes for message_id in ids]


def _inserted_at(committed_at: datetime, moments: dict[Any, datetime]) -> datetime:
    """The `inserted_at` of rows received at `moments` (_moments), stored by a transaction that
    started at `committed_at`: that time, or the latest receipt when a row came after it. A
    transaction takes in jobs queued while it runs (messages_app/jobs.py), whose rows must not
    read as stored before they were received."""
    return max(committed_at, max(moments.values(), default=committed_at))


def _moments(received: Sequence[Any]) -> dict[Any, datetime]:
    """Each distinct receipt time as a datetime, the one the API's answer gave as `queued_at`: the
    rows of one request share theirs, so a batch holds few."""
    try:
        return {moment: datetime.fromtimestamp(moment, tz=UTC) for moment in set(received)}
    except (OSError, OverflowError) as exc:
        # Past the platform's time_t (OverflowError) or its calendar (OSError, from ~1e17 s on):
        # a hand-made job's row, not a time; ValueError sends it to the dead letters.
        raise ValueError(f"receipt time out of range: {exc}") from exc


def _rows_insert(batch: Sequence[Sequence[Any]], committed_at: datetime) -> int:
    """Insert rows in one statement, ignoring known ids; return how many were new.

    `unnest` over typed arrays sends the whole batch as a few array parameters: one round trip
    and no per-row SQL; measured 2-3x bulk_create's rows/s (README).
    """
    ids, user_ids, channel_ids, contents, received = zip(*batch, strict=True)
    moments = _moments(received)
    created_at = list(map(moments.__getitem__, received))
    inserted_at = _inserted_at(committed_at, moments)
    params = [inserted_at, list(ids), list(user_ids), list(channel_ids), list(contents), created_at]
    connection.ensure_connection()
    # psycopg's own cursor binds parameters server-side; Django's default client-side binding
    # quotes every array element into the SQL text, which profiled as most of the insert's CPU.
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_insert_sql(), params)
        return cursor.rowcount


def _columns() -> tuple[str, dict[str, str]]:
    meta = Message._meta
    column = {field.name: connection.ops.quote_name(str(field.column)) for field in meta.concrete_fields}
    return connection.ops.quote_name(meta.db_table), column


@functools.cache
def _copy_sql() -> str:
    table, column = _columns()
    return (
        f"COPY {table} ({column['id']}, {column['user_id']}, {column['channel_id']}, {column['content']}, "
        f"{column['created_at']}, {column['inserted_at']}) FROM STDIN (FORMAT BINARY)"
    )


@functools.cache
def _insert_sql() -> str:
    table, column = _columns()
    # Identifiers come from the model's own metadata, quoted; every value is a bound parameter.
    return (
        f"INSERT INTO {table} ({column['id']}, {column['user_id']}, {column['channel_id']}, "  # noqa: S608
        f"{column['content']}, {column['created_at']}, {column['inserted_at']}) "
        "SELECT u.id, u.user_id, u.channel_id, u.content, u.created_at, %s "
        "FROM unnest(%b::uuid[], %b::bigint[], %b::bigint[], %b::text[], %b::timestamptz[]) "
        "AS u(id, user_id, channel_id, content, created_at) "
        f"ON CONFLICT ({column['id']}) DO NOTHING"
    )


def messages_persist(
    *, batch: Sequence[Sequence[Any]], malformed: Sequence[Any] = (), job_id: str = ""
) -> PersistResult:
    """Store a batch in one transaction, exactly once per id; isolate rows PostgreSQL refuses.

    Connection failures propagate so rq retries the whole job with backoff. A data error (a row
    that slipped past validation) splits the batch until the bad rows stand alone; those go to
    the dead-letter table and every other row lands. `malformed` entries (not rows at all, see
    rows_decode) go to the dead-letter table once the rows are stored. The rows are BatchRows,
    or lists in BatchRow's field order: only their positions are read.
    """
    result = _rows_persist(batch, job_id) if batch else PersistResult(inserted=0, dead=0)
    return PersistResult(inserted=result.inserted, dead=result.dead + _malformed_store(malformed, job_id))


def _malformed_store(malformed: Sequence[Any], job_id: str) -> int:
    """Keep entries that are not rows at all as dead letters; return how many."""
    for entry in malformed:
        _dead_letter_store(entry, ValueError(f"not a row of {_ROW_FIELDS} fields"), job_id)
    return len(malformed)


Chunk = tuple[Sequence[Sequence[Any]], Sequence[Any]]  # rows, and malformed entries (rows_decode)


class _ChunkFailed(Exception):
    """Making a chunk failed (not PostgreSQL refusing rows): the caller's error, raised as is."""


def messages_persist_streamed(
    chunks: Iterable[Chunk], *, job_id: str = ""
) -> tuple[PersistResult, list[Any], list[Any]]:
    """messages_persist of every chunk's rows and malformed entries together, in one transaction,
    each chunk's rows written into the COPY as it comes: a caller that makes the next chunk
    (claims and decodes more jobs) while PostgreSQL takes in the rows written so far overlaps
    the two. Returns the result, and every row and malformed entry the chunks held.

    Should PostgreSQL refuse the COPY (a known id, a bad row), everything gathered is stored again
    as messages_persist stores a batch; chunks not asked for yet are not made. An error making a
    chunk rolls the transaction back and is raised as is.
    """
    rows: list[Any] = []
    malformed: list[Any] = []

    def gathered() -> Iterator[Sequence[Sequence[Any]]]:
        source = iter(chunks)
        while True:
            try:
                chunk_rows, chunk_malformed = next(source)
            except StopIteration:
                return
            except Exception as exc:
                raise _ChunkFailed() from exc
            rows.extend(chunk_rows)
            malformed.extend(chunk_malformed)
            if chunk_rows:
                yield chunk_rows

    try:
        with transaction.atomic():
            result = PersistResult(inserted=_rows_copy(gathered(), datetime.now(tz=UTC)), dead=0)
    except _ChunkFailed as failed:
        assert failed.__cause__ is not None  # always raised from the chunk's error
        raise failed.__cause__ from None
    # As _rows_persist and _rows_store would take them: a unique violation, a refused row.
    except (DataError, IntegrityError, ValueError, TypeError, OverflowError) as exc:
        logger.info("Streamed COPY of %d rows refused (%s); storing them again", len(rows), exc)
        result = _rows_persist(rows, job_id) if rows else PersistResult(inserted=0, dead=0)
    dead = result.dead + _malformed_store(malformed, job_id)
    return PersistResult(inserted=result.inserted, dead=dead), rows, malformed


def _rows_persist(batch: Sequence[Sequence[Any]], job_id: str) -> PersistResult:
    committed_at = datetime.now(tz=UTC)
    try:
        return PersistResult(inserted=_rows_store(batch, committed_at), dead=0)
    # PostgreSQL's refusals, and psycopg's or Python's for a value it cannot convert (a number
    # past bigint, a string that is no UUID, a time past datetime's range) before it is sent.
    except (DataError, IntegrityError, ValueError, TypeError, OverflowError) as exc:
        if len(batch) == 1:
            _dead_letter_store(batch[0], exc, job_id)
            return PersistResult(inserted=0, dead=1)
        logger.warning("Batch of %d refused (%s); splitting to isolate the bad rows", len(batch), exc)
    middle = len(batch) // 2
    first = _rows_persist(batch[:middle], job_id)
    second = _rows_persist(batch[middle:], job_id)
    return PersistResult(inserted=first.inserted + second.inserted, dead=first.dead + second.dead)


def _rows_store(batch: Sequence[Sequence[Any]], committed_at: datetime) -> int:
    """Store rows in one transaction, each id once; return how many were new.

    COPY first: the rows of a batch are new but in a re-run (its worker died after the commit),
    a client's replay of its own id, or an id repeated within the batch. Any of those fails the
    COPY with a unique violation; its transaction is rolled back and the batch is stored again by
    INSERT ... ON CONFLICT DO NOTHING. Redoing the transaction costs the common path nothing; a
    savepoint around the COPY would cost two more round trips every batch (~0.7 us a row more,
    measured in batches of 100).
    """
    try:
        with transaction.atomic():
            return _rows_copy([batch], committed_at)
    except IntegrityError as exc:
        if not isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
            raise
    with transaction.atomic():
        return _rows_insert(batch, committed_at)


def _dead_letter_store(row: Any, exc: Exception, job_id: str) -> None:
    # A job not made by the API (corrupt, or enqueued by hand) may hold an entry of any shape:
    # keep whatever it holds rather than fail the whole job on it again at every retry.
    fields = ("id", "user_id", "channel_id", "content", "received_at")
    payload: dict[str, Any] = (
        dict(zip(fields, row, strict=False)) if isinstance(row, list | tuple) else {"row": row}
    )
    try:
        message_id = uuid.UUID(str(payload.get("id")))
    except ValueError:
        # The key that makes a re-run store this dead letter once: derived from what the row holds.
        # A row as decoded (a BatchRow) and as it arrived (a JSON list) must give the same key.
        canonical = list(row) if isinstance(row, tuple | list) else row
        message_id = uuid.uuid5(uuid.NAMESPACE_OID, repr(canonical))
    logger.error("Message %s cannot be stored, kept as a dead letter: %s", payload.get("id"), exc)
    # JSON (and so jsonb) cannot hold every string PostgreSQL's text refuses either: keep a repr.
    if "\x00" in str(payload.get("content")):
        payload["content"] = repr(payload["content"])
    try:
        _dead_letter_insert(message_id, payload, str(exc)[:2000], job_id)
    except (DataError, ValueError, TypeError):
        payload = {key: repr(value) for key, value in payload.items()}
        _dead_letter_insert(message_id, payload, str(exc)[:2000], job_id)


def _dead_letter_insert(message_id: uuid.UUID, payload: dict[str, Any], error: str, job_id: str) -> None:
    # A job re-run after its worker died meets its own dead letters again: keep the first.
    letter = DeadLetter(message_id=message_id, payload=payload, error=error, job_id=job_id)
    DeadLetter.objects.bulk_create([letter], ignore_conflicts=True)


def messages_reset() -> None:
    """Delete every stored message and dead letter and zero the counters (staff only)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"TRUNCATE {connection.ops.quote_name(Message._meta.db_table)}, "
            f"{connection.ops.quote_name(DeadLetter._meta.db_table)}"
        )
    # queue_length stays: the jobs still queued are acknowledged messages and will land.
    metrics.metrics_reset(redis_connection())


# --- Counters reconciled with the tables -----------------------------------------------------------


def counters_reconcile() -> tuple[int, int]:
    """Set the stored-message and dead-letter counters to the tables' exact counts; returns them.

    Exact only while no worker writes (a batch committed during the counts is then counted twice
    or not at all): `make run` and compose's migrate step run it before starting the workers.
    """
    messages, dead_letters = Message.objects.count(), DeadLetter.objects.count()
    metrics.totals_set(redis_connection(), messages=messages, dead_letters=dead_letters)
    return messages, dead_letters


# --- Idempotency of client ids ------------------------------------------------------------------

IDEMPOTENCY_KEY_PREFIX = "ingestor:idem:"


def message_digest(*, user_id: int, channel_id: int, content: str) -> str:
    """What a client id is bound to: the message's fields, hashed (the id aside)."""
    fields = json.dumps([user_id, channel_id, content], ensure_ascii=False)
    return hashlib.blake2b(fields.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def client_ids_claim(*, claims: Sequence[tuple[str, str]]) -> list[str | None]:
    """Bind each client id to its message digest for INGEST_IDEMPOTENCY_WINDOW_S, in one round
    trip; for each, the digest it was already bound to (None: first seen in the window).

    A claim is kept even should the enqueue that follows fail: a retry with the same content is
    then a replay (queued again, stored once), one with other content a conflict.
    """
    with redis_connection().pipeline(transaction=False) as pipe:
        for client_id, digest in claims:
            pipe.set(
                IDEMPOTENCY_KEY_PREFIX + client_id,
                digest,
                nx=True,
                get=True,
                ex=settings.INGEST_IDEMPOTENCY_WINDOW_S,
            )
        previous = pipe.execute()
    return [value.decode() if value is not None else None for value in previous]
