"""The dashboard's asynchronous Redis client (the process's synchronous one is telemetry's)."""

from __future__ import annotations

from django.conf import settings
from redis.asyncio import Redis as AsyncRedis


def redis_async_connect() -> AsyncRedis:
    """A new asyncio client, with the same short timeouts as the synchronous one.

    Built per task rather than cached per process: an asyncio client's connections belong to the
    event loop that opened them, and a test or a server may run more than one loop.
    """
    return AsyncRedis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
    )
