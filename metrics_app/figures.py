"""The dashboard's figures: the numbers on the cards, worked out from one Redis read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from telemetry import metrics


def stats_build(
    *, counters: Mapping[str, int], workers: int, seconds: Mapping[int, Mapping[str, float]], now: float
) -> dict[str, Any]:
    """The cards' numbers: cumulative counters, and windows of complete seconds.

    Rates cover the last RATE_WINDOW_S seconds; latency and batch size the last LATENCY_WINDOW_S.
    """
    rate_seconds = metrics.seconds_window(now, metrics.RATE_WINDOW_S)
    rate = metrics.window_summary(seconds.get(s, {}) for s in rate_seconds)
    latency_seconds = metrics.seconds_window(now, metrics.LATENCY_WINDOW_S)
    latency = metrics.window_summary(seconds.get(s, {}) for s in latency_seconds)
    window = float(metrics.RATE_WINDOW_S)
    persisted_per_s = round(rate.get("persisted", 0.0) / window, 1)
    # Batches come a few a second at most: over the rate window their average size would jump
    # about, so it shares the latency window. Dead letters count: they were in the job too.
    window_batches = int(latency.get("batches", 0))
    window_batched = latency.get("persisted", 0.0) + latency.get("dead", 0.0)
    return {
        "total_messages": counters[metrics.TOTAL_MESSAGES],
        "total_batches": counters[metrics.TOTAL_BATCHES],
        "total_accepted": counters[metrics.TOTAL_ACCEPTED],
        "total_dead_letters": counters[metrics.TOTAL_DEAD_LETTERS],
        "queue_length": counters[metrics.QUEUE_LENGTH],
        "persisted_per_s": persisted_per_s,
        "current_rps": persisted_per_s,
        "accepted_per_s": round(rate.get("accepted", 0.0) / window, 1),
        "errors_4xx_per_s": round(rate.get("4xx", 0.0) / window, 1),
        "errors_5xx_per_s": round((rate.get("5xx", 0.0) + rate.get("503", 0.0)) / window, 1),
        "overloaded_per_s": round(rate.get("503", 0.0) / window, 1),
        "window_batches": window_batches,
        "avg_batch_size": round(window_batched / window_batches, 1) if window_batches else 0.0,
        "latency_samples": int(latency.get("lat_count", 0)),
        "avg_latency_ms": round(latency["avg_latency_ms"], 2),
        "p50_latency_ms": round(latency["p50_latency_ms"], 2),
        "p95_latency_ms": round(latency["p95_latency_ms"], 2),
        "p99_latency_ms": round(latency["p99_latency_ms"], 2),
        "workers": workers,
        "timestamp": now,
        "second": int(now),
    }
