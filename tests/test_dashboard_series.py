"""The dashboard's charts and figures from real Redis data, written by the telemetry writers.

The broadcaster's clock is passed in, so the seconds below are exact: what a dashboard watching
at those instants would read, and what it draws for the seconds it did not watch.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis as redis_lib
from redis.asyncio import Redis as AsyncRedis

from metrics_app.figures import stats_build
from metrics_app.panels import cards_build
from metrics_app.selectors import dashboard_read
from metrics_app.series import ChartHistory, Point, point_build
from telemetry import metrics
from telemetry.connection import redis_async_client

# Whole seconds a little in the past: the per-second hashes written for them are still kept.
BASE = int(time.time()) - 120


@pytest.fixture
async def redis_async(redis_client: redis_lib.Redis) -> AsyncIterator[AsyncRedis]:
    client = redis_async_client()
    yield client
    await client.aclose()


def _accept(redis: redis_lib.Redis, *, count: int, at: float) -> None:
    """What the ingest service writes when a batch of `count` messages is queued."""
    with redis.pipeline() as pipe:
        pipe.incrby(metrics.QUEUE_LENGTH, count)
        metrics.accepted_record(pipe, count=count, now=at)
        pipe.execute()


def _persist(redis: redis_lib.Redis, *, size: int, at: float, latency_ms: float = 20.0) -> None:
    """What a worker writes when it commits a batch of `size` messages."""
    with redis.pipeline() as pipe:
        metrics.batch_record(pipe, size=size, inserted=size, dead=0, latencies_ms={latency_ms: size},
                             duration_s=0.01, worker="w1", now=at)  # fmt: skip
        pipe.execute()


async def _tick(history: ChartHistory, redis: AsyncRedis, *, now: float, first: bool = False) -> list[Point]:
    """One broadcaster frame at `now`: read what it reads, keep it, settle the finished seconds."""
    read = await dashboard_read(redis=redis, seconds=history.seconds_wanted(now), batches=20)
    history.read_add(seconds=read.seconds, queue=read.counters[metrics.QUEUE_LENGTH], now=now)
    return history.points_settle(now, first=first)


async def test_an_idle_gap_between_two_bursts_is_drawn_empty_not_with_the_later_depth(
    redis_client: redis_lib.Redis, redis_async: AsyncRedis
) -> None:
    history = ChartHistory()
    points: list[Point] = []
    # Burst one at BASE, watched: 300 queued, persisted a second later.
    points += await _tick(history, redis_async, now=BASE - 0.7, first=True)
    _accept(redis_client, count=300, at=BASE + 0.1)
    points += await _tick(history, redis_async, now=BASE + 0.3)
    points += await _tick(history, redis_async, now=BASE + 0.8)
    _persist(redis_client, size=300, at=BASE + 1.1)
    for offset in (1.3, 1.8, 2.3, 2.8):
        points += await _tick(history, redis_async, now=BASE + offset)
    # Nobody watches for a while (every socket closed): no frame, no sample.
    second_burst = BASE + 15
    _accept(redis_client, count=5_000, at=second_burst + 0.1)
    # A socket reconnects three seconds after the second burst arrived.
    history.reads_forget()
    points += await _tick(history, redis_async, now=second_burst + 3.3)

    by_second = {point["t"]: point for point in points}
    assert sorted(by_second) == list(range(BASE - 1, second_burst + 3)), "one point a second, gaps included"
    assert by_second[BASE]["queue"] == 300 and by_second[BASE]["in"] == 300
    assert by_second[BASE + 1]["queue"] == 0 and by_second[BASE + 1]["out"] == 300
    assert by_second[BASE + 1]["p50"] is not None
    # The unwatched seconds: counts are known (idle, then the burst), the depth is not.
    gap = range(BASE + 3, second_burst + 3)
    assert [by_second[s]["queue"] for s in gap] == [None] * len(gap)
    assert all(by_second[s]["in"] == 0 for s in range(BASE + 3, second_burst))
    assert by_second[second_burst]["in"] == 5_000
    # The series a new socket gets says the same.
    series = {point["t"]: point for point in history.series()}
    assert series[BASE]["queue"] == 300
    assert [series[s]["queue"] for s in gap] == [None] * len(gap)


async def test_the_depth_of_a_second_is_the_one_sampled_during_it_not_after(
    redis_client: redis_lib.Redis, redis_async: AsyncRedis
) -> None:
    history = ChartHistory()
    await _tick(history, redis_async, now=BASE + 0.8, first=True)  # watched BASE: empty queue
    await _tick(history, redis_async, now=BASE + 1.3)
    _accept(redis_client, count=5_000, at=BASE + 1.9)
    # BASE + 1 settles only in this frame, read after the burst: it must not take this frame's depth.
    points = await _tick(history, redis_async, now=BASE + 2.3)
    points += await _tick(history, redis_async, now=BASE + 2.8)
    by_second = {point["t"]: point for point in points}
    assert by_second[BASE + 1]["queue"] == 0
    assert by_second[BASE + 1]["in"] == 5_000


async def test_frames_lost_to_a_redis_outage_leave_only_the_depth_empty(
    redis_client: redis_lib.Redis, redis_async: AsyncRedis
) -> None:
    _accept(redis_client, count=10, at=BASE + 0.1)
    history = ChartHistory()
    await _tick(history, redis_async, now=BASE + 0.8, first=True)
    # Five seconds without a frame (Redis away), then it answers: the hashes of the missed
    # seconds are read then, but nobody saw the queue during them.
    points = await _tick(history, redis_async, now=BASE + 6.8)
    assert [point["t"] for point in points] == list(range(BASE, BASE + 6))
    assert points[0] == {"t": BASE, "in": 10, "out": 0, "queue": 10, "p50": None, "p95": None, "p99": None}
    assert [(point["in"], point["queue"]) for point in points[1:]] == [(0, None)] * 5


def test_a_second_never_read_is_a_gap_in_every_chart() -> None:
    assert point_build(BASE, None, None) == {
        "t": BASE, "in": None, "out": None, "queue": None, "p50": None, "p95": None, "p99": None
    }  # fmt: skip


async def test_avg_batch_size_covers_the_recent_window_not_the_lifetime(
    redis_client: redis_lib.Redis, redis_async: AsyncRedis
) -> None:
    now = BASE + 0.5
    for _ in range(10):
        _persist(redis_client, size=1_000, at=now - metrics.LATENCY_WINDOW_S - 30)  # long ago
    for size in (10, 20, 30):
        _persist(redis_client, size=size, at=now - 5)
    seconds = metrics.seconds_window(now, metrics.LATENCY_WINDOW_S)
    read = await dashboard_read(redis=redis_async, seconds=seconds, batches=20)

    stats = stats_build(counters=read.counters, workers=read.workers, seconds=read.seconds, now=now)

    assert stats["total_batches"] == 13
    assert stats["avg_batch_size"] == 20.0  # lifetime: 10,060 / 13 = 773.8
    (card,) = [card for card in cards_build(stats) if card.key == "avg_batch_size"]
    assert card.value == "20.0"
    assert card.hint == f"per batch, last {metrics.LATENCY_WINDOW_S} s"


async def test_avg_batch_size_shows_a_dash_when_no_batch_is_recent(
    redis_client: redis_lib.Redis, redis_async: AsyncRedis
) -> None:
    now = BASE + 0.5
    _persist(redis_client, size=500, at=now - metrics.LATENCY_WINDOW_S - 30)
    seconds = metrics.seconds_window(now, metrics.LATENCY_WINDOW_S)
    read = await dashboard_read(redis=redis_async, seconds=seconds, batches=20)
    stats = stats_build(counters=read.counters, workers=read.workers, seconds=read.seconds, now=now)
    (card,) = [card for card in cards_build(stats) if card.key == "avg_batch_size"]
    assert stats["total_batches"] == 1
    assert card.value == "–"
