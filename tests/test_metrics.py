"""Pipeline metrics: histogram percentiles, merging several writers' hashes, the plain Redis keys."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import redis as redis_lib

from telemetry import metrics
from telemetry.metrics import LATENCY_BUCKETS_MS, histogram_percentile, latency_bucket, window_summary

NOW = 1_800_000_000.5  # a fixed instant, so the windows below are exact


def _record(
    redis: redis_lib.Redis, *, latencies_ms: list[float], worker: str, at: float, dead: int = 0
) -> None:
    with redis.pipeline() as pipe:
        metrics.batch_record(
            pipe,
            size=len(latencies_ms),
            inserted=len(latencies_ms) - dead,
            dead=dead,
            latencies_ms=Counter(latencies_ms),
            duration_s=0.01,
            worker=worker,
            now=at,
        )
        pipe.execute()


# latency_bucket and histogram_percentile


@pytest.mark.parametrize(
    ("latency_ms", "index"),
    [
        (0.0, 0),
        (0.4, 0),
        (1.0, 0),
        (1.01, 1),
        (7.5, 4),
        (9.9, 5),
        (1_000.0, 17),
        (60_000.0, 24),
        (61_000.0, 25),
    ],
)
def test_latency_bucket_puts_a_latency_under_its_upper_bound(latency_ms: float, index: int) -> None:
    assert latency_bucket(latency_ms) == index
    assert index == len(LATENCY_BUCKETS_MS) or latency_ms <= LATENCY_BUCKETS_MS[index]


def test_percentile_of_an_empty_histogram_is_zero() -> None:
    assert histogram_percentile({}, 0.99) == 0.0


def test_percentile_interpolates_inside_the_bucket_it_falls_in() -> None:
    # Bucket 5 spans (7.5, 10] ms.
    assert histogram_percentile({5: 100}, 0.5) == pytest.approx(8.75)
    assert histogram_percentile({5: 100}, 1.0) == pytest.approx(10.0)
    # The first bucket starts at 0.
    assert histogram_percentile({0: 10}, 0.5) == pytest.approx(0.5)


def test_percentile_walks_across_buckets_by_rank() -> None:
    buckets = {0: 50, 1: 50}  # (0, 1] and (1, 2]
    assert histogram_percentile(buckets, 0.50) == pytest.approx(1.0)
    assert histogram_percentile(buckets, 0.75) == pytest.approx(1.5)
    assert histogram_percentile(buckets, 0.99) == pytest.approx(1.98)


def test_percentile_in_the_overflow_bucket_stays_finite() -> None:
    overflow = len(LATENCY_BUCKETS_MS)
    p99 = histogram_percentile({overflow: 10}, 0.99)
    assert LATENCY_BUCKETS_MS[-1] < p99 <= LATENCY_BUCKETS_MS[-1] * 2


def test_percentiles_of_samples_land_in_the_true_percentiles_bucket() -> None:
    rng = random.Random(7)
    samples = sorted(rng.uniform(0.5, 400.0) for _ in range(5_000))
    buckets: dict[int, int] = {}
    for sample in samples:
        buckets[latency_bucket(sample)] = buckets.get(latency_bucket(sample), 0) + 1
    previous = 0.0
    for quantile in (0.5, 0.9, 0.95, 0.99):
        exact = samples[int(quantile * len(samples)) - 1]
        estimate = histogram_percentile(buckets, quantile)
        index = latency_bucket(exact)
        low = LATENCY_BUCKETS_MS[index - 1] if index else 0.0
        assert low <= estimate <= LATENCY_BUCKETS_MS[index], (quantile, exact, estimate)
        assert estimate >= previous
        previous = estimate


# window_summary: several writers, several seconds


def test_window_summary_merges_hashes_written_by_several_workers(redis_client: redis_lib.Redis) -> None:
    # Two workers in the same second and a third one second later: 90 fast messages, 10 slow ones.
    _record(redis_client, latencies_ms=[5.0] * 60, worker="a", at=NOW - 2)
    _record(redis_client, latencies_ms=[500.0] * 10, worker="b", at=NOW - 2)
    _record(redis_client, latencies_ms=[5.0] * 30, worker="c", at=NOW - 1, dead=1)
    seconds = [redis_client.hgetall(metrics.second_key(int(NOW) - offset)) for offset in (2, 1)]
    merged = window_summary(seconds)
    assert merged["persisted"] == 99
    assert merged["dead"] == 1
    assert merged["batches"] == 3
    assert merged["lat_count"] == 100
    assert merged["avg_latency_ms"] == pytest.approx((90 * 5.0 + 10 * 500.0) / 100)
    assert 3.0 < merged["p50_latency_ms"] <= 5.0
    # The slow tenth comes from one worker only: a per-worker p95 would miss it.
    assert 300.0 < merged["p95_latency_ms"] <= 500.0
    assert 300.0 < merged["p99_latency_ms"] <= 500.0
    only_fast = window_summary([redis_client.hgetall(metrics.second_key(int(NOW) - 1))])
    assert only_fast["p99_latency_ms"] <= 5.0


def test_window_summary_reads_str_and_bytes_fields_alike() -> None:
    as_bytes = window_summary([{b"persisted": b"3", b"lat_sum": b"30", b"lat_count": b"3", b"b5": b"3"}])
    as_str = window_summary([{"persisted": "3", "lat_sum": "30.0", "lat_count": "3", "b5": "3"}])
    assert as_bytes == as_str
    assert as_str["avg_latency_ms"] == pytest.approx(10.0)


def test_window_summary_of_nothing_is_zeros() -> None:
    summary = window_summary([{}, {}])
    assert summary["avg_latency_ms"] == summary["p99_latency_ms"] == 0.0


def test_api_side_counters_land_in_the_same_second_hash(redis_client: redis_lib.Redis) -> None:
    with redis_client.pipeline() as pipe:
        metrics.accepted_record(pipe, count=40, now=NOW)
        metrics.responses_record(pipe, counts={"4xx": 3, "503": 2}, now=NOW)
        metrics.accepted_record(pipe, count=2, now=NOW)
        pipe.execute()
    key = metrics.second_key(int(NOW))
    summary = window_summary([redis_client.hgetall(key)])
    assert (summary["accepted"], summary["4xx"], summary["503"]) == (42.0, 3.0, 2.0)
    assert int(redis_client.get(metrics.TOTAL_ACCEPTED) or 0) == 42
    assert 0 < redis_client.ttl(key) <= metrics.SECOND_TTL_S


# derived_refresh: the plain keys of the load-testing guide


def test_derived_refresh_writes_the_plain_keys(redis_client: redis_lib.Redis) -> None:
    _record(redis_client, latencies_ms=[20.0] * 100, worker="a", at=NOW - 1)
    _record(redis_client, latencies_ms=[20.0] * 400, worker="b", at=NOW - 3)
    derived = metrics.derived_refresh(redis_client, now=NOW)
    stored = {key: float(redis_client.get(key) or "nan") for key in derived}
    assert stored == derived
    assert stored[metrics.CURRENT_RPS] == pytest.approx(500 / metrics.RATE_WINDOW_S)
    assert stored[metrics.AVG_LATENCY_MS] == pytest.approx(20.0)
    assert 15.0 < stored[metrics.P50_LATENCY_MS] <= stored[metrics.P95_LATENCY_MS]
    assert stored[metrics.P95_LATENCY_MS] <= stored[metrics.P99_LATENCY_MS] <= 20.0


def test_derived_refresh_counts_only_complete_seconds_inside_each_window(
    redis_client: redis_lib.Redis,
) -> None:
    _record(redis_client, latencies_ms=[1.0] * 10, worker="a", at=NOW - 1)  # in both windows
    _record(redis_client, latencies_ms=[100.0] * 10, worker="a", at=NOW - 30)  # latency window only
    _record(redis_client, latencies_ms=[9_000.0] * 10, worker="a", at=NOW - 120)  # too old for both
    _record(redis_client, latencies_ms=[9_000.0] * 10, worker="a", at=NOW)  # the current, partial second
    derived = metrics.derived_refresh(redis_client, now=NOW)
    assert derived[metrics.CURRENT_RPS] == pytest.approx(10 / metrics.RATE_WINDOW_S)
    assert derived[metrics.AVG_LATENCY_MS] == pytest.approx((10 * 1.0 + 10 * 100.0) / 20)
    assert derived[metrics.P99_LATENCY_MS] <= 100.0


def test_batch_record_keeps_totals_backlog_and_recent_batches(redis_client: redis_lib.Redis) -> None:
    redis_client.set(metrics.QUEUE_LENGTH, 25)
    _record(redis_client, latencies_ms=[2.0] * 10, worker="a", at=NOW)
    _record(redis_client, latencies_ms=[2.0] * 15, worker="b", at=NOW, dead=2)
    assert int(redis_client.get(metrics.TOTAL_MESSAGES) or 0) == 23
    assert int(redis_client.get(metrics.TOTAL_BATCHES) or 0) == 2
    assert int(redis_client.get(metrics.TOTAL_DEAD_LETTERS) or 0) == 2
    assert int(redis_client.get(metrics.QUEUE_LENGTH) or 0) == 0
    assert redis_client.llen(metrics.RECENT_BATCHES) == 2
    histogram = window_summary([redis_client.hgetall(metrics.LATENCY_HISTOGRAM)])
    assert histogram["count"] == 25
    assert histogram["sum"] == pytest.approx(50.0)
