"""JSON answers shared by every JSON door: the API here, the dashboard's /stats, /metrics and
buttons, the site's /openapi.json. Those doors run without Django's middleware or answer scripts,
so errors are JSON with a `detail`, never Django's HTML pages."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from django.http import HttpRequest, HttpResponse, JsonResponse

RETRY_AFTER_S = "1"

AsyncView = Callable[[HttpRequest], Coroutine[Any, Any, HttpResponse]]


_encoder = msgspec.json.Encoder()


def json_answer(data: dict[str, Any], *, status: int) -> HttpResponse:
    """JsonResponse's answer, encoded by msgspec: the ingest views' accepted answers, one per
    message on the single path. A JsonResponse (json.dumps through DjangoJSONEncoder) took ~33
    µs to build here, this ~10 (README, Benchmarks). Non-ASCII text goes out as UTF-8 rather
    than escaped: the same JSON. What msgspec cannot encode (a lone surrogate, which Python's
    json module reads from a client's body) goes through JsonResponse, as before."""
    try:
        body = _encoder.encode(data)
    except (TypeError, ValueError, msgspec.EncodeError):  # a type it lacks; a lone surrogate
        return JsonResponse(data, status=status)
    return HttpResponse(body, content_type="application/json", status=status)


def json_error(status: int, detail: str, **extra: Any) -> JsonResponse:
    """`{"detail": ..., **extra}` with `status`; a 503 also says when to retry."""
    response = JsonResponse({"detail": detail, **extra}, status=status)
    if status == 503:
        response["Retry-After"] = RETRY_AFTER_S
    return response


def method_not_allowed(request: HttpRequest, allowed: str) -> JsonResponse:
    response = json_error(405, f"method {request.method} not allowed; use {allowed}")
    response["Allow"] = allowed
    return response


def require_methods(*methods: str) -> Callable[[AsyncView], AsyncView]:
    """Django's require_http_methods for async JSON views: a JSON 405 with `Allow`, not HTML.
    The view keeps its methods as `allowed_methods`, for answers given before it runs (the site's
    CSRF failure view answers 405, not 403, to a method the view would refuse anyway)."""
    allowed = ", ".join(methods)

    def decorator(view: AsyncView) -> AsyncView:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest) -> HttpResponse:
            if request.method not in methods:
                return method_not_allowed(request, allowed)
            return await view(request)

        wrapper.__dict__["allowed_methods"] = methods
        return wrapper

    return decorator


# Django's require_safe, answering in JSON.
require_safe = require_methods("GET", "HEAD")
