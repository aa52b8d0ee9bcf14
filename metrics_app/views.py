"""Metrics without JavaScript: JSON for scripts."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from redis.exceptions import RedisError

from metrics_app.selectors import stats_snapshot


async def stats(request: HttpRequest) -> HttpResponse:
    try:
        snapshot = await sync_to_async(stats_snapshot, thread_sensitive=False)()
    except (RedisError, OSError) as exc:
        response = JsonResponse({"detail": f"metrics unavailable: {type(exc).__name__}"}, status=503)
        response["Retry-After"] = "1"
        return response
    return JsonResponse(snapshot)
