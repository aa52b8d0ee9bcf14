"""A latency histogram with bounded memory and ~0.8% relative precision.

Buckets are log-linear over microseconds, the layout HdrHistogram uses: 256 one-microsecond
buckets, then 128 buckets per power of two. Recording is O(1) with no allocation, merging two
histograms (from worker processes) is an element-wise sum, and a percentile never needs the
samples themselves, so a run of millions of requests costs the same 30 KB as a run of ten.
"""

from __future__ import annotations

import math
from typing import Any

_LINEAR = 256  # values below this many microseconds get a bucket each
_SUB = 128  # buckets per power of two above that: the relative error is at most 1/128
_MAX_SHIFT = 28  # up to 2**36 us (19 hours); anything slower lands in the last bucket
_BUCKETS = _LINEAR + _MAX_SHIFT * _SUB


def bucket_index(value_us: int) -> int:
    """The bucket holding a latency of `value_us` microseconds."""
    if value_us < _LINEAR:
        return max(value_us, 0)
    shift = value_us.bit_length() - 8
    if shift > _MAX_SHIFT:
        return _BUCKETS - 1
    return _LINEAR + (shift - 1) * _SUB + (value_us >> shift) - _SUB


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and largest microsecond values bucket `index` holds."""
    if index < _LINEAR:
        return index, index
    shift = (index - _LINEAR) // _SUB + 1
    mantissa = (index - _LINEAR) % _SUB + _SUB
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class LatencyHistogram:
    """Counts of latencies; exact count, sum, min and max, percentiles within one bucket's width."""

    __slots__ = ("counts", "count", "total_us", "min_us", "max_us")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total_us = 0
        self.min_us = 0
        self.max_us = 0

    def record(self, seconds: float) -> None:
        """Add one latency measured in seconds."""
        value = int(seconds * 1_000_000)
        if value < 0:
            value = 0
        self.counts[bucket_index(value)] += 1
        if self.count == 0 or value < self.min_us:
            self.min_us = value
        if value > self.max_us:
            self.max_us = value
        self.count += 1
        self.total_us += value

    def merge(self, other: LatencyHistogram) -> None:
        """Add every sample of `other` to this histogram."""
        if other.count == 0:
            return
        self.counts = [mine + theirs for mine, theirs in zip(self.counts, other.counts, strict=True)]
        self.min_us = other.min_us if self.count == 0 else min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        self.count += other.count
        self.total_us += other.total_us

    def percentile_ms(self, percent: float) -> float:
        """The latency (ms) below which `percent`% of the samples fall: nearest rank, reported as the
        highest value its bucket can hold (never above the largest sample)."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(percent / 100.0 * self.count))
        seen = 0
        for index, bucket_count in enumerate(self.counts):
            seen += bucket_count
            if seen >= rank:
                high = bucket_bounds(index)[1]
                return min(max(high, self.min_us), self.max_us) / 1000.0
        return self.max_us / 1000.0

    def mean_ms(self) -> float:
        return self.total_us / self.count / 1000.0 if self.count else 0.0

    def summary_ms(self) -> dict[str, float | int]:
        """count, avg, min, p50, p90, p95, p99, p99_9 and max, in milliseconds."""
        return {
            "count": self.count,
            "avg": round(self.mean_ms(), 3),
            "min": round(self.min_us / 1000.0, 3),
            "p50": round(self.percentile_ms(50), 3),
            "p90": round(self.percentile_ms(90), 3),
            "p95": round(self.percentile_ms(95), 3),
            "p99": round(self.percentile_ms(99), 3),
            "p99_9": round(self.percentile_ms(99.9), 3),
            "max": round(self.max_us / 1000.0, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        """A compact, JSON-able form (non-empty buckets only) for passing between processes."""
        return {
            "buckets": {index: n for index, n in enumerate(self.counts) if n},
            "count": self.count,
            "total_us": self.total_us,
            "min_us": self.min_us,
            "max_us": self.max_us,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        histogram = cls()
        for index, n in data["buckets"].items():
            histogram.counts[int(index)] = int(n)
        histogram.count = int(data["count"])
        histogram.total_us = int(data["total_us"])
        histogram.min_us = int(data["min_us"])
        histogram.max_us = int(data["max_us"])
        return histogram
