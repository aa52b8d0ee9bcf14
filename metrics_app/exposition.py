"""The pipeline's metrics for Prometheus: a collector over one Redis read, on a registry of its own.

Every web process and worker writes the numbers to Redis, so a scrape of any process reads them
there (one round trip, nothing written) rather than from the process's memory. The registry is
private: the global one would add this process's own Python and GC metrics, which differ from one
web process to the next behind the same address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from metrics_app.selectors import PrometheusRead, prometheus_read
from telemetry import metrics

# generate_latest writes version 0.0.4 of the text format, whatever the client's newest is.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def _le(upper_s: float) -> str:
    """A bucket bound as people write it: "0.0075", "1", "60" (not "1.0", "60.0")."""
    return str(int(upper_s)) if upper_s == int(upper_s) else repr(upper_s)


def latency_buckets(histogram: dict[str, float]) -> list[tuple[str, float]]:
    """The stored histogram (ms, one count per bucket) as Prometheus buckets: seconds, cumulative."""
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for index, upper_ms in enumerate(metrics.LATENCY_BUCKETS_MS):
        cumulative += int(histogram.get(f"b{index}", 0))
        buckets.append((_le(upper_ms / 1000.0), cumulative))
    # _count is the +Inf bucket: both come from the bucket counts, written together.
    cumulative += int(histogram.get(f"b{len(metrics.LATENCY_BUCKETS_MS)}", 0))
    buckets.append(("+Inf", cumulative))
    return buckets


class PipelineCollector:
    """Counters, gauges and the receipt-to-commit latency histogram, in base units (seconds)."""

    def __init__(self, read: Callable[[], PrometheusRead] = prometheus_read) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        read = self._read()
        counters = read.counters
        yield CounterMetricFamily(
            "ingestor_messages_accepted",
            "Messages the API acknowledged (201) into the queue.",
            value=counters[metrics.TOTAL_ACCEPTED],
        )
        yield CounterMetricFamily(
            "ingestor_messages_persisted",
            "Messages committed to PostgreSQL.",
            value=counters[metrics.TOTAL_MESSAGES],
        )
        yield CounterMetricFamily(
            "ingestor_batches_persisted",
            "Batches (rq jobs) committed to PostgreSQL.",
            value=counters[metrics.TOTAL_BATCHES],
        )
        yield CounterMetricFamily(
            "ingestor_dead_letters",
            "Messages PostgreSQL refused, kept in the dead-letter table.",
            value=counters[metrics.TOTAL_DEAD_LETTERS],
        )
        yield GaugeMetricFamily(
            "ingestor_queue_messages",
            "Messages accepted and not yet persisted.",
            value=counters[metrics.QUEUE_LENGTH],
        )
        yield GaugeMetricFamily(
            "ingestor_workers", "rq workers registered on the ingest queue.", value=read.workers
        )
        yield GaugeMetricFamily(
            "ingestor_persisted_per_second",
            f"Messages persisted per second over the last {metrics.RATE_WINDOW_S} seconds.",
            value=read.gauges[metrics.CURRENT_RPS],
        )
        # From the last partition maintenance: alert when the first is above 0 or the second is
        # less than a day ahead.
        yield GaugeMetricFamily(
            "ingestor_messages_default_partition_rows",
            "Messages whose id falls in no time partition (kept in messages_default).",
            value=read.gauges[metrics.PARTITIONS_DEFAULT_ROWS],
        )
        yield GaugeMetricFamily(
            "ingestor_message_partitions_covered_until_seconds",
            "Unix time up to which partitions exist for new messages (0 before the first maintenance).",
            value=read.gauges[metrics.PARTITIONS_COVERED_UNTIL],
        )
        window = GaugeMetricFamily(
            "ingestor_latency_window_seconds",
            f"Receipt-to-commit latency over the last {metrics.LATENCY_WINDOW_S} seconds.",
            labels=["quantile"],
            unit="seconds",
        )
        for label, key in (("avg", metrics.AVG_LATENCY_MS), ("0.5", metrics.P50_LATENCY_MS),
                           ("0.95", metrics.P95_LATENCY_MS), ("0.99", metrics.P99_LATENCY_MS)):  # fmt: skip
            window.add_metric([label], read.gauges[key] / 1000.0)
        yield window
        histogram = read.latency_histogram
        yield HistogramMetricFamily(
            "ingestor_message_latency_seconds",
            "Receipt-to-commit latency of every persisted message.",
            buckets=latency_buckets(histogram),
            sum_value=histogram.get("sum", 0.0) / 1000.0,
            unit="seconds",
        )


REGISTRY = CollectorRegistry(auto_describe=False)
# No describe(): registering reads nothing; every scrape reads Redis once, in collect().
REGISTRY.register(PipelineCollector())


def exposition_render() -> bytes:
    """The text exposition of every metric, read from Redis now (blocking: run it off the loop)."""
    return generate_latest(REGISTRY)
