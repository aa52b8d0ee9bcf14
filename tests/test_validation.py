"""Bad input at the door: a precise 4xx with a JSON reason, never a 500, and only storable rows pass.

The pure checks call `message_validate` directly; the answers that depend on the body itself
(malformed JSON, a non-object) go through the real ASGI application in-process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uuid6
from django.test import override_settings

from ingestor_site.asgi import application
from messages_app.models import BIGINT_MAX, CONTENT_MAX_CHARS
from messages_app.partitions import uuid7_at
from messages_app.validation import message_validate

GOOD: dict[str, Any] = {"user_id": 1, "channel_id": 2, "content": "hello"}


def _with(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def _errors_of(payload: Any) -> dict[str, str]:
    message, errors = message_validate(payload)
    assert message is None, f"{payload!r} passed validation"
    assert errors
    return errors


def test_accepts_a_minimal_valid_message() -> None:
    message, errors = message_validate(GOOD)
    assert errors == {}
    assert message is not None
    assert (message.user_id, message.channel_id, message.content, message.id) == (1, 2, "hello", None)


@pytest.mark.parametrize("payload", [[GOOD], "text", 5, None, True, 1.5])
def test_rejects_a_body_that_is_not_an_object(payload: Any) -> None:
    assert _errors_of(payload) == {"body": "must be a JSON object"}


@pytest.mark.parametrize("field", ["user_id", "channel_id", "content"])
def test_rejects_a_missing_field_naming_it(field: str) -> None:
    payload = {key: value for key, value in GOOD.items() if key != field}
    assert _errors_of(payload) == {field: "is required"}


def test_reports_every_missing_field_at_once() -> None:
    assert set(_errors_of({})) == {"user_id", "channel_id", "content"}


@pytest.mark.parametrize("field", ["user_id", "channel_id"])
@pytest.mark.parametrize("value", [True, False, "5", 5.0, 1.5, 1e3, None, [1], {"id": 1}])
def test_rejects_an_id_that_is_not_a_json_integer(field: str, value: Any) -> None:
    assert _errors_of(_with(**{field: value})) == {field: "must be an integer"}


@pytest.mark.parametrize("field", ["user_id", "channel_id"])
@pytest.mark.parametrize("value", [0, -1, -(2**63), -(2**70)])
def test_rejects_an_id_that_is_not_positive(field: str, value: int) -> None:
    assert _errors_of(_with(**{field: value})) == {field: "must be greater than 0"}


@pytest.mark.parametrize("field", ["user_id", "channel_id"])
@pytest.mark.parametrize("value", [2**63, 2**64, 10**30])
def test_rejects_an_id_beyond_postgresql_bigint(field: str, value: int) -> None:
    assert _errors_of(_with(**{field: value})) == {field: f"must be at most {BIGINT_MAX}"}


def test_accepts_the_largest_bigint_id() -> None:
    message, _ = message_validate(_with(user_id=BIGINT_MAX, channel_id=BIGINT_MAX))
    assert message is not None
    assert message.user_id == message.channel_id == 2**63 - 1


@pytest.mark.parametrize("content", ["", " ", "   \t\n  ", "\u3000\u00a0\u2003"])
def test_rejects_empty_or_whitespace_only_content(content: str) -> None:
    assert _errors_of(_with(content=content)) == {"content": "must not be empty or whitespace only"}


@pytest.mark.parametrize("content", [5, None, True, ["a"], {"text": "a"}])
def test_rejects_content_that_is_not_a_string(content: Any) -> None:
    assert _errors_of(_with(content=content)) == {"content": "must be a string"}


def test_accepts_content_of_exactly_the_limit_after_stripping() -> None:
    content = "x" * CONTENT_MAX_CHARS
    message, _ = message_validate(_with(content=f"  \n{content}\t "))
    assert message is not None
    assert message.content == content
    assert CONTENT_MAX_CHARS == 2000


def test_rejects_content_one_character_over_the_limit() -> None:
    errors = _errors_of(_with(content="x" * (CONTENT_MAX_CHARS + 1)))
    assert errors["content"].startswith("must be at most 2000 characters")


def test_counts_the_limit_in_characters_not_bytes() -> None:
    # 2000 four-byte characters: 8000 bytes of UTF-8 fit PostgreSQL's varchar(2000).
    message, _ = message_validate(_with(content="\U0001f600" * CONTENT_MAX_CHARS))
    assert message is not None
    assert _errors_of(_with(content="\U0001f600" * (CONTENT_MAX_CHARS + 1)))


def test_strips_surrounding_whitespace_from_content() -> None:
    message, _ = message_validate(_with(content="  hi there \n"))
    assert message is not None
    assert message.content == "hi there"


@pytest.mark.parametrize("content", ["a\x00b", "\x00", "trailing\x00"])
def test_rejects_content_with_a_nul_character(content: str) -> None:
    assert "NUL" in _errors_of(_with(content=content))["content"]


@pytest.mark.parametrize("content", ["\ud800", "a\udfffb", "x\ud83d"])
def test_rejects_content_with_a_lone_surrogate(content: str) -> None:
    assert "surrogate" in _errors_of(_with(content=content))["content"]


def test_accepts_a_surrogate_pair_decoded_from_json() -> None:
    payload = json.loads('{"user_id": 1, "channel_id": 1, "content": "\\ud83d\\ude00"}')
    message, _ = message_validate(payload)
    assert message is not None
    assert message.content == "\U0001f600"


def test_ignores_unknown_fields() -> None:
    message, errors = message_validate(_with(priority="high", metadata={"a": 1}, user_name="bob"))
    assert errors == {}
    assert message is not None
    assert message.content == "hello"


def test_reports_errors_of_several_fields_together() -> None:
    errors = _errors_of({"user_id": True, "channel_id": 0, "content": " "})
    assert set(errors) == {"user_id", "channel_id", "content"}


def test_normalises_a_valid_client_id() -> None:
    client_id = uuid6.uuid7()
    message, _ = message_validate(_with(id=str(client_id).upper()))
    assert message is not None
    assert message.id == str(client_id)


def test_rejects_a_client_id_that_is_not_a_uuid7_naming_the_rule() -> None:
    errors = _errors_of(_with(id=str(uuid.uuid4())))
    assert "must be a UUIDv7" in errors["id"]
    assert "omit `id`" in errors["id"]


@pytest.mark.parametrize(
    ("age", "accepted"),
    [
        (timedelta(hours=23, minutes=59), True),
        (timedelta(hours=24, minutes=1), False),
        (-timedelta(minutes=4), True),
        (-timedelta(minutes=6), False),
    ],
    ids=["a-day-old", "over-a-day-old", "slightly-ahead", "too-far-ahead"],
)
def test_accepts_a_client_uuid7_only_from_the_last_day_and_minutes_ahead(
    age: timedelta, accepted: bool
) -> None:
    client_id = str(uuid7_at(datetime.now(tz=UTC) - age))
    message, errors = message_validate(_with(id=client_id))
    if accepted:
        assert message is not None and message.id == client_id
    else:
        assert "minted within the last 24 hours and at most 5 minutes ahead" in errors["id"]


@override_settings(MESSAGE_RETENTION=timedelta(hours=6))
def test_a_retention_shorter_than_a_day_shortens_the_client_id_window() -> None:
    errors = _errors_of(_with(id=str(uuid7_at(datetime.now(tz=UTC) - timedelta(hours=7)))))
    assert "within the last 6 hours" in errors["id"]


def test_an_absent_client_id_leaves_the_id_to_the_server() -> None:
    message, _ = message_validate({key: value for key, value in GOOD.items() if key != "id"})
    assert message is not None
    assert message.id is None


@pytest.mark.parametrize("client_id", ["not-a-uuid", "", "1234", 12345, True, ["x"], "g" * 32, None])
def test_rejects_a_client_id_that_is_not_a_uuid(client_id: Any) -> None:
    assert _errors_of(_with(id=client_id)) == {"id": "must be a UUID string"}


# Answers that depend on the raw body: through the real ASGI application (no network, no Redis).


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.mark.parametrize("path", ["/messages", "/messages/batch"])
@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"user_id": 1,}', b"{'user_id': 1}", b"\xff\xfe\x00", b"nul", b"[" * 100_000, b"1" * 5000],
    ids=["empty", "unclosed", "trailing-comma", "quotes", "not-utf8", "bad-literal", "deep", "huge-int"],
)
async def test_answers_400_with_a_reason_to_malformed_json(
    api: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await api.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("malformed JSON")


@pytest.mark.parametrize("body", ["[]", '"text"', "42", "null", "true"])
async def test_answers_422_to_a_json_body_that_is_not_an_object(api: httpx.AsyncClient, body: str) -> None:
    response = await api.post("/messages", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json() == {"detail": "invalid message", "errors": {"body": "must be a JSON object"}}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"user_id": true, "channel_id": 1, "content": "a"}', "user_id"),
        ('{"user_id": "5", "channel_id": 1, "content": "a"}', "user_id"),
        ('{"user_id": 1, "channel_id": 1.0, "content": "a"}', "channel_id"),
        ('{"user_id": 1, "channel_id": NaN, "content": "a"}', "channel_id"),
        ('{"user_id": 9223372036854775808, "channel_id": 1, "content": "a"}', "user_id"),
        ('{"user_id": 1, "channel_id": 1, "content": "a\\u0000b"}', "content"),
        ('{"user_id": 1, "channel_id": 1, "content": "\\ud800"}', "content"),
        ('{"user_id": 1, "channel_id": 1, "content": "   "}', "content"),
    ],
)
async def test_answers_422_naming_the_bad_field(api: httpx.AsyncClient, raw: str, field: str) -> None:
    response = await api.post("/messages", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert list(response.json()["errors"]) == [field]
