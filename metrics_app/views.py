"""The dashboard page, its two controls, and the metrics for scripts (JSON) and Prometheus (text).

/stats and /metrics run on the middleware-free API handler (ingestor_site/handlers.py); the page,
/simulate and /reset keep Django's middleware for sessions, CSRF and the staff check.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from redis.exceptions import RedisError

from messages_app.batcher import Overloaded
from messages_app.http import json_error, require_methods, require_safe
from messages_app.ratelimit import identity_of_address, rate_check, simulate_limit
from messages_app.services import messages_reset
from messages_app.simulate import SIMULATE_MAX, burst_simulate
from metrics_app.broadcaster import dashboard_page_state
from metrics_app.exposition import CONTENT_TYPE, exposition_render
from metrics_app.panels import batches_rows, cards_build, messages_rows
from metrics_app.selectors import stats_snapshot


def _unavailable(exc: Exception) -> JsonResponse:
    return json_error(503, f"metrics unavailable: {type(exc).__name__}")


async def _is_staff(request: HttpRequest) -> bool:
    """Whether the session is a staff user's; no one is while PostgreSQL (the users) is down."""
    try:
        user = await request.auser()
        return bool(user.is_active and user.is_staff)
    except DatabaseError:
        return False


@require_safe
async def stats(request: HttpRequest) -> HttpResponse:
    try:
        snapshot = await sync_to_async(stats_snapshot, thread_sensitive=False)()
    except (RedisError, OSError) as exc:
        return _unavailable(exc)
    return JsonResponse(snapshot)


@require_safe
async def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format: counters, gauges and the latency histogram, shared by every process."""
    try:
        body = await sync_to_async(exposition_render, thread_sensitive=False)()
    except (RedisError, OSError) as exc:
        return _unavailable(exc)
    return HttpResponse(body, content_type=CONTENT_TYPE)


@require_safe
async def dashboard(request: HttpRequest) -> HttpResponse:
    """The live dashboard; the numbers are in the HTML too, so it reads without JavaScript.
    It reads Redis only: with PostgreSQL down it still shows, without the staff controls."""
    is_staff = await _is_staff(request)
    try:
        state = await dashboard_page_state()
    except (RedisError, OSError) as exc:
        return render(request, "metrics_app/unavailable.html", {"error": type(exc).__name__}, status=503)
    context: dict[str, Any] = {
        "cards": cards_build(state.stats),
        "batches": batches_rows(state.batches),
        "messages": messages_rows(state.messages),
        "is_staff": is_staff,
        "simulate_max": SIMULATE_MAX,
    }
    return await sync_to_async(render)(request, "metrics_app/dashboard.html", context)


def _answer(request: HttpRequest, code: int, message: str, **data: Any) -> HttpResponse:
    """JSON for scripts; a short status line for the dashboard's htmx requests."""
    if getattr(request, "htmx", False):
        html = render_to_string("metrics_app/dashboard.html#notice", {"message": message, "ok": code < 400})
        return HttpResponse(html, status=code)
    return JsonResponse({"detail": message, **data}, status=code)


def _requested_count(request: HttpRequest) -> int:
    if request.content_type == "application/json":
        payload = json.loads(request.body or b"{}")
        raw = payload.get("count") if isinstance(payload, dict) else None
    else:
        raw = request.POST.get("count")
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw.strip())
    if type(raw) is not int or not 1 <= raw <= SIMULATE_MAX:
        raise ValueError(f"count must be an integer from 1 to {SIMULATE_MAX}")
    return raw


@require_methods("POST")
async def simulate(request: HttpRequest) -> HttpResponse:
    """POST {count}: generate a burst server-side through the API's batcher; 202 once queued."""
    # Writes need a key when keys are configured: from the dashboard, a staff session stands in.
    if settings.INGEST_API_KEYS and not await _is_staff(request):
        return _answer(request, 403, "with INGEST_API_KEYS set, only staff may simulate bursts")
    # Whatever the keys: without them anyone who can post a form (CSRF only asks for a cookie the
    # client sets itself) may ask for a burst of 10,000 messages.
    limited = await rate_check(simulate_limit(), identity_of_address(request.META.get("REMOTE_ADDR")))
    if limited is not None:
        return limited
    try:
        count = _requested_count(request)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested past the parser's depth
        return _answer(request, 422, str(exc) or "malformed JSON")
    try:
        await burst_simulate(count=count)
    except Overloaded:
        return _answer(request, 503, "the queue is over its backlog limit; try again shortly")
    except (RedisError, OSError) as exc:
        return _answer(request, 503, f"queue unavailable: {type(exc).__name__}")
    return _answer(request, 202, f"Queued {count:,} simulated messages.", accepted=count, status="queued")


@require_methods("DELETE")
async def reset(request: HttpRequest) -> HttpResponse:
    """DELETE: empty the messages and dead letters and zero the counters (staff only)."""
    if not await _is_staff(request):
        return _answer(request, 403, "only staff may reset the pipeline")
    try:
        await sync_to_async(messages_reset)()
    except (RedisError, OSError) as exc:
        return _answer(request, 503, f"reset incomplete, Redis unavailable: {type(exc).__name__}")
    except DatabaseError as exc:
        return _answer(request, 503, f"reset not done, database unavailable: {type(exc).__name__}")
    return _answer(request, 200, "Reset done: messages, dead letters and counters cleared.", status="reset")
