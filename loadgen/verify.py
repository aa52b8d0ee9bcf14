"""After a run: was every acknowledged message stored, exactly once, and how fast?

With a database URL the check is exact: the acknowledged ids go into a temporary table in one
COPY, and one join answers lost, found and receipt -> commit latency however many ids there are.
Duplicates are rows of this run (found by the run tag in their content) beyond one per message.
Without one, only the server's counters (GET /stats) can be compared: counts, not ids.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

MESSAGES_TABLE = "messages"
ID_BYTES = 16
COPY_CHUNK_IDS = 50_000
# Rows of the run are searched among those received this long around the acknowledged ones.
WINDOW_MARGIN = timedelta(seconds=60)
E2E_PERCENTILES = (50, 90, 95, 99, 99.9)


def _id_lines(ids: bytes) -> list[bytes]:
    """COPY text rows: one id a line, in the 32-hex-digit form PostgreSQL's uuid input accepts."""
    view = memoryview(ids)
    lines: list[bytes] = []
    for start in range(0, len(ids), COPY_CHUNK_IDS * ID_BYTES):
        chunk = view[start : start + COPY_CHUNK_IDS * ID_BYTES]
        lines.append(
            b"\n".join(chunk[i : i + ID_BYTES].hex().encode() for i in range(0, len(chunk), ID_BYTES)) + b"\n"
        )
    return lines


def verify_database(*, database_url: str, ids: bytes, run_tag: str) -> dict[str, Any]:
    """Compare the acknowledged ids with the messages table; return counts and e2e latency (ms)."""
    import psycopg

    acknowledged = len(ids) // ID_BYTES
    with psycopg.connect(database_url, connect_timeout=10) as conn, conn.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE loadtest_acknowledged (id uuid NOT NULL) ON COMMIT DROP")
        with cursor.copy("COPY loadtest_acknowledged (id) FROM STDIN") as copy:
            for block in _id_lines(ids):
                copy.write(block)
        cursor.execute("SELECT count(DISTINCT id) FROM loadtest_acknowledged")
        unique_acknowledged = int(cursor.fetchone()[0])  # type: ignore[index]
        cursor.execute(
            f"""
            WITH found AS (
                SELECT m.created_at, m.inserted_at,
                       EXTRACT(EPOCH FROM (m.inserted_at - m.created_at)) * 1000 AS e2e_ms
                FROM (SELECT DISTINCT id FROM loadtest_acknowledged) a
                JOIN {MESSAGES_TABLE} m ON m.id = a.id
            )
            SELECT count(*), avg(e2e_ms), min(e2e_ms), max(e2e_ms),
                   percentile_cont(%s::float8[]) WITHIN GROUP (ORDER BY e2e_ms),
                   min(created_at), max(created_at), max(inserted_at)
            FROM found
            """,  # noqa: S608 - the table name is a constant
            [[p / 100 for p in E2E_PERCENTILES]],
        )
        found, avg_ms, min_ms, max_ms, percentiles, first_received, last_received, last_commit = (
            cursor.fetchone()  # type: ignore[misc]
        )
        found = int(found)
        duplicated = 0
        unacknowledged_stored = 0
        if found:
            cursor.execute(
                f"SELECT count(*), count(DISTINCT content) FROM {MESSAGES_TABLE} "  # noqa: S608
                "WHERE created_at BETWEEN %s AND %s AND content LIKE %s",
                [first_received - WINDOW_MARGIN, last_received + WINDOW_MARGIN, f"%#{run_tag}-%"],
            )
            rows, distinct = cursor.fetchone()  # type: ignore[misc]
            duplicated = int(rows) - int(distinct)
            unacknowledged_stored = max(int(distinct) - found, 0)
    e2e: dict[str, float | int] = {"count": found}
    if found:
        e2e.update(avg=round(float(avg_ms), 3), min=round(float(min_ms), 3))
        for percent, value in zip(E2E_PERCENTILES, percentiles, strict=True):
            e2e["p" + str(percent).replace(".", "_")] = round(float(value), 3)
        e2e["max"] = round(float(max_ms), 3)
    span = _seconds(first_received, last_commit) if found else 0.0
    return {
        "method": "database",
        "acknowledged": acknowledged,
        "persisted": found,
        "lost": unique_acknowledged - found,
        "duplicated": duplicated,
        "duplicate_acknowledgements": acknowledged - unique_acknowledged,
        "stored_without_acknowledgement": unacknowledged_stored,
        "e2e_latency_ms": e2e,
        "persisted_throughput_msgs_per_s": round(found / span, 1) if span > 0 else None,
    }


def _seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


def verify_stats(
    *, acknowledged: int, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> dict[str, Any]:
    """Counts only, from the server's counters: right when nothing else writes during the run."""
    if not before or not after:
        return {"method": "unavailable", "acknowledged": acknowledged, "lost": None, "duplicated": None,
                "e2e_latency_ms": None, "note": "no database URL and GET /stats did not answer"}  # fmt: skip
    persisted = int(after.get("total_messages", 0)) - int(before.get("total_messages", 0))
    return {
        "method": "stats",
        "acknowledged": acknowledged,
        "persisted": persisted,
        "lost": max(acknowledged - persisted, 0),
        "duplicated": None,
        "e2e_latency_ms": {
            "avg": after.get("avg_latency_ms"),
            "p50": after.get("p50_latency_ms"),
            "p95": after.get("p95_latency_ms"),
            "p99": after.get("p99_latency_ms"),
        },
        "note": "counts from GET /stats (total_messages); pass --database-url for an exact check by id. "
        "Latency is the server's last-60-s window.",
    }
