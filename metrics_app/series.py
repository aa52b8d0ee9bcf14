"""The dashboard's charts: one point a second over the last five minutes."""

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


def point_build(second: int, raw: Mapping[str, float], queue: int) -> Point:
    """One second of the charts: messages in and out, the queue, latency percentiles (None if idle)."""
    summary = metrics.window_summary([raw])
    has_latency = summary.get("lat_count", 0) > 0
    return {
        "t": second,
        "in": int(raw.get("accepted", 0)),
        "out": int(raw.get("persisted", 0)),
        "queue": max(int(queue), 0),
        "p50": round(summary["p50_latency_ms"], 2) if has_latency else None,
        "p95": round(summary["p95_latency_ms"], 2) if has_latency else None,
        "p99": round(summary["p99_latency_ms"], 2) if has_latency else None,
    }


@dataclass
class ChartHistory:
    """The last five minutes as this process knows them: hashes read, queue depths seen."""

    seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    queue_at: dict[int, int] = field(default_factory=dict)
    last_point: int | None = None

    def seconds_wanted(self, now: float) -> list[int]:
        """The seconds to read at `now`: those not read yet, and the last few again."""
        current = int(now)
        window = range(current - SERIES_SECONDS - 1, current)
        return [s for s in window if s not in self.seconds or s >= current - REREAD_SECONDS]

    def read_add(self, *, seconds: Mapping[int, dict[str, float]], now: float) -> None:
        """Keep a read's hashes; forget those older than the series."""
        self.seconds.update(seconds)
        oldest = int(now) - SERIES_SECONDS - 1
        for second in [s for s in self.seconds if s < oldest]:
            del self.seconds[second]
            self.queue_at.pop(second, None)

    def clear(self) -> None:
        """Forget everything (the pipeline was reset: the hashes are gone from Redis)."""
        self.seconds.clear()
        self.queue_at.clear()

    def points_settle(self, now: float, queue: int, *, first: bool) -> list[Point]:
        """Points for the seconds every writer has left since the last call."""
        settled = int(now - 1 - SECOND_SETTLE_S)
        if first or self.last_point is None:
            self.last_point = settled
            self.queue_at[settled] = queue
            return []
        points = []
        for second in range(max(self.last_point + 1, settled - SERIES_SECONDS + 1), settled + 1):
            self.queue_at[second] = queue
            points.append(point_build(second, self.seconds.get(second, {}), queue))
        self.last_point = max(self.last_point, settled)
        return points

    def series(self, queue: int) -> list[Point]:
        """The drawn seconds of the last five minutes, from the first one that saw any traffic."""
        if self.last_point is None:
            return []
        seconds = list(range(self.last_point - SERIES_SECONDS + 1, self.last_point + 1))
        busy = [s for s in seconds if self.seconds.get(s)]
        if not busy:
            return []
        seconds = seconds[seconds.index(busy[0]) :]
        # Before this process watched the queue, its depth follows from the per-second counts:
        # walking back, a second's depth is the next one's minus what came in plus what went out.
        depth = self.queue_at.get(seconds[-1], queue)
        depths: dict[int, int] = {}
        for second in reversed(seconds):
            depth = self.queue_at.get(second, depth)
            depths[second] = depth
            raw = self.seconds.get(second, {})
            depth = int(depth - raw.get("accepted", 0) + raw.get("persisted", 0) + raw.get("dead", 0))
        return [point_build(s, self.seconds.get(s, {}), depths[s]) for s in seconds]
