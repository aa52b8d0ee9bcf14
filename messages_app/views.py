"""The JSON API: thin async doors into validation, the batcher, services and selectors.

These views run on a handler without Django's middleware (ingestor_site/asgi.py), so each one
checks what it needs itself: method, content type, size, API key.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import uuid6
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from messages_app import selectors
from messages_app.batcher import Overloaded, batcher_for_loop
from messages_app.http import RETRY_AFTER_S, json_error, method_not_allowed, require_safe
from messages_app.services import BatchRow
from messages_app.validation import ValidMessage, message_validate


def api_key_valid(*, x_api_key: str | None, authorization: str | None) -> bool:
    """`X-API-Key: <key>` or `Authorization: Bearer <key>`, the key exactly one configured."""
    if x_api_key is not None:
        key = x_api_key
    elif authorization is not None:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
    else:
        return False
    return key in settings.INGEST_API_KEYS


def body_too_large() -> JsonResponse:
    return json_error(413, f"body larger than {settings.INGEST_MAX_BODY_BYTES} bytes")


def ingest_door(
    *, content_type: str, content_length: str | None, x_api_key: str | None, authorization: str | None
) -> JsonResponse | None:
    """What a POST of messages must pass before a byte of its body is read: the API key (401),
    the content type (415) and the declared length (400, 413). The API handler asks it from the
    request's headers before reading the body; the views ask it again (any other handler)."""
    if settings.INGEST_API_KEYS and not api_key_valid(x_api_key=x_api_key, authorization=authorization):
        return json_error(401, "missing or unknown API key (X-API-Key header)")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        return json_error(415, f"Content-Type must be application/json, got {media_type or 'none'!r}")
    if content_length is not None:
        if not (content_length.isascii() and content_length.isdigit()):
            return json_error(400, f"invalid Content-Length {content_length!r}")
        if int(content_length) > settings.INGEST_MAX_BODY_BYTES:
            return body_too_large()
    return None


def _json_body(request: HttpRequest) -> tuple[Any, JsonResponse | None]:
    """Decode the request body as JSON, or say precisely why not (401/413/415/400)."""
    # request.META, not request.headers: the latter builds a mapping of every header per request.
    meta = request.META
    problem = ingest_door(
        content_type=meta.get("CONTENT_TYPE", ""),
        content_length=meta.get("CONTENT_LENGTH") or None,
        x_api_key=meta.get("HTTP_X_API_KEY"),
        authorization=meta.get("HTTP_AUTHORIZATION"),
    )
    if problem is not None:
        return None, problem
    try:
        body = request.body
    except RequestDataTooBig:
        return None, body_too_large()
    # Also without a Content-Length (chunked): Django's own check uses DATA_UPLOAD_MAX_MEMORY_SIZE.
    if len(body) > settings.INGEST_MAX_BODY_BYTES:
        return None, body_too_large()
    try:
        return json.loads(body), None
    except (ValueError, RecursionError) as exc:
        return None, json_error(400, f"malformed JSON: {exc}")


async def _submit(rows: list[BatchRow]) -> JsonResponse | None:
    """Hand rows to the batcher; None once they are in Redis, else the 503 to answer."""
    try:
        await batcher_for_loop().submit(rows)
    except Overloaded:
        return json_error(503, f"backlog over {settings.INGEST_MAX_BACKLOG} messages; retry later")
    except (RedisError, OSError) as exc:
        # A timeout can come after Redis applied the enqueue: the ids let a client retry
        # idempotently (sending each one back as `id`) instead of risking a duplicate.
        return json_error(
            503,
            f"queue unavailable: {type(exc).__name__}; if you retry, send these ids as `id`",
            redis="disconnected",
            message_ids=[row.id for row in rows],
        )
    return None


def _counted(response: JsonResponse) -> JsonResponse:
    batcher_for_loop().response_count(response.status_code)
    return response


def _row(message: ValidMessage, received: float) -> BatchRow:
    return BatchRow(
        message.id or str(uuid6.uuid7()), message.user_id, message.channel_id, message.content, received
    )


