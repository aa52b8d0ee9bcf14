"""The dashboard's charts: one point a second, and a gap wherever a second is not known.

Counts and latency come from the per-second hashes in Redis, which every writer fills whether or
not a dashboard watches, so any second of the last five minutes can be read (an empty hash is an
idle second: zeros). The queue depth is a gauge: only its value at the time is true, so a second
has a depth only if this process sampled it during that second. Seconds nobody watched get
`None`, which Chart.js draws as a gap, never a value read later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from telemetry import metrics

SERIES_SECONDS = 300
# A second is drawn once every writer is past it: a worker's pipeline stamped at the end of
# second S reaches Redis a few milliseconds into S+1.
SECOND_SETTLE_S = 0.25
# Seconds re-read every frame in case a late write landed in them; older ones are final.
REREAD_SECONDS = 3

Point = dict[str, Any]


def point_build(second: int, raw: Mapping[str, float] | None, queue: int | None) -> Point:
    """One second of the charts: messages in and out, the queue, latency percentiles.

    `raw` is None for a second that was never read (Redis did not answer): every value is None.
    Latency is None for a second without persisted messages, the queue for one nobody sampled.
    """
    summary = metrics.window_summary([raw or {}])
    has_latency = summary.get("lat_count", 0) > 0
    return {
        "t": second,
        "in": None if raw is None else int(raw.get("accepted", 0)),
        "out": None if raw is None else int(raw.get("persisted", 0)),
        "queue": None if queue is None else max(int(queue), 0),
        "p50": round(summary["p50_latency_ms"], 2) if has_latency else None,
        "p95": round(summary["p95_latency_ms"], 2) if has_latency else None,
        "p99": round(summary["p99_latency_ms"], 2) if has_latency else None,
    }


@dataclass
class ChartHistory:
    """The last five minutes as this process knows them: hashes read, queue depths sampled."""

    seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    queue_at: dict[int, int] = field(default_factory=dict)
    last_point: int | None = None

    def seconds_wanted(self, now: float) -> list[int]:
        """The seconds to read at `now`: those not read yet, and the last few again."""
        current = int(now)
        window = range(current - SERIES_SECONDS - 1, current)
        return [s for s in window if s not in self.seconds or s >= current - REREAD_SECONDS]

    def read_add(self, *, seconds: Mapping[int, dict[str, float]], queue: int, now: float) -> None:
        """Keep a read's hashes and the queue depth it saw, as that of the second it was taken in."""
        self.seconds.update(seconds)
        self.queue_at[int(now)] = queue
        oldest = int(now) - SERIES_SECONDS - 1
        for second in [s for s in self.seconds if s < oldest]:
            del self.seconds[second]
        for second in [s for s in self.queue_at if s < oldest]:
            del self.queue_at[second]

    def reads_forget(self) -> None:
        """Drop the hashes read (they are read again), keep the depths sampled (they stay true).

        For a broadcaster that stopped for a while: the hashes of its last seconds may have
        received late writes after it stopped re-reading them.
        """
        self.seconds.clear()

    def clear(self) -> None:
        """Forget everything (the pipeline was reset: the hashes are gone from Redis)."""
        self.seconds.clear()
        self.queue_at.clear()

    def point(self, second: int) -> Point:
        return point_build(second, self.seconds.get(second), self.queue_at.get(second))

    def points_settle(self, now: float, *, first: bool) -> list[Point]:
        """Points for the seconds every writer has left since the last call, gaps included."""
        settled = int(now - 1 - SECOND_SETTLE_S)
        if first or self.last_point is None:
            self.last_point = settled
            return []
        start = max(self.last_point + 1, settled - SERIES_SECONDS + 1)
        points = [self.point(second) for second in range(start, settled + 1)]
        self.last_point = max(self.last_point, settled)
        return points

    def series(self) -> list[Point]:
        """The drawn seconds of the last five minutes, from the first one with anything to show."""
        if self.last_point is None:
            return []
        seconds = range(self.last_point - SERIES_SECONDS + 1, self.last_point + 1)
        shown = [s for s in seconds if self.seconds.get(s) or self.queue_at.get(s)]
        if not shown:
            return []
        return [self.point(second) for second in range(shown[0], self.last_point + 1)]
