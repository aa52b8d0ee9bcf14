"""Pipeline metrics kept in Redis, merged across every web process and worker.

Writers add to counters and to one hash per second (`ingestor:second:<epoch>`), which holds
that second's counts and its latency histogram. Readers merge the hashes of a window, so the
percentiles are those of every worker's messages, not one worker's last samples. The
plain keys the load-testing guide names (`total_messages`, `p99_latency_ms`, ...) are refreshed
by the workers after each batch and by every snapshot, so `redis-cli GET total_messages` works.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

TOTAL_MESSAGES = "total_messages"
TOTAL_BATCHES = "total_batches"
QUEUE_LENGTH = "queue_length"
CURRENT_RPS = "current_rps"
AVG_LATENCY_MS = "avg_latency_ms"
P50_LATENCY_MS = "p50_latency_ms"
P95_LATENCY_MS = "p95_latency_ms"
P99_LATENCY_MS = "p99_latency_ms"
TOTAL_ACCEPTED = "total_accepted"
TOTAL_DEAD_LETTERS = "total_dead_letters"
LATENCY_HISTOGRAM = "ingestor:latency_histogram"
LAST_BATCH = "ingestor:last_batch"
RECENT_BATCHES = "ingestor:recent_batches"
SECOND_KEY_PREFIX = "ingestor:second:"
# Written by partition maintenance: rows in the default partition, and the end of the last partition.
PARTITIONS_DEFAULT_ROWS = "ingestor:partitions:default_rows"
PARTITIONS_COVERED_UNTIL = "ingestor:partitions:covered_until"
# The tables' counts at the last reconciliation, and when (a hash: messages, dead_letters, batches, at).
RECONCILED = "ingestor:counters:reconciled"

# The keys a reset clears (the rq queue itself is left alone: those jobs are acknowledged).
RESET_KEYS = (
    TOTAL_MESSAGES,
    TOTAL_BATCHES,
    CURRENT_RPS,
    AVG_LATENCY_MS,
    P50_LATENCY_MS,
    P95_LATENCY_MS,
    P99_LATENCY_MS,
    TOTAL_ACCEPTED,
    TOTAL_DEAD_LETTERS,
    LATENCY_HISTOGRAM,
    LAST_BATCH,
    RECENT_BATCHES,
    RECONCILED,
)

# Upper bounds (ms) of the latency histogram's buckets; one more bucket holds everything above.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 30_000, 60_000,
)  # fmt: skip
SECOND_TTL_S = 900
RATE_WINDOW_S = 5
LATENCY_WINDOW_S = 60
RECENT_BATCHES_KEPT = 50


def second_key(epoch_second: int) -> str:
    return f"{SECOND_KEY_PREFIX}{epoch_second}"


def latency_bucket(latency_ms: float) -> int:
    """Index of the histogram bucket holding `latency_ms` (len(LATENCY_BUCKETS_MS) = overflow)."""
    return bisect_left(LATENCY_BUCKETS_MS, latency_ms)


def accepted_record(pipe: Any, *, count: int, now: float) -> None:
    """Queue the counters of `count` messages accepted by the API onto a Redis pipeline."""
    key = second_key(int(now))
    pipe.incrby(TOTAL_ACCEPTED, count)
    pipe.hincrby(key, "accepted", count)
    pipe.expire(key, SECOND_TTL_S)


def responses_record(pipe: Any, *, counts: Mapping[str, int], now: float) -> None:
    """Queue per-second counts of API answers by class ("4xx", "5xx", "503") onto a pipeline."""
    key = second_key(int(now))
    for field, count in counts.items():
        pipe.hincrby(key, field, count)
    pipe.expire(key, SECOND_TTL_S)


def batch_record(
    pipe: Any,
    *,
    size: int,
    inserted: int,
    dead: int,
    latencies_ms: Mapping[float, int],
    duration_s: float,
    worker: str,
    now: float,
) -> None:
    """Queue everything one persisted batch changes onto a Redis pipeline (one round trip).

    `latencies_ms` holds each receipt-to-commit latency and how many of the batch's rows had it:
    the rows of one request share a receipt time, hence a latency, so a batch holds few."""
    key = second_key(int(now))
    buckets: dict[int, int] = {}
    total_ms = 0.0
    count = 0
    for latency_ms, times in latencies_ms.items():
        index = latency_bucket(latency_ms)
        buckets[index] = buckets.get(index, 0) + times
        total_ms += latency_ms * times
        count += times
    pipe.incrby(TOTAL_MESSAGES, inserted)
    pipe.incr(TOTAL_BATCHES)
    pipe.decrby(QUEUE_LENGTH, size)
    if dead:
        pipe.incrby(TOTAL_DEAD_LETTERS, dead)
        pipe.hincrby(key, "dead", dead)
    pipe.hincrby(key, "persisted", inserted)
    pipe.hincrby(key, "batches", 1)
    pipe.hincrbyfloat(key, "lat_sum", total_ms)
    pipe.hincrby(key, "lat_count", count)
    pipe.hincrbyfloat(LATENCY_HISTOGRAM, "sum", total_ms)
    pipe.hincrby(LATENCY_HISTOGRAM, "count", count)
    for index, bucket_count in buckets.items():
        pipe.hincrby(key, f"b{index}", bucket_count)
        pipe.hincrby(LATENCY_HISTOGRAM, f"b{index}", bucket_count)
    pipe.expire(key, SECOND_TTL_S)
    batch = json.dumps(
        {"size": size, "inserted": inserted, "dead": dead, "duration_ms": round(duration_s * 1000, 2),
         "worker": worker, "at": now}
    )  # fmt: skip
    pipe.set(LAST_BATCH, batch)
    pipe.lpush(RECENT_BATCHES, batch)
    pipe.ltrim(RECENT_BATCHES, 0, RECENT_BATCHES_KEPT - 1)


def histogram_percentile(buckets: Mapping[int, int], quantile: float) -> float:
    """The `quantile` (0..1) of a bucketed histogram, interpolated inside the bucket it falls in."""
    total = sum(buckets.values())
    if total == 0:
        return 0.0
    rank = quantile * total
    seen = 0
    for index in sorted(buckets):
        count = buckets[index]
        if seen + count >= rank:
            low = LATENCY_BUCKETS_MS[index - 1] if index > 0 else 0.0
            high = LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else low * 2
            return low + (high - low) * ((rank - seen) / count)
        seen += count
    return float(LATENCY_BUCKETS_MS[-1])


def seconds_window(now: float, seconds: int) -> list[int]:
    """The last `seconds` complete epoch seconds before `now`, oldest first."""
    current = int(now)
    return list(range(current - seconds, current))


def window_summary(hashes: Iterable[Mapping[Any, Any]]) -> dict[str, float]:
    """Merge per-second hashes into counts, rates and latency percentiles."""
    totals: dict[str, float] = {}
    buckets: dict[int, int] = {}
    for raw in hashes:
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else field
            number = float(value)
            if name[0] == "b" and name[1:].isdigit():
                index = int(name[1:])
                buckets[index] = buckets.get(index, 0) + int(number)
            else:
                totals[name] = totals.get(name, 0.0) + number
    lat_count = totals.get("lat_count", 0.0)
    return {
        **totals,
        "avg_latency_ms": totals.get("lat_sum", 0.0) / lat_count if lat_count else 0.0,
        "p50_latency_ms": histogram_percentile(buckets, 0.50),
        "p95_latency_ms": histogram_percentile(buckets, 0.95),
        "p99_latency_ms": histogram_percentile(buckets, 0.99),
    }


DERIVED_LOCK = "ingestor:derived_refresh_lock"


def derived_refresh_due(redis: Any, *, every_s: float) -> bool:
    """True for one caller across every worker per `every_s`: the others skip the window read."""
    return bool(redis.set(DERIVED_LOCK, 1, nx=True, px=int(every_s * 1000)))


def derived_refresh(redis: Any, *, now: float | None = None) -> dict[str, float]:
    """Recompute the derived gauges from the merged window and store them under their plain keys."""
    now = time.time() if now is None else now
    rate_seconds = seconds_window(now, RATE_WINDOW_S)
    latency_seconds = seconds_window(now, LATENCY_WINDOW_S)
    with redis.pipeline(transaction=False) as pipe:
        for second in latency_seconds:
            pipe.hgetall(second_key(second))
        hashes = pipe.execute()
    latency = window_summary(hashes)
    rate = window_summary(hashes[-len(rate_seconds) :])
    derived = {
        CURRENT_RPS: round(rate.get("persisted", 0.0) / RATE_WINDOW_S, 1),
        AVG_LATENCY_MS: round(latency["avg_latency_ms"], 2),
        P50_LATENCY_MS: round(latency["p50_latency_ms"], 2),
        P95_LATENCY_MS: round(latency["p95_latency_ms"], 2),
        P99_LATENCY_MS: round(latency["p99_latency_ms"], 2),
    }
    redis.mset(derived)
    return derived


def partitions_record(redis: Any, *, default_rows: int, covered_until: float) -> None:
    """What the last partition maintenance found (no TTL: a stale value is itself a signal)."""
    redis.mset({PARTITIONS_DEFAULT_ROWS: default_rows, PARTITIONS_COVERED_UNTIL: covered_until})


def metrics_reset(redis: Any) -> None:
    """Zero the counters and forget the per-second history (the rq queue itself is left alone)."""
    with redis.pipeline() as pipe:
        pipe.delete(*RESET_KEYS)
        for key in redis.scan_iter(match=f"{SECOND_KEY_PREFIX}*", count=1000):
            pipe.delete(key)
        pipe.execute()


def totals_set(redis: Any, *, messages: int, dead_letters: int) -> None:
    """Set the persisted-message and dead-letter counters to the tables' counts. A job killed
    between its commit and its metrics leaves them short; this puts them right."""
    with redis.pipeline() as pipe:
        totals_queue(pipe, messages=messages, dead_letters=dead_letters)
        pipe.execute()


def totals_queue(pipe: Any, *, messages: int, dead_letters: int) -> None:
    """Queue totals_set's writes onto a pipeline (a transaction of the caller's)."""
    pipe.set(TOTAL_MESSAGES, messages)
    pipe.set(TOTAL_DEAD_LETTERS, dead_letters)


def reconciled_record(pipe: Any, *, messages: int, dead_letters: int, batches: int, at: float) -> None:
    """Queue the tables' counts at `at` (and total_batches then) onto a pipeline."""
    pipe.hset(
        RECONCILED, mapping={"messages": messages, "dead_letters": dead_letters, "batches": batches, "at": at}
    )


def reconciled_read(redis: Any) -> dict[str, Any] | None:
    """The last reconciliation's counts and time, or None before the first."""
    values = redis.hgetall(RECONCILED)
    if not values:
        return None
    fields = {key.decode() if isinstance(key, bytes) else key: value for key, value in values.items()}
    return {
        "messages": int(fields["messages"]),
        "dead_letters": int(fields["dead_letters"]),
        "batches": int(fields["batches"]),
        "at": float(fields["at"]),
    }
