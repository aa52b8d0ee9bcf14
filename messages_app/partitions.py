"""Time partitions of the `messages` table: their bounds, creation ahead, retention, the default.

`messages` is `PARTITION BY RANGE (id)`. A UUIDv7 starts with its 48-bit Unix time in
milliseconds, so the ids minted during one interval (a UTC day by default) form one contiguous
UUID range: from the UUID whose first 48 bits are the interval's start and whose other bits are
all zero, to the same for the next interval. The primary key stays `(id)` (it contains the
partition key, which PostgreSQL requires of a unique index on a partitioned table), so it keeps
one row per id (the worker's COPY fails on a known id, its `INSERT ... ON CONFLICT (id) DO NOTHING`
skips it): an id always maps to the same partition, whatever time it is received, retried or re-run.

Rows whose id falls in no partition (an id that is not a UUIDv7, reaching the worker without the
API, or a partition that was never created) land in `messages_default`, so nothing is refused for
want of a partition; maintenance reports them loudly. Expired partitions are dropped whole: no
DELETE ever runs over the partitioned table's bulk.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from redis.exceptions import RedisError

from telemetry import metrics
from telemetry.connection import redis_connection

logger = logging.getLogger(__name__)

TABLE = "messages"
DEFAULT_PARTITION = "messages_default"
DEAD_LETTERS_TABLE = "dead_letters"

# A client's own id must be a UUIDv7 minted at most this long before it reaches the API (an
# idempotency key lives a day) and at most CLIENT_ID_MAX_AHEAD after (clock skew): its partition
# then exists, and a receipt-time filter turns into an id range that prunes partitions.
CLIENT_ID_MAX_AGE = timedelta(hours=24)
CLIENT_ID_MAX_AHEAD = timedelta(minutes=5)

# One maintainer at a time across every worker and `manage.py messages_partitions`.
ADVISORY_LOCK_KEY = 0x6D65_7373_6167_6573  # "messages"
# DDL on the parent waits for in-flight inserts; inserts arriving meanwhile wait behind the DDL.
# Give up quickly and try at the next run rather than hold ingest in that queue.
LOCK_TIMEOUT = "2s"
# How often one of the workers runs maintenance (Redis decides which; the lock above is the guard).
MAINTENANCE_EVERY_S = 600
MAINTENANCE_RETRY_S = 30
MAINTENANCE_DUE_KEY = "ingestor:partitions:maintenance-due"
# Rows of the default partition or dead letters deleted per statement by retention.
DELETE_CHUNK = 10_000
DEFAULT_ROWS_COUNT_CAP = 1_000_000


def uuid_floor(moment: datetime) -> uuid.UUID:
    """The smallest UUID whose 48-bit UUIDv7 timestamp is `moment` (to the millisecond)."""
    millis = int(moment.timestamp() * 1000)
    return uuid.UUID(int=max(millis, 0) << 80)


def id_time(message_id: uuid.UUID) -> datetime:
    """The time in a UUIDv7's first 48 bits (for any other UUID, whatever those bits say)."""
    return datetime.fromtimestamp((message_id.int >> 80) / 1000, tz=UTC)


# The first byte of a UUIDv7's last 8 bytes: its variant (0b10) in the top two bits, randomness
# in the other six.
_UUID7_VARIANT_BYTE = bytes((byte & 0x3F) | 0x80 for byte in range(256))


