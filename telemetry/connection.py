"""The one synchronous Redis client of a process, shared by the ingest queue and the metrics, and
the asyncio clients of the dashboard: at REDIS_URL, or at the master Sentinel names."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any, cast

from django.conf import settings
from redis import ConnectionPool, Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.client import Pipeline
from redis.connection import Connection
from redis.exceptions import RedisError
from redis.sentinel import Sentinel

from telemetry.sentinel import sentinel_client_options, url_auth


@functools.cache
def redis_connection() -> Redis:
    """Built once per process: every caller shares its connection pool.

    Short timeouts: with Redis gone the API must answer 503 within a second, not hang (a
    stopped Redis refuses at once; a frozen one is given up on after the socket timeout).
    Behind Sentinel, each new connection asks the sentinels for the master, so after a failover
    the client reaches the promoted replica once its broken connections have been dropped.
    """
    options: dict[str, Any] = {
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT,
        "health_check_interval": 30,
    }
    if settings.REDIS_SENTINELS:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            settings.REDIS_SENTINELS,
            sentinel_kwargs=sentinel_client_options(
                socket_timeout=settings.REDIS_SOCKET_TIMEOUT, connect_timeout=settings.REDIS_CONNECT_TIMEOUT
            ),
            **url_auth(settings.REDIS_URL),
            **options,
        )
        return cast(Redis, sentinel.master_for(settings.REDIS_MASTER_NAME))  # type: ignore[no-untyped-call]
    return Redis.from_url(settings.REDIS_URL, **options)


class _SentinelAsyncRedis(AsyncRedis):
    """The master's client that also closes its connections to the sentinels when closed."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            await sentinel.aclose()


def redis_async_client() -> AsyncRedis:
    """A new asyncio client with the same timeouts and target as `redis_connection`; the caller closes it.

    Built per task rather than cached per process: an asyncio client's connections belong to the
    event loop that opened them, and a test or a server may run more than one loop.
    """
    options: dict[str, Any] = {
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT,
    }
    if settings.REDIS_SENTINELS:
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            settings.REDIS_SENTINELS,
            sentinel_kwargs=sentinel_client_options(
                socket_timeout=settings.REDIS_SOCKET_TIMEOUT, connect_timeout=settings.REDIS_CONNECT_TIMEOUT
            ),
            **url_auth(settings.REDIS_URL),
            **options,
        )
        return cast(
            AsyncRedis, sentinel.master_for(settings.REDIS_MASTER_NAME, redis_class=_SentinelAsyncRedis)
        )
    return AsyncRedis.from_url(settings.REDIS_URL, **options)


class ReplicasBehind(RedisError):
    """The master applied a write but fewer replicas than required confirmed it in time.

    A RedisError, so the API answers 503: the write may still survive, and a client retrying
    with the same ids makes no duplicate (rows are stored once per id).
    """


class _LeasedConnection:
    """A connection pool's face over one connection taken from a real pool.

    WAIT counts the replicas that have the last write *of the connection it is sent on*, so it
    must follow the transaction on the very connection the transaction used; a pipeline hands
    its connection back to the pool as soon as it has executed. redis-py's Pipeline asks its pool
    for nothing but these two methods; the WAIT tests in tests/test_sentinel.py and
    tests/test_redis_failover.py fail if an upgrade changes that.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def get_connection(self, *args: Any, **kwargs: Any) -> Connection:
        return self.connection

    def release(self, connection: Connection) -> None:
        pass


@contextlib.contextmanager
def replicated_pipeline(client: Redis, *, min_replicas: int, timeout_ms: int) -> Iterator[Pipeline]:
    """A transactional pipeline of `client`; once the body has executed it, wait until
    `min_replicas` replicas have its writes, or raise ReplicasBehind after `timeout_ms`.

    With `min_replicas` 0 this is `client.pipeline()`. Redis replicates asynchronously: a master
    killed right after answering can take its last acknowledged writes with it, and the replica
    Sentinel promotes never had them. WAIT closes that gap for as many replicas as it waits for,
    at the cost of one replication round trip per call.
    """
    if min_replicas <= 0:
        with client.pipeline() as pipe:
            yield pipe
        return
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        leased = cast(ConnectionPool, _LeasedConnection(connection))
        with Pipeline(leased, client.response_callbacks, True, None) as pipe:
            yield pipe
            if pipe.command_stack:
                raise RuntimeError("replicated_pipeline: the body must execute the pipeline")
        connection.send_command("WAIT", min_replicas, timeout_ms)  # type: ignore[no-untyped-call]
        acknowledged = int(connection.read_response())
        if acknowledged < min_replicas:
            raise ReplicasBehind(
                f"{acknowledged} of {min_replicas} replicas confirmed the write within {timeout_ms} ms"
            )
    except ReplicasBehind:
        raise
    except BaseException:
        # A connection left mid-reply must not go back into service with a reply still pending.
        connection.disconnect()  # type: ignore[no-untyped-call]
        raise
    finally:
        pool.release(connection)
