"""Rate limits shared by every web process: fixed windows counted in Redis by `limits`.

One Redis round trip per limited request (an INCR with its expiry, as one Lua call); none at all
for a limit that is off. A refusal is a 429 with `Retry-After` and the `RateLimit-*` headers.
Redis unreachable lets the request through: the limit is protection, not the pipeline, and the
request then meets the queue's own 503 if Redis is really gone.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.http import JsonResponse

from messages_app.http import json_error

# `limits` (and what it imports: ~1.5 MB in each web process) loads with the first limit in force,
# so a process whose limits are all off never holds it.
if TYPE_CHECKING:
    from limits import RateLimitItem
    from limits.aio.strategies import FixedWindowRateLimiter

logger = logging.getLogger(__name__)

KEY_PREFIX = "ingestor:ratelimit"


@dataclass(frozen=True)
class Limit:
    """A configured limit: its name in the Redis keys and `limits`' item, or None when off."""

    name: str
    item: RateLimitItem | None


@functools.lru_cache(maxsize=16)
def limit_parse(name: str, text: str) -> Limit:
    """`"100/second"`, `"6000 per minute"`...; empty turns the limit off. (Settings check the
    text at start-up; cached, as each request asks.)"""
    if not text.strip():
        return Limit(name, None)
    from limits import parse

    return Limit(name, parse(text))


def ingest_limit() -> Limit:
    return limit_parse("ingest", settings.INGEST_RATE_LIMIT)


def simulate_limit() -> Limit:
    return limit_parse("simulate", settings.SIMULATE_RATE_LIMIT)


def identity_of_address(address: str | None) -> str:
    return f"addr:{address or 'unknown'}"


# redis.asyncio clients belong to the event loop that made them: one limiter per loop.
_limiters: dict[asyncio.AbstractEventLoop, FixedWindowRateLimiter] = {}


def _limiter() -> FixedWindowRateLimiter:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import FixedWindowRateLimiter

        storage = RedisStorage(
            limits_storage_uri(settings.REDIS_URL),
            implementation="redispy",
            wrap_exceptions=True,
            key_prefix=KEY_PREFIX,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
        )
        limiter = _limiters[loop] = FixedWindowRateLimiter(storage)
    return limiter


def limits_storage_uri(redis_url: str) -> str:
    """REDIS_URL as the `limits` library names the same server for its asyncio storage: its
    scheme for a Unix socket is `redis+unix`."""
    scheme, separator, rest = redis_url.partition("://")
    return f"async+{'redis+unix' if scheme == 'unix' else scheme}{separator}{rest}"


def identity_of_key(api_key: str) -> str:
    """A key's identity in Redis key names: a digest, so no key is readable there."""
    return "key:" + hashlib.blake2b(api_key.encode(), digest_size=12).hexdigest()


async def rate_check(limit: Limit, identity: str) -> JsonResponse | None:
    """None when `identity` may go on under `limit` (counting this request); else the 429."""
    item = limit.item
    if item is None:
        return None
    from limits.errors import StorageError

    limiter = _limiter()
    try:
        if await limiter.hit(item, limit.name, identity):
            return None
        stats = await limiter.get_window_stats(item, limit.name, identity)
        reset_s = max(1, math.ceil(stats.reset_time - time.time()))
    except StorageError as exc:
        logger.warning("rate limit %s not checked, Redis unavailable: %s", limit.name, exc)
        return None
    response = json_error(429, f"rate limit of {item} exceeded; retry after {reset_s}s")
    response["Retry-After"] = str(reset_s)
    response["RateLimit-Limit"] = str(item.amount)
    response["RateLimit-Remaining"] = "0"
    response["RateLimit-Reset"] = str(reset_s)
    return response
