"""The Prometheus text exposition format (version 0.0.4) of the pipeline's metrics."""

from __future__ import annotations

from metrics_app.selectors import PrometheusRead
from telemetry import metrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _number(value: float) -> str:
    """Integers without a trailing .0, other numbers with enough digits to round-trip."""
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _family(lines: list[str], name: str, kind: str, help_text: str, value: float) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {_number(value)}"]


def prometheus_render(read: PrometheusRead) -> str:
    """Counters, gauges and the receipt-to-commit latency histogram, in seconds (base units)."""
    counters = read.counters
    lines: list[str] = []
    _family(
        lines,
        "ingestor_messages_accepted_total",
        "counter",
        "Messages the API acknowledged (201) into the queue.",
        counters[metrics.TOTAL_ACCEPTED],
    )
    _family(
        lines,
        "ingestor_messages_persisted_total",
        "counter",
        "Messages committed to PostgreSQL.",
        counters[metrics.TOTAL_MESSAGES],
    )
    _family(
        lines,
        "ingestor_batches_persisted_total",
        "counter",
        "Batches (rq jobs) committed to PostgreSQL.",
        counters[metrics.TOTAL_BATCHES],
    )
    _family(
        lines,
        "ingestor_dead_letters_total",
        "counter",
        "Messages PostgreSQL refused, kept in the dead-letter table.",
        counters[metrics.TOTAL_DEAD_LETTERS],
    )
    _family(
        lines,
        "ingestor_queue_messages",
        "gauge",
        "Messages accepted and not yet persisted.",
        counters[metrics.QUEUE_LENGTH],
    )
    _family(lines, "ingestor_workers", "gauge", "rq workers registered on the ingest queue.", read.workers)
    _family(lines, "ingestor_persisted_per_second", "gauge",
            f"Messages persisted per second over the last {metrics.RATE_WINDOW_S} seconds.",
            read.gauges[metrics.CURRENT_RPS])  # fmt: skip

    # From the last partition maintenance: alert when the first is above 0 or the second is below a day.
    _family(lines, "ingestor_messages_default_partition_rows", "gauge",
            "Messages whose id falls in no time partition (kept in messages_default).",
            read.gauges[metrics.PARTITIONS_DEFAULT_ROWS])  # fmt: skip
    _family(lines, "ingestor_message_partitions_covered_until_seconds", "gauge",
            "Unix time up to which partitions exist for new messages (0 before the first maintenance).",
            read.gauges[metrics.PARTITIONS_COVERED_UNTIL])  # fmt: skip

    name = "ingestor_latency_window_seconds"
    lines += [
        f"# HELP {name} Receipt-to-commit latency over the last {metrics.LATENCY_WINDOW_S} seconds.",
        f"# TYPE {name} gauge",
    ]
    for label, key in (("avg", metrics.AVG_LATENCY_MS), ("0.5", metrics.P50_LATENCY_MS),
                       ("0.95", metrics.P95_LATENCY_MS), ("0.99", metrics.P99_LATENCY_MS)):  # fmt: skip
        lines.append(f'{name}{{quantile="{label}"}} {_number(read.gauges[key] / 1000.0)}')

    histogram = read.latency_histogram
    name = "ingestor_message_latency_seconds"
    lines += [
        f"# HELP {name} Receipt-to-commit latency of every persisted message.",
        f"# TYPE {name} histogram",
    ]
    cumulative = 0
    for index, upper_ms in enumerate(metrics.LATENCY_BUCKETS_MS):
        cumulative += int(histogram.get(f"b{index}", 0))
        lines.append(f'{name}_bucket{{le="{_number(upper_ms / 1000.0)}"}} {cumulative}')
    cumulative += int(histogram.get(f"b{len(metrics.LATENCY_BUCKETS_MS)}", 0))
    # _count and the +Inf bucket must agree; both come from the bucket counts, written together.
    lines.append(f'{name}_bucket{{le="+Inf"}} {cumulative}')
    lines.append(f"{name}_sum {_number(histogram.get('sum', 0.0) / 1000.0)}")
    lines.append(f"{name}_count {cumulative}")
    return "\n".join(lines) + "\n"
