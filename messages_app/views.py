"""The JSON API: thin async doors into validation, the batcher, services and selectors.

These views run on a handler without Django's middleware (ingestor_site/asgi.py), so each one
checks what it needs itself: method, content type, size, API key.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from messages_app import selectors
from messages_app.batcher import Overloaded, batcher_for_loop
from messages_app.http import RETRY_AFTER_S, json_answer, json_error, method_not_allowed, require_safe
from messages_app.partitions import uuid7_strings
from messages_app.services import BatchRow, client_ids_claim, message_digest
from messages_app.validation import ValidMessage, batch_decode, message_decode, message_validate


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


def _body(request: HttpRequest) -> tuple[bytes, JsonResponse | None]:
    """The request body once it passed the door, or the answer why not (401/413/415/400)."""
    # request.META, not request.headers: the latter builds a mapping of every header per request.
    meta = request.META
    problem = ingest_door(
        content_type=meta.get("CONTENT_TYPE", ""),
        content_length=meta.get("CONTENT_LENGTH") or None,
        x_api_key=meta.get("HTTP_X_API_KEY"),
        authorization=meta.get("HTTP_AUTHORIZATION"),
    )
    if problem is not None:
        return b"", problem
    try:
        body = request.body
    except RequestDataTooBig:
        return b"", body_too_large()
    # Also without a Content-Length (chunked): Django's own check uses DATA_UPLOAD_MAX_MEMORY_SIZE.
    if len(body) > settings.INGEST_MAX_BODY_BYTES:
        return b"", body_too_large()
    return body, None


def _json_body(body: bytes) -> tuple[Any, JsonResponse | None]:
    """Decode the body as JSON, or say precisely why not (400)."""
    try:
        return json.loads(body), None
    except (ValueError, RecursionError) as exc:
        return None, json_error(400, f"malformed JSON: {exc}")


def _overloaded() -> JsonResponse:
    return json_error(503, f"backlog over {settings.INGEST_MAX_BACKLOG} messages; retry later")


async def _refused_for_backlog() -> JsonResponse | None:
    """The 503 to answer before reading a message when the backlog is full: a refused batch of
    1,000 cost its web process the decode, the checks and the rows of a batch it then dropped."""
    return _overloaded() if await batcher_for_loop().overloaded() else None


async def _submit(rows: list[BatchRow]) -> JsonResponse | None:
    """Hand rows to the batcher; None once they are in Redis, else the 503 to answer."""
    try:
        await batcher_for_loop().submit(rows)
    except Overloaded:
        return _overloaded()
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


def _conflict_detail(client_id: str) -> str:
    return f"id {client_id} was already used with different content"


NEW, REPLAY, CONFLICT = "new", "replay", "conflict"


async def _claimed(messages: list[ValidMessage]) -> list[str] | JsonResponse:
    """For each message (all with client ids): NEW, REPLAY (its id came before with the same
    content) or CONFLICT (with other content); or the 503 to answer. A message without a client
    id needs no claim: its server id is fresh."""
    claims = [(m.id or "", message_digest(user_id=m.user_id, channel_id=m.channel_id, content=m.content))
              for m in messages]  # fmt: skip
    try:
        previous = await sync_to_async(client_ids_claim, thread_sensitive=False)(claims=claims)
    except (RedisError, OSError) as exc:
        # Nothing is queued yet: a retry with the same ids is safe (as after _submit's 503).
        return json_error(
            503,
            f"queue unavailable: {type(exc).__name__}; if you retry, send these ids as `id`",
            redis="disconnected",
            message_ids=[client_id for client_id, _ in claims],
        )
    return [NEW if before is None else REPLAY if before == digest else CONFLICT
            for before, (_, digest) in zip(previous, claims, strict=True)]  # fmt: skip


Rejection = dict[str, Any]


def _id_conflict(index: int, detail: str) -> Rejection:
    return {"index": index, "status": 409, "errors": {"id": detail}}


async def _batch_idempotency(
    valid: list[tuple[int, ValidMessage]],
) -> tuple[list[Rejection], list[dict[str, Any]], set[int]] | JsonResponse:
    """The batch's client ids checked against earlier requests (one Redis round trip) and
    against each other: (conflicts to reject, replays to report, indexes of items repeating an
    earlier item of the batch, which need no row of their own); or the 503 to answer."""
    first: dict[str, tuple[int, str]] = {}  # client id -> index and digest of its first item
    firsts: list[ValidMessage] = []  # in the order of `first`
    repeats: list[tuple[int, str, str]] = []  # index, id, digest of a later item with the id
    for index, message in valid:
        if message.id is None:
            continue
        digest = message_digest(
            user_id=message.user_id, channel_id=message.channel_id, content=message.content
        )
        if message.id in first:
            repeats.append((index, message.id, digest))
        else:
            first[message.id] = (index, digest)
            firsts.append(message)
    conflicts: list[Rejection] = []
    replays: list[dict[str, Any]] = []
    refused_ids: set[str] = set()
    if first:
        claimed = await _claimed(firsts)
        if isinstance(claimed, JsonResponse):
            return claimed
        for (client_id, (index, _)), before in zip(first.items(), claimed, strict=True):
            if before == CONFLICT:
                conflicts.append(_id_conflict(index, _conflict_detail(client_id)))
                refused_ids.add(client_id)
            elif before == REPLAY:
                replays.append({"index": index, "id": client_id})
    duplicates: set[int] = set()
    for index, client_id, digest in repeats:
        first_index, first_digest = first[client_id]
        if client_id in refused_ids:
            conflicts.append(_id_conflict(index, _conflict_detail(client_id)))
        elif digest != first_digest:
            conflicts.append(
                _id_conflict(
                    index,
                    f"id {client_id} is used by item {first_index} of this batch with different content",
                )
            )
        else:
            duplicates.add(index)
            replays.append({"index": index, "id": client_id})
    replays.sort(key=lambda replay: replay["index"])
    return conflicts, replays, duplicates


def _row(message: ValidMessage, received: float, minted: Iterator[str]) -> BatchRow:
    """The message's row: its client's id, or the next of the ids `minted` at its receipt."""
    return BatchRow(
        message.id or next(minted), message.user_id, message.channel_id, message.content, received
    )


# A BatchRow from a tuple of its fields, without a Python call per row (as in validation.py).
_batch_row = functools.partial(tuple.__new__, BatchRow)


def _rows(
    accepted: list[tuple[int, ValidMessage]], duplicates: set[int], received: float
) -> tuple[list[BatchRow], list[str]]:
    """The rows of a batch's accepted messages, and each accepted message's id in order: its
    client's, or one minted at its receipt. Items repeating an earlier item's id (`duplicates`)
    get that id and no row: the first item's row stores it. Column by column, in C loops."""
    if not accepted:
        return [], []
    indexes, messages = zip(*accepted, strict=True)
    client_ids: tuple[str | None, ...]
    users, channels, contents, client_ids = zip(*messages, strict=True)
    minted = uuid7_strings(len(accepted))
    message_ids = (
        minted
        if client_ids.count(None) == len(client_ids)
        else [client_id or new_id for client_id, new_id in zip(client_ids, minted, strict=True)]
    )
    rows = list(map(_batch_row, zip(message_ids, users, channels, contents, itertools.repeat(received))))
    if duplicates:
        rows = [row for index, row in zip(indexes, rows, strict=True) if index not in duplicates]
    return rows, message_ids


