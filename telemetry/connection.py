"""The one synchronous Redis client of a process, shared by the ingest queue and the metrics."""

from __future__ import annotations

import functools

from django.conf import settings
from redis import Redis


@functools.cache
def redis_connection() -> Redis:
    """Built once per process: every caller shares its connection pool.

    Short timeouts: with Redis gone the API must answer 503 within a second, not hang (a
    stopped Redis refuses at once; a frozen one is given up on after the socket timeout).
    """
    return Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
        health_check_interval=30,
    )