def uuid7_strings(count: int) -> list[str]:
    """`count` new UUIDv7s (RFC 9562) as strings, from one read of the clock and one of the OS's
    randomness: the batch's API receipt ids.

    Each holds the real millisecond, the sub-millisecond fraction in rand_a (RFC 9562 method 3)
    and 62 random bits, in rising order. Unlike uuid6.uuid7(), which moves its timestamp 1 ms ahead for every id
    minted within the same millisecond (monotonic ids), these never run ahead of the clock: at
    50,000 ids a second that bump took the ids' time, and so their partition, ~49 s further into
    the future every second.

    The first half is the same for the whole batch; each id's second half is 8 random bytes with
    the variant set, sorted and written as bytes (no Python integer per id): a batch of 1,000
    took half the CPU it took through integers (README, Benchmarks).
    """
    nanoseconds = time.time_ns()
    millis, fraction = divmod(nanoseconds, 1_000_000)
    high = (millis << 16) | (0x7 << 12) | (fraction * 4096 // 1_000_000)
    digits = f"{high:016x}"
    prefix = f"{digits[:8]}-{digits[8:12]}-{digits[12:]}-"
    if count == 1:
        # A lone message's id (POST /messages), without the batch's sort and lists: half the time.
        tail = os.urandom(8)
        return [prefix + (tail[:1].translate(_UUID7_VARIANT_BYTE) + tail[1:]).hex("-", 6)]
    randomness = bytearray(os.urandom(8 * count))
    randomness[::8] = randomness[::8].translate(_UUID7_VARIANT_BYTE)
    # Sorted, so a batch's ids rise in the order of its items: newest-first listings keep it.
    # Bytes compare as their big-endian numbers do.
    tails = sorted([randomness[offset : offset + 8] for offset in range(0, 8 * count, 8)])
    # hex() with a separator every 6 bytes from the right: "xxxx-xxxxxxxxxxxx".
    return [prefix + tail.hex("-", 6) for tail in tails]


def uuid7_at(moment: datetime) -> uuid.UUID:
    """A random UUIDv7 minted at `moment`."""
    random_bits = uuid.uuid4().int & ((1 << 74) - 1)
    millis = int(moment.timestamp() * 1000)
    rand_a, rand_b = random_bits >> 62, random_bits & ((1 << 62) - 1)
    return uuid.UUID(int=(millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b)


def client_id_problem(client_id: uuid.UUID, *, now: float) -> str | None:
    """Why a client's own id cannot be stored exactly once, or None when it can."""
    if client_id.version != 7 or client_id.variant != uuid.RFC_4122:
        return (
            "must be a UUIDv7 (time-ordered, RFC 9562): messages are stored by the time in their id; "
            "omit `id` and the server stamps one"
        )
    millis = client_id.int >> 80
    oldest = now - min(CLIENT_ID_MAX_AGE.total_seconds(), retention_s() or float("inf"))
    if not oldest * 1000 <= millis <= (now + CLIENT_ID_MAX_AHEAD.total_seconds()) * 1000:
        minted = datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat()
        hours = min(CLIENT_ID_MAX_AGE.total_seconds(), retention_s() or float("inf")) / 3600
        return (
            f"must be a UUIDv7 minted within the last {hours:g} hours and at most "
            f"{CLIENT_ID_MAX_AHEAD.total_seconds() / 60:g} minutes ahead of the server's clock "
            f"(this one says {minted})"
        )
    return None


def retention_s() -> float:
    """MESSAGE_RETENTION in seconds; 0 keeps everything."""
    return float(settings.MESSAGE_RETENTION.total_seconds())


def interval_start(moment: datetime, interval: timedelta) -> datetime:
    """The start of the partition interval holding `moment` (intervals counted from the epoch)."""
    step = int(interval.total_seconds() * 1000)
    millis = int(moment.timestamp() * 1000) // step * step
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime | None  # None for the default partition
    end: datetime | None

    @property
    def is_default(self) -> bool:
        return self.start is None


def partition_name(start: datetime, end: datetime) -> str:
    whole_days = start == interval_start(start, timedelta(days=1)) and (end - start) % timedelta(days=1) == (
        timedelta(0)
    )
    return f"{TABLE}_p{start:%Y%m%d}" if whole_days else f"{TABLE}_p{start:%Y%m%d_%H%M}"


_BOUND = re.compile(r"FROM \('([0-9a-f-]{36})'\) TO \('([0-9a-f-]{36})'\)")


def partitions_list() -> list[Partition]:
    """The partitions of `messages`, oldest first, the default partition last."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [TABLE],
        )
        rows = cursor.fetchall()
    ranged, default = [], []
    for name, bound in rows:
        match = _BOUND.search(bound)
        if match is None:
            default.append(Partition(name, None, None))
            continue
        start, end = (id_time(uuid.UUID(text)) for text in match.groups())
        ranged.append(Partition(name, start, end))
    return (
        sorted(ranged, key=lambda partition: partition.start.timestamp() if partition.start else 0.0)
        + default
    )


def is_partitioned() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def _gaps(start: datetime, end: datetime, taken: list[Partition]) -> list[tuple[datetime, datetime]]:
    """Pieces of [start, end) no existing partition covers."""
    pieces = [(start, end)]
    for partition in taken:
        if partition.start is None or partition.end is None:
            continue
        next_pieces = []
        for low, high in pieces:
            if partition.end <= low or partition.start >= high:
                next_pieces.append((low, high))
                continue
            if low < partition.start:
                next_pieces.append((low, partition.start))
            if partition.end < high:
                next_pieces.append((partition.end, high))
        pieces = next_pieces
    return pieces


@dataclass(frozen=True)
class Plan:
    create: list[tuple[datetime, datetime]]
    drop: list[Partition]


def partitions_plan(*, now: datetime, existing: list[Partition]) -> Plan:
    """Which partitions to create (from the oldest id the API accepts to MESSAGE_PARTITIONS_AHEAD
    intervals ahead) and which to drop (wholly older than MESSAGE_RETENTION)."""
    interval = settings.MESSAGE_PARTITION_INTERVAL
    keep = retention_s()
    oldest_needed = now - min(CLIENT_ID_MAX_AGE, timedelta(seconds=keep) if keep else CLIENT_ID_MAX_AGE)
    create = []
    cursor = interval_start(oldest_needed, interval)
    horizon = interval_start(now, interval) + interval * (settings.MESSAGE_PARTITIONS_AHEAD + 1)
    while cursor < horizon:
        create += _gaps(cursor, cursor + interval, existing)
        cursor += interval
    drop = []
    if keep:
        cutoff = now - timedelta(seconds=keep)
        drop = [p for p in existing if p.end is not None and p.end <= cutoff]
    return Plan(create=create, drop=drop)


@dataclass
class MaintenanceReport:
    ran: bool = True
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved_from_default: int = 0
    default_rows: int = 0
    default_rows_expired: int = 0
    dead_letters_expired: int = 0
    covered_until: datetime | None = None
    errors: list[str] = field(default_factory=list)


@contextmanager
def _maintainer_lock() -> Iterator[bool]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _has_default() -> bool:
    return any(partition.is_default for partition in partitions_list())


def partition_create(start: datetime, end: datetime) -> tuple[str, int]:
    """Create the partition for ids minted in [start, end); return its name and the rows it took
    over from the default partition (a plain CREATE ... PARTITION OF would fail on them)."""
    name = partition_name(start, end)
    low, high = str(uuid_floor(start)), str(uuid_floor(end))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        moved = 0
        if _has_default():
            cursor.execute(
                f"SELECT count(*) FROM {_quote(DEFAULT_PARTITION)} WHERE id >= %s AND id < %s",  # noqa: S608
                [low, high],
            )
            moved = int(cursor.fetchone()[0])
        if not moved:
            cursor.execute(
                f"CREATE TABLE {_quote(name)} PARTITION OF {_quote(TABLE)} "
                f"FOR VALUES FROM ('{low}') TO ('{high}')"
            )
            return name, 0
        # Ids that arrived before their partition: carry them over, then attach (which builds the
        # indexes and checks the default no longer holds any row of the range).
        cursor.execute(f"CREATE TABLE {_quote(name)} (LIKE {_quote(TABLE)} INCLUDING DEFAULTS)")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {_quote(DEFAULT_PARTITION)} WHERE id >= %s AND id < %s "  # noqa: S608
            f"RETURNING *) INSERT INTO {_quote(name)} SELECT * FROM moved",
            [low, high],
        )
        moved = cursor.rowcount
        cursor.execute(
            f"ALTER TABLE {_quote(TABLE)} ATTACH PARTITION {_quote(name)} "
            f"FOR VALUES FROM ('{low}') TO ('{high}')"
        )
    logger.warning("Partition %s created with %d rows that had waited in %s", name, moved, DEFAULT_PARTITION)
    return name, moved


# Marks a partition detached for dropping, so a drop that failed after the detach is finished later.
DETACHED_COMMENT = "detached by partition maintenance, to be dropped"


def partition_drop(partition: Partition) -> tuple[float, float]:
    """Detach, then drop: inserts wait for the catalogue change only (milliseconds), not for the
    removal of the partition's files, which happens on a table no insert can reach any more.
    Returns the seconds each step took."""
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute(f"ALTER TABLE {_quote(TABLE)} DETACH PARTITION {_quote(partition.name)}")
        cursor.execute(f"COMMENT ON TABLE {_quote(partition.name)} IS '{DETACHED_COMMENT}'")
    detached = time.perf_counter()
    _detached_drop([partition.name])
    return detached - started, time.perf_counter() - detached


def _detached_drop(names: list[str] | None = None) -> list[str]:
    """Drop the tables detached for dropping (all of them when `names` is None)."""
    if names is None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_description d ON d.objoid = c.oid "
                "AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0 "
                "WHERE c.relkind = 'r' AND d.description = %s AND c.relname LIKE %s",
                [DETACHED_COMMENT, f"{TABLE}\\_p%"],
            )
            names = [row[0] for row in cursor.fetchall()]
    for name in names:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {_quote(name)}")
    return names


def _delete_older(table: str, cutoff: datetime, column: str) -> int:
    """Delete rows older than `cutoff` in chunks, so no statement holds many row locks for long."""
    deleted = 0
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                f"DELETE FROM {_quote(table)} WHERE ctid IN (SELECT ctid FROM {_quote(table)} "  # noqa: S608
                f"WHERE {_quote(column)} < %s LIMIT {DELETE_CHUNK})",
                [cutoff],
            )
            deleted += cursor.rowcount
            if cursor.rowcount < DELETE_CHUNK:
                return int(deleted)


def default_rows_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {_quote(DEFAULT_PARTITION)} LIMIT {DEFAULT_ROWS_COUNT_CAP}) d"  # noqa: S608
        )
        return int(cursor.fetchone()[0])


def partitions_maintain(*, now: datetime | None = None, dry_run: bool = False) -> MaintenanceReport:
    """Create the partitions ahead, drop the expired ones, expire dead letters and default rows.

    Safe to run from several workers at once: one takes the advisory lock, the others skip. Each
    partition is created or dropped in its own short transaction.
    """
    now = now or datetime.now(tz=UTC)
    report = MaintenanceReport()
    with _maintainer_lock() as acquired:
        if not acquired:
            return MaintenanceReport(ran=False)
        if not is_partitioned():
            report.errors.append(f"{TABLE} is not partitioned yet: run `manage.py migrate`")
            logger.error("Partition maintenance: %s", report.errors[0])
            return report
        existing = partitions_list()
        plan = partitions_plan(now=now, existing=existing)
        if dry_run:
            report.created = [partition_name(start, end) for start, end in plan.create]
            report.dropped = [partition.name for partition in plan.drop]
        else:
            for start, end in plan.create:
                try:
                    name, moved = partition_create(start, end)
                except Exception as exc:  # one failure (a lock timeout) must not stop the others
                    report.errors.append(f"create {partition_name(start, end)}: {exc}")
                    continue
                report.created.append(name)
                report.moved_from_default += moved
            report.dropped += _detached_drop()
            for partition in plan.drop:
                try:
                    partition_drop(partition)
                except Exception as exc:
                    report.errors.append(f"drop {partition.name}: {exc}")
                    continue
                report.dropped.append(partition.name)
            if retention_s():
                cutoff = now - settings.MESSAGE_RETENTION
                report.dead_letters_expired = _delete_older(DEAD_LETTERS_TABLE, cutoff, "created_at")
                if _has_default():
                    report.default_rows_expired = _delete_older(DEFAULT_PARTITION, cutoff, "created_at")
        after = partitions_list() if not dry_run else existing
        report.covered_until = max((p.end for p in after if p.end is not None), default=None)
        report.default_rows = default_rows_count() if any(p.is_default for p in after) else 0
    for error in report.errors:
        logger.error("Partition maintenance: %s", error)
    if report.default_rows:
        # Alert-worthy: these ids have no partition of their own, so retention cannot drop them
        # with a partition, and each new partition must scan them.
        logger.error(
            "%s holds %d rows whose id falls in no partition (not a UUIDv7, or older/newer than "
            "the partitions); they expire by MESSAGE_RETENTION and move into a partition created "
            "for their range",
            DEFAULT_PARTITION,
            report.default_rows,
        )
    if not dry_run and (report.created or report.dropped):
        logger.info("Partitions created: %s; dropped: %s", report.created or "none", report.dropped or "none")
    return report


def _report_record(report: MaintenanceReport) -> None:
    covered = report.covered_until.timestamp() if report.covered_until else 0.0
    metrics.partitions_record(redis_connection(), default_rows=report.default_rows, covered_until=covered)


def partitions_maintain_when_due(*, redis: Any | None = None) -> MaintenanceReport | None:
    """Run maintenance if no worker has in the last MAINTENANCE_EVERY_S seconds (a worker's tick)."""
    redis = redis or redis_connection()
    if not redis.set(MAINTENANCE_DUE_KEY, str(time.time()), nx=True, ex=MAINTENANCE_EVERY_S):
        return None
    try:
        report = partitions_maintain()
    except Exception:
        redis.expire(MAINTENANCE_DUE_KEY, MAINTENANCE_RETRY_S)
        logger.exception("Partition maintenance failed; another attempt in %d s", MAINTENANCE_RETRY_S)
        return None
    if not report.ran or report.errors:
        redis.expire(MAINTENANCE_DUE_KEY, MAINTENANCE_RETRY_S)
    if report.ran:
        try:
            _report_record(report)
        except RedisError as exc:
            logger.warning("Partition maintenance ran, but its gauges were not recorded: %s", exc)
    return report


# The first 48 bits of a uuid as a bigint (milliseconds for a UUIDv7), on any PostgreSQL version.
_ID_MILLIS_SQL = "('x' || left(replace(id::text, '-', ''), 12))::bit(48)::bigint"
LEGACY_TABLE = "messages_unpartitioned"


def _indexes_free(cursor: Any, table: str, suffix: str) -> None:
    """Rename `table`'s primary key and drop its other indexes: index names are schema-wide, and
    the table that takes its place creates the same ones."""
    cursor.execute(
        "SELECT c.conname FROM pg_constraint c WHERE c.conrelid = %s::regclass AND c.contype = 'p'", [table]
    )
    for (name,) in cursor.fetchall():
        cursor.execute(
            f"ALTER TABLE {_quote(table)} RENAME CONSTRAINT {_quote(name)} TO {_quote(name + suffix)}"
        )
    cursor.execute(
        "SELECT i.indexrelid::regclass::text FROM pg_index i WHERE i.indrelid = %s::regclass "
        "AND NOT i.indisprimary",
        [table],
    )
    for (name,) in cursor.fetchall():
        cursor.execute(f"DROP INDEX {name}")


def messages_table_convert(schema_editor: Any, model: Any, *, now: datetime | None = None) -> int:
    """Turn an unpartitioned `messages` into the partitioned table, rows included; return the rows.

    Runs in the caller's transaction (a migration's) and holds the table exclusively meanwhile:
    workers wait and retry, the API keeps accepting into Redis. Bulk copy first, indexes after.
    """
    now = now or datetime.now(tz=UTC)
    interval = settings.MESSAGE_PARTITION_INTERVAL
    step_ms = int(interval.total_seconds() * 1000)
    with connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {_quote(TABLE)} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f"ALTER TABLE {_quote(TABLE)} RENAME TO {_quote(LEGACY_TABLE)}")
        _indexes_free(cursor, LEGACY_TABLE, "_unpartitioned")
        cursor.execute(
            f"CREATE TABLE {_quote(TABLE)} (LIKE {_quote(LEGACY_TABLE)} INCLUDING DEFAULTS) "
            "PARTITION BY RANGE (id)"
        )
        cursor.execute(f"CREATE TABLE {_quote(DEFAULT_PARTITION)} PARTITION OF {_quote(TABLE)} DEFAULT")
        # A partition for every interval a stored UUIDv7 was minted in; other ids go to the default.
        cursor.execute(
            f"SELECT DISTINCT {_ID_MILLIS_SQL} / {step_ms} FROM {_quote(LEGACY_TABLE)} "  # noqa: S608
            "WHERE substr(id::text, 15, 1) = '7'"
        )
        starts = sorted(row[0] * step_ms for row in cursor.fetchall())
    for start_ms in starts:
        start = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
        partition_create(start, start + interval)
    for start, end in partitions_plan(now=now, existing=partitions_list()).create:
        partition_create(start, end)
    with connection.cursor() as cursor:
        rows = _rows_move_and_index(cursor, schema_editor, model, source=LEGACY_TABLE)
        cursor.execute(f"DROP TABLE {_quote(LEGACY_TABLE)}")
        cursor.execute(f"ANALYZE {_quote(TABLE)}")
    return int(rows)


def _rows_move_and_index(cursor: Any, schema_editor: Any, model: Any, *, source: str) -> int:
    """Copy every row of `source` into the new `messages`, then add its key and the model's indexes
    (after the copy: building them once is faster than maintaining them row by row)."""
    cursor.execute(f"INSERT INTO {_quote(TABLE)} SELECT * FROM {_quote(source)}")  # noqa: S608
    rows = int(cursor.rowcount)
    cursor.execute(f"ALTER TABLE {_quote(TABLE)} ADD CONSTRAINT {_quote(TABLE + '_pkey')} PRIMARY KEY (id)")
    for index in model._meta.indexes:
        schema_editor.add_index(model, index)
    return rows


def messages_table_unconvert(schema_editor: Any, model: Any) -> int:
    """The way back: one plain `messages` table holding every row of the partitions."""
    staging = "messages_partitioned"
    with connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {_quote(TABLE)} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f"ALTER TABLE {_quote(TABLE)} RENAME TO {_quote(staging)}")
        _indexes_free(cursor, staging, "_partitioned")
        cursor.execute(f"CREATE TABLE {_quote(TABLE)} (LIKE {_quote(staging)} INCLUDING DEFAULTS)")
        rows = _rows_move_and_index(cursor, schema_editor, model, source=staging)
        cursor.execute(f"DROP TABLE {_quote(staging)} CASCADE")
    return int(rows)


def id_range_for_received(since: datetime | None, until: datetime | None) -> dict[str, uuid.UUID]:
    """ORM lookups on `id` that hold for every message received in [since, until).

    A message's id was minted at most CLIENT_ID_MAX_AGE before its receipt and at most
    CLIENT_ID_MAX_AHEAD after (the API refuses other client ids), so these bounds keep every such
    row and let PostgreSQL skip the partitions outside them. Rows of the default partition (ids
    that never passed the API) may fall outside: they are found by id, not by receipt time.
    """
    lookups = {}
    if since is not None:
        lookups["id__gte"] = uuid_floor(since - CLIENT_ID_MAX_AGE)
    if until is not None:
        lookups["id__lt"] = uuid_floor(until + CLIENT_ID_MAX_AHEAD)
    return lookups