@csrf_exempt
async def messages(request: HttpRequest) -> HttpResponse:
    """POST a message (201 once it is in Redis); GET the latest persisted messages."""
    if request.method == "GET":
        return await messages_list(request)
    if request.method != "POST":
        return method_not_allowed(request, "GET, POST")
    payload, problem = _json_body(request)
    if problem is not None:
        return _counted(problem)
    message, errors = message_validate(payload)
    if message is None:
        return _counted(json_error(422, "invalid message", errors=errors))
    received = time.time()
    row = _row(message, received)
    problem = await _submit([row])
    if problem is not None:
        return _counted(problem)
    queued_at = datetime.fromtimestamp(received, tz=UTC).isoformat()
    return JsonResponse({"message_id": row.id, "status": "queued", "queued_at": queued_at}, status=201)


@csrf_exempt
async def messages_batch(request: HttpRequest) -> HttpResponse:
    """POST up to INGEST_MAX_BATCH_ITEMS messages; good items land whatever the bad ones say."""
    if request.method != "POST":
        return method_not_allowed(request, "POST")
    payload, problem = _json_body(request)
    if problem is not None:
        return _counted(problem)
    if type(payload) is not dict or type(payload.get("messages")) is not list:
        return _counted(json_error(422, "body must be an object with a 'messages' list"))
    items = payload["messages"]
    limit = settings.INGEST_MAX_BATCH_ITEMS
    if len(items) > limit:
        return _counted(json_error(413, f"batch of {len(items)} messages is over the limit of {limit}"))
    if not items:
        return _counted(json_error(422, "'messages' must not be empty"))
    received = time.time()
    rows: list[BatchRow] = []
    rejected: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        message, errors = message_validate(item)
        if message is None:
            rejected.append({"index": index, "errors": errors})
        else:
            rows.append(_row(message, received))
    body: dict[str, Any] = {
        "accepted": len(rows),
        "message_ids": [row.id for row in rows],
        "rejected": rejected,
    }
    if not rows:
        return _counted(JsonResponse({"detail": "no valid message in the batch", **body}, status=422))
    problem = await _submit(rows)
    if problem is not None:
        return _counted(problem)
    body["status"] = "queued"
    body["queued_at"] = datetime.fromtimestamp(received, tz=UTC).isoformat()
    return JsonResponse(body, status=201)


def _positive_int_param(request: HttpRequest, name: str, default: int | None, maximum: int) -> int | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    # isascii: str.isdigit() also accepts digits int() refuses, such as "²".
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= maximum:
        raise ValueError(f"{name} must be an integer from 1 to {maximum}")
    return int(raw)


async def messages_list(request: HttpRequest) -> HttpResponse:
    try:
        limit = _positive_int_param(request, "limit", 50, 1000) or 50
        channel_id = _positive_int_param(request, "channel_id", None, 2**63 - 1)
        user_id = _positive_int_param(request, "user_id", None, 2**63 - 1)
    except ValueError as exc:
        return json_error(422, str(exc))
    try:
        rows = await sync_to_async(selectors.messages_latest, thread_sensitive=False)(
            limit=limit, channel_id=channel_id, user_id=user_id
        )
    except DatabaseError as exc:
        return json_error(503, f"database unavailable: {type(exc).__name__}", database="disconnected")
    return JsonResponse({"messages": rows, "count": len(rows)})


@require_safe
async def health(request: HttpRequest) -> HttpResponse:
    """Readiness: Redis and PostgreSQL both answer; 503 naming the part that does not."""
    report = await sync_to_async(selectors.health_report, thread_sensitive=False)()
    status = 200 if report["status"] == "healthy" else 503
    response = JsonResponse(report, status=status)
    if status == 503:
        response["Retry-After"] = RETRY_AFTER_S
    return response


@require_safe
async def health_live(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers; touches neither Redis nor PostgreSQL."""
    return JsonResponse({"status": "alive"})


@require_safe
async def queue_status(request: HttpRequest) -> HttpResponse:
    try:
        report = await sync_to_async(selectors.queue_report, thread_sensitive=False)()
    except (RedisError, OSError) as exc:
        return json_error(503, f"queue unavailable: {type(exc).__name__}", redis="disconnected")
    return JsonResponse(report)
