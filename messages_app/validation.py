"""The one schema of an incoming message, checked at the door.

Whatever passes here must be storable by PostgreSQL: the worker never meets a row it cannot
insert in normal operation. Hand-written rather than a schema library because it runs for every
message on the hot path and must stay allocation-light.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, NamedTuple

from messages_app.models import BIGINT_MAX, CONTENT_MAX_CHARS
from messages_app.partitions import client_id_problem


class ValidMessage(NamedTuple):
    """A message that passed validation; `id` is the client's idempotency key, if it sent one."""

    user_id: int
    channel_id: int
    content: str
    id: str | None


def _positive_bigint(value: Any, errors: dict[str, str], field: str) -> int:
    # bool is a subclass of int in Python: `true` must not become user 1.
    if type(value) is not int:
        errors[field] = "must be an integer"
        return 0
    if value <= 0:
        errors[field] = "must be greater than 0"
    elif value > BIGINT_MAX:
        errors[field] = f"must be at most {BIGINT_MAX}"
    return value


def _storable_content(value: Any, errors: dict[str, str]) -> str:
    if type(value) is not str:
        errors["content"] = "must be a string"
        return ""
    content = value.strip()
    if not content:
        errors["content"] = "must not be empty or whitespace only"
    elif len(content) > CONTENT_MAX_CHARS:
        errors["content"] = f"must be at most {CONTENT_MAX_CHARS} characters, got {len(content)}"
    elif "\x00" in content:
        errors["content"] = "must not contain NUL characters (PostgreSQL cannot store them)"
    elif not content.isascii():
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            errors["content"] = "must not contain unpaired surrogates (not valid UTF-8)"
    return content


def _client_id(value: Any, errors: dict[str, str]) -> str | None:
    if type(value) is not str:  # null too: the schema says a string, absent when there is none
        errors["id"] = "must be a UUID string"
        return None
    try:
        client_id = uuid.UUID(value)
    except ValueError:
        errors["id"] = "must be a UUID string"
        return None
    problem = client_id_problem(client_id, now=time.time())
    if problem is not None:
        errors["id"] = problem
        return None
    return str(client_id)


def message_validate(payload: Any) -> tuple[ValidMessage | None, dict[str, str]]:
    """Check one decoded JSON value; return the message or a field -> reason mapping.

    Unknown fields are ignored, so a client that sends more than this schema knows keeps working.
    """
    if type(payload) is not dict:
        return None, {"body": "must be a JSON object"}
    errors: dict[str, str] = {}
    for field in ("user_id", "channel_id", "content"):
        if field not in payload:
            errors[field] = "is required"
    if errors:
        return None, errors
    user_id = _positive_bigint(payload["user_id"], errors, "user_id")
    channel_id = _positive_bigint(payload["channel_id"], errors, "channel_id")
    content = _storable_content(payload["content"], errors)
    client_id = _client_id(payload["id"], errors) if "id" in payload else None
    if errors:
        return None, errors
    return ValidMessage(user_id, channel_id, content, client_id), errors
