"""What the dashboard shows people: the cards and the two tables, as HTML fragments."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.template.loader import render_to_string

from metrics_app.templatetags.dashboard_format import decimal, thousands
from telemetry import metrics

TEMPLATE = "metrics_app/dashboard.html"
TABLE_ROWS = 10
NO_SAMPLES = "–"

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Card:
    key: str
    label: str
    value: str
    unit: str
    raw: float
    hint: str = ""


def _windowed(value: float, samples: int) -> str:
    """A figure of a window that may hold nothing: a dash then, not a misleading zero."""
    return decimal(value) if samples else NO_SAMPLES


def cards_build(stats: dict[str, Any]) -> list[Card]:
    """The cards, in reading order, with their numbers formatted for people."""
    samples = stats["latency_samples"]
    recent = f"last {metrics.LATENCY_WINDOW_S} s"
    rate = f"last {metrics.RATE_WINDOW_S} s"
    return [
        Card("total_messages", "Total persisted", thousands(stats["total_messages"]), "msgs",
             stats["total_messages"], f"{thousands(stats['total_accepted'])} accepted"),
        Card("persisted_per_s", "Throughput", decimal(stats["persisted_per_s"]), "msg/s",
             stats["persisted_per_s"], f"persisted, {rate}"),
        Card("accepted_per_s", "Accepted", decimal(stats["accepted_per_s"]), "msg/s",
             stats["accepted_per_s"], f"at the API, {rate}"),
        Card("queue_length", "Queue depth", thousands(stats["queue_length"]), "msgs",
             stats["queue_length"], "accepted, not yet persisted"),
        Card("total_batches", "Batches", thousands(stats["total_batches"]), "",
             stats["total_batches"], "committed"),
        Card("avg_batch_size", "Avg batch size", _windowed(stats["avg_batch_size"], stats["window_batches"]),
             "msgs", stats["avg_batch_size"], f"per batch, {recent}"),
        Card("avg_latency_ms", "Avg latency", _windowed(stats["avg_latency_ms"], samples), "ms",
             stats["avg_latency_ms"], f"receipt → commit, {recent}"),
        Card("p95_latency_ms", "p95 latency", _windowed(stats["p95_latency_ms"], samples), "ms",
             stats["p95_latency_ms"], recent),
        Card("p99_latency_ms", "p99 latency", _windowed(stats["p99_latency_ms"], samples), "ms",
             stats["p99_latency_ms"], recent),
        Card("total_dead_letters", "Dead letters", thousands(stats["total_dead_letters"]), "msgs",
             stats["total_dead_letters"], "refused by PostgreSQL"),
        Card("workers", "Workers alive", thousands(stats["workers"]), "", stats["workers"], "on queue ingest"),
        Card("errors_per_s", "Errors 4xx / 5xx",
             f"{decimal(stats['errors_4xx_per_s'])} / {decimal(stats['errors_5xx_per_s'])}", "/s",
             stats["errors_4xx_per_s"] + stats["errors_5xx_per_s"],
             f"{decimal(stats['overloaded_per_s'])}/s of them 503 (overload)"),
    ]  # fmt: skip


def batches_rows(batches: Rows) -> Rows:
    """The latest batches for the table, their epoch stamps as datetimes."""
    return [{**batch, "at": datetime.fromtimestamp(batch["at"], tz=UTC)} for batch in batches[:TABLE_ROWS]]


def messages_rows(messages: Rows) -> Rows:
    """The latest messages for the table, each with its receipt-to-commit latency."""
    return [
        {**message, "latency_ms": (message["inserted_at"] - message["created_at"]).total_seconds() * 1000.0}
        for message in messages
    ]


def panels_render(*, stats: dict[str, Any] | None, batches: Rows | None, messages: Rows | None) -> str:
    """The out-of-band fragments htmx swaps into the page: the cards and/or the two tables."""
    html = []
    if stats is not None:
        html.append(render_to_string(f"{TEMPLATE}#cards", {"cards": cards_build(stats), "oob": True}))
    if batches is not None:
        context = {"batches": batches_rows(batches), "oob": True}
        html.append(render_to_string(f"{TEMPLATE}#batches-table", context))
    if messages is not None:
        context = {"messages": messages_rows(messages), "oob": True}
        html.append(render_to_string(f"{TEMPLATE}#messages-table", context))
    return "".join(html)