@csrf_exempt
async def messages(request: HttpRequest) -> HttpResponse:
    """POST a message (201 once it is in Redis); GET (or HEAD) the latest persisted messages."""
    if request.method in {"GET", "HEAD"}:
        return await messages_list(request)
    if request.method != "POST":
        return method_not_allowed(request, "GET, HEAD, POST")
    if (refused := await _refused_for_backlog()) is not None:
        return _counted(refused)
    body, problem = _body(request)
    if problem is not None:
        return _counted(problem)
    message = message_decode(body)
    if message is None:
        payload, problem = _json_body(body)
        if problem is not None:
            return _counted(problem)
        message, errors = message_validate(payload)
        if message is None:
            return _counted(json_error(422, "invalid message", errors=errors))
    replay: bool | None = None  # said only for a client id
    if message.id is not None:
        claimed = await _claimed([message])
        if isinstance(claimed, JsonResponse):
            return _counted(claimed)
        if claimed[0] == CONFLICT:
            return _counted(json_error(409, _conflict_detail(message.id), id=message.id))
        # A replay is queued again: the row's uniqueness stores it once, and a first attempt
        # whose enqueue failed (after its claim) still lands.
        replay = claimed[0] == REPLAY
    received = time.time()
    row = _row(message, received, iter(uuid7_strings(1)))
    problem = await _submit([row])
    if problem is not None:
        return _counted(problem)
    queued_at = datetime.fromtimestamp(received, tz=UTC).isoformat()
    answer: dict[str, Any] = {"message_id": row.id, "status": "queued", "queued_at": queued_at}
    if replay is not None:
        answer["replay"] = replay
    return json_answer(answer, status=201)


@csrf_exempt
async def messages_batch(request: HttpRequest) -> HttpResponse:
    """POST up to INGEST_MAX_BATCH_ITEMS messages; good items land whatever the bad ones say."""
    if request.method != "POST":
        return method_not_allowed(request, "POST")
    if (refused := await _refused_for_backlog()) is not None:
        return _counted(refused)
    body, problem = _body(request)
    if problem is not None:
        return _counted(problem)
    decoded = batch_decode(body)  # every item valid, or None: then the general path says which not
    items: list[Any]
    if decoded is not None:
        items = decoded
    else:
        payload, problem = _json_body(body)
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
    valid: list[tuple[int, ValidMessage]] = []
    rejected: list[dict[str, Any]] = []
    if decoded is not None:
        valid = list(enumerate(decoded))
    else:
        for index, item in enumerate(items):
            message, errors = message_validate(item)
            if message is None:
                rejected.append({"index": index, "errors": errors})
            else:
                valid.append((index, message))
    outcome = await _batch_idempotency(valid)
    if isinstance(outcome, JsonResponse):
        return _counted(outcome)
    conflicts, replays, duplicate_indexes = outcome
    rejected = sorted(rejected + conflicts, key=lambda rejection: rejection["index"])
    conflicted = {conflict["index"] for conflict in conflicts}
    accepted = [(index, message) for index, message in valid if index not in conflicted]
    rows, message_ids = _rows(accepted, duplicate_indexes, received)
    answer: dict[str, Any] = {"accepted": len(accepted), "message_ids": message_ids, "rejected": rejected}
    if replays:
        answer["replays"] = replays
    if not rows:
        status = 409 if conflicts and len(conflicts) == len(rejected) else 422
        return _counted(JsonResponse({"detail": "no valid message in the batch", **answer}, status=status))
    problem = await _submit(rows)
    if problem is not None:
        return _counted(problem)
    answer["status"] = "queued"
    answer["queued_at"] = datetime.fromtimestamp(received, tz=UTC).isoformat()
    return json_answer(answer, status=201)


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
