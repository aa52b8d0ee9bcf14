"""The one schema of an incoming message, checked at the door.

Whatever passes here must be storable by PostgreSQL: the worker never meets a row it cannot
insert in normal operation. `message_validate` checks a value `json.loads` decoded and says what
is wrong with it; it is the schema's definition. `message_decode` and `batch_decode` are its fast
path for the bodies that are right: msgspec decodes them straight into typed structs, checking
the field types and the integer bounds as it goes, and the few checks left run on the result. They
answer None whenever they are not sure, and the caller then takes the general path (json.loads
and message_validate), so a client's error reasons come from one place only.
"""

from __future__ import annotations

import functools
import itertools
import operator
import time
import uuid
from typing import Annotated, Any, NamedTuple

import msgspec

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


# The fast path's shapes. Unknown fields are refused (the general path ignores them) because
# msgspec skips an unknown value without the checks json.loads makes: it takes a string of
# invalid UTF-8 there, or an integer of more digits than Python will convert, both of which
# json.loads answers with a 400. Such bodies take the general path; so do null ids, floats,
# booleans, out-of-range integers, lone surrogate escapes and anything malformed, which msgspec
# refuses.
_PositiveBigint = Annotated[int, msgspec.Meta(gt=0, le=BIGINT_MAX)]


class _MessageShape(msgspec.Struct, forbid_unknown_fields=True):
    user_id: _PositiveBigint
    channel_id: _PositiveBigint
    content: str
    id: str | msgspec.UnsetType = msgspec.UNSET


class _BatchShape(msgspec.Struct, forbid_unknown_fields=True):
    messages: list[_MessageShape]


_message_decoder = msgspec.json.Decoder(_MessageShape)
_batch_decoder = msgspec.json.Decoder(_BatchShape)


# A ValidMessage from a tuple of its fields, without a Python call per message (NamedTuple's own
# constructor is a Python function).
_valid_message = functools.partial(tuple.__new__, ValidMessage)
_field_readers = tuple(operator.attrgetter(field) for field in ("user_id", "channel_id", "content", "id"))
# From this many messages on, a batch is checked at once (_checked_at_once) before one by one:
# its set-up costs ~5 µs here, where the loop costs ~0.5 µs a message (even at ~16).
_AT_ONCE_FROM = 16


def _checked(shapes: list[_MessageShape]) -> list[ValidMessage] | None:
    """The messages, through the same content and id checks as message_validate; None at the
    first that fails one (the general path then says why)."""
    errors: dict[str, str] = {}
    valid = []
    for shape in shapes:
        content = _storable_content(shape.content, errors)
        client_id = None if shape.id is msgspec.UNSET else _client_id(shape.id, errors)
        if errors:
            return None
        valid.append(ValidMessage(shape.user_id, shape.channel_id, content, client_id))
    return valid


def _checked_at_once(shapes: list[_MessageShape]) -> list[ValidMessage] | None:
    """_checked for the usual batch, whose messages carry no id and whose contents all pass:
    _storable_content's checks made on all the contents at once, each a loop in C instead of a
    Python call per message (half the validation's CPU for a batch of 1,000). None when any
    message has an id or any content fails a check: the caller then checks them one by one."""
    users, channels, contents, ids = (list(map(reader, shapes)) for reader in _field_readers)
    if ids.count(msgspec.UNSET) != len(ids):
        return None
    contents = list(map(str.strip, contents))
    if not all(contents) or max(map(len, contents), default=0) > CONTENT_MAX_CHARS:
        return None
    joined = "".join(contents)
    if "\x00" in joined:
        return None
    if not joined.isascii():
        try:
            joined.encode("utf-8")  # two lone surrogates never join into a pair in a str
        except UnicodeEncodeError:
            return None
    return list(map(_valid_message, zip(users, channels, contents, itertools.repeat(None))))


def message_decode(body: bytes) -> ValidMessage | None:
    """The message of a JSON body, exactly as `message_validate(json.loads(body))` gives it, when
    the body is a valid message of the schema's fields alone; None otherwise (not a verdict)."""
    try:
        shape = _message_decoder.decode(body)
    except msgspec.DecodeError:
        return None
    checked = _checked([shape])
    return None if checked is None else checked[0]


def batch_decode(body: bytes) -> list[ValidMessage] | None:
    """The messages of a JSON batch body (`{"messages": [...]}`), exactly as message_validate gives
    them item by item, when every item is a valid message of the schema's fields alone and the
    body has no other field; None otherwise (not a verdict). The list may be empty or over the
    batch limit: the caller's checks of its length are the general path's."""
    try:
        batch = _batch_decoder.decode(body)
    except msgspec.DecodeError:
        return None
    if len(batch.messages) >= _AT_ONCE_FROM:
        at_once = _checked_at_once(batch.messages)
        if at_once is not None:
            return at_once
    return _checked(batch.messages)
