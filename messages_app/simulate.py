"""A simulated burst of messages through the API's own batcher: what the dashboard's button does."""

from __future__ import annotations

import asyncio
import random
import time

from django.conf import settings

from messages_app.batcher import batcher_for_loop
from messages_app.partitions import uuid7_strings
from messages_app.services import BatchRow

SIMULATE_MAX = 10_000
_WORDS = (
    "deploy", "latency", "queue", "batch", "worker", "redis", "postgres", "burst", "retry", "ack",
    "shard", "commit", "rollback", "metrics", "ping", "hello", "lunch?", "ship it", "LGTM", "on call",
)  # fmt: skip


def _simulated_row(index: int, received: float, rng: random.Random, message_id: str) -> BatchRow:
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
    content = f"simulated #{index + 1}: {words}"
    return BatchRow(message_id, rng.randint(1, 1_000), rng.randint(1, 50), content, received)


async def burst_simulate(*, count: int) -> int:
    """Generate `count` messages server-side and queue them through the API's own batcher.

    They take the same path as `POST /messages` (group commit into rq jobs, backlog limit,
    counters), so the dashboard shows what a real burst does. Returns once all are in Redis;
    raises the batcher's Overloaded or a Redis error like the API would answer 503.
    """
    if not 1 <= count <= SIMULATE_MAX:
        raise ValueError(f"count must be an integer from 1 to {SIMULATE_MAX}")
    # Not for security: random text for demo traffic.
    rng = random.Random()  # noqa: S311
    received = time.time()
    rows = [
        _simulated_row(index, received, rng, message_id)
        for index, message_id in enumerate(uuid7_strings(count))
    ]
    size = settings.BATCH_SIZE
    batcher = batcher_for_loop()
    await asyncio.gather(*(batcher.submit(rows[start : start + size]) for start in range(0, count, size)))
    return count
