"""The fast path (`message_decode`, `batch_decode`: msgspec) against the general path (json.loads
and `message_validate`), body by body: whatever the fast path takes, the general path takes with
the very same values, so a client can never tell which one ran.

The fast path may decline anything (it then hands the body to the general path); it must never
accept what the general path refuses, nor change a value. That it does take the ordinary good
bodies is checked too, or a fast path that declined everything would pass.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis as redis_lib
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ingestor_site.asgi import application
from messages_app import validation, views
from messages_app.models import BIGINT_MAX, CONTENT_MAX_CHARS
from messages_app.partitions import uuid7_at, uuid7_strings
from messages_app.services import ingest_queue
from messages_app.validation import ValidMessage, batch_decode, message_decode, message_validate

NOW_ID = uuid7_strings(1)[0]
OLD_ID = str(uuid7_at(datetime.now(tz=UTC) - timedelta(days=3)))
AHEAD_ID = str(uuid7_at(datetime.now(tz=UTC) + timedelta(hours=1)))


def _general_message(body: bytes) -> ValidMessage | str:
    """What the general path makes of a POST /messages body: the message, or why not."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"400 {exc}"
    message, errors = message_validate(payload)
    return message if message is not None else f"422 {errors}"


def _general_batch(body: bytes) -> list[ValidMessage] | str:
    """What the general path makes of a POST /messages/batch body when every item is valid (the
    only case the fast path may take); otherwise why not."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"400 {exc}"
    if type(payload) is not dict or type(payload.get("messages")) is not list:
        return "422 not an object with a messages list"
    valid = []
    for index, item in enumerate(payload["messages"]):
        message, errors = message_validate(item)
        if message is None:
            return f"422 item {index}: {errors}"
        valid.append(message)
    return valid


def _exactly(message: ValidMessage) -> tuple[tuple[type, Any], ...]:
    # Types too: 1 == 1.0 == True, and a bool must never pass for an id.
    return tuple((type(value), value) for value in message)


def _assert_single_equivalent(body: bytes) -> ValidMessage | None:
    fast = message_decode(body)
    if fast is not None:
        general = _general_message(body)
        assert isinstance(general, ValidMessage), f"fast path took {body!r}; the general path: {general}"
        assert _exactly(fast) == _exactly(general), body
    return fast


def _assert_batch_equivalent(body: bytes) -> list[ValidMessage] | None:
    fast = batch_decode(body)
    if fast is not None:
        general = _general_batch(body)
        assert isinstance(general, list), f"fast path took {body!r}; the general path: {general}"
        assert [_exactly(m) for m in fast] == [_exactly(m) for m in general], body
    return fast


def _item(content: str = '"hello"', **raw: str) -> str:
    fields = {"user_id": "1", "channel_id": "2", "content": content, **raw}
    return "{" + ", ".join(f'"{key}": {value}' for key, value in fields.items()) + "}"


# Bodies the fast path must take (the ordinary good ones), each checked against the general path.
GOOD_ITEMS = [
    _item(),
    _item('"  hi there \\n"'),
    _item('"\\t padded\\u00a0"'),
    _item('"\\ud83d\\ude00 paired surrogates"'),
    _item('"caf\u00e9 \u4e2d\u6587 \U0001f600 raw UTF-8"'),
    _item('"a\\/b \\"quoted\\" \\\\ \\b\\f\\n\\r\\t"'),
    _item('"\u2028line separator\u2029"'),
    _item(f'"{"x" * CONTENT_MAX_CHARS}"'),
    _item(f'"  {"x" * CONTENT_MAX_CHARS}  "'),
    _item(f'"{chr(0x1F600) * CONTENT_MAX_CHARS}"'),
    _item(user_id=str(BIGINT_MAX), channel_id=str(BIGINT_MAX)),
    _item(user_id="1", channel_id="1", id=f'"{NOW_ID}"'),
    _item(id=f'"{NOW_ID.upper()}"'),
    _item(id=f'"{{{NOW_ID}}}"'),
    _item(id=f'"urn:uuid:{NOW_ID}"'),
    _item(id=f'"{NOW_ID.replace("-", "")}"'),
    '{"content": "order", "channel_id": 2, "user_id": 1}',
    '{"user_id": 5, "channel_id": 2, "content": "dup", "user_id": 7}',
    '{"user_id": 1, "channel_id": 2, "content": "first", "content": "last"}',
    '{"user_id": 1, "channel_id": 2, "cont\\u0065nt": "escaped key"}',
    ' \n\t{ "user_id" : 1 , "channel_id" : 2 , "content" : "spaced" } \r\n',
]

# Bodies that are no valid message of the schema's fields alone (or that msgspec reads otherwise
# than json.loads): the fast path must decline them, whatever the general path says.
TRICKY_ITEMS = [
    _item(user_id="true"),
    _item(user_id="false"),
    _item(channel_id="1.0"),
    _item(channel_id="1e2"),
    _item(channel_id="1E0"),
    _item(user_id="0"),
    _item(user_id="-0"),
    _item(user_id="-1"),
    _item(user_id=str(BIGINT_MAX + 1)),
    _item(user_id="1" + "0" * 5000),
    _item(user_id='"5"'),
    _item(user_id="null"),
    _item(user_id="NaN"),
    _item(user_id="Infinity"),
    _item(user_id="[1]"),
    _item('"\\u0000"'),
    _item('"a\\u0000b"'),
    _item('"\\ud800"'),
    _item('"x\\udc00y"'),
    _item('"\\ude00\\ud83d"'),
    _item('"   "'),
    _item('"\\n\\t\\u3000"'),
    _item('""'),
    _item(f'"{"x" * (CONTENT_MAX_CHARS + 1)}"'),
    _item("5"),
    _item("null"),
    _item('["a"]'),
    _item(id="null"),
    _item(id="12345"),
    _item(id="true"),
    _item(id='""'),
    _item(id='"not-a-uuid"'),
    _item(id=f'"{uuid.uuid4()}"'),
    _item(id=f'"{OLD_ID}"'),
    _item(id=f'"{AHEAD_ID}"'),
    _item(id=f'"{NOW_ID}", "id": null'),
    _item(extra='"ignored by the general path"'),
    _item(extra="1" + "0" * 5000),  # json.loads: over Python's digit limit
    _item(extra="1e400"),  # json.loads: inf
    _item(extra="NaN"),
    _item(extra="[" * 50_000 + "]" * 50_000),
    _item(user_id="true, " + '"user_id": 1'),  # a bad value then a good one: the last wins
    _item(user_id="1, " + '"user_id": true'),
    '{"user_id": 1, "channel_id": 2}',
    '{"user_id": 1, "content": "a"}',
    "{}",
    "[]",
    '"text"',
    "42",
    "null",
    "",
    "{",
    _item() + " x",
    _item() + ",",
    "\ufeff" + _item(),  # a BOM: json.loads takes it from bytes, msgspec does not
    '{"user_id": 1, "channel_id": 2, "content": "a",}',
    '{"user_id": 01, "channel_id": 2, "content": "a"}',
    "\x0c" + _item(),
    '{"user_id": 1, "channel_id": 2, "content": "a\\x"}',
    '{"user_id": 1, "channel_id": 2, "content": "a\\u12"}',
    '{"user_id": 1, "channel_id": 2, "content": "tab\there"}',
    '{"user_id": 1, "channel_id": 2, "content": "nl\nhere"}',
]

RAW_BYTES_ITEMS = [
    b'{"user_id": 1, "channel_id": 2, "content": "\xed\xa0\x80"}',  # an encoded surrogate
    b'{"user_id": 1, "channel_id": 2, "content": "\xff"}',
    b'{"user_id": 1, "channel_id": 2, "content": "\xc0\xaf"}',  # overlong
    b'{"user_id": 1, "channel_id": 2, "content": "a", "x": "\xff"}',
    b'{"user_id": 1, "channel_id": 2, "content": "a\x00"}',
    b'{"user_id": 1, "channel_id": 2, "content": "a"}\x00',
    '{"user_id": 1, "channel_id": 2, "content": "utf-16"}'.encode("utf-16"),
    '{"user_id": 1, "channel_id": 2, "content": "utf-16-le"}'.encode("utf-16-le"),
]


@pytest.mark.parametrize("raw", GOOD_ITEMS)
def test_the_fast_path_takes_a_good_message_as_the_general_path_does(raw: str) -> None:
    assert _assert_single_equivalent(raw.encode()) is not None


@pytest.mark.parametrize("raw", [*TRICKY_ITEMS, *RAW_BYTES_ITEMS])
def test_the_fast_path_declines_a_body_outside_its_shape(raw: str | bytes) -> None:
    body = raw if isinstance(raw, bytes) else raw.encode()
    assert _assert_single_equivalent(body) is None


def test_the_fast_path_keeps_the_stripped_content_and_the_canonical_client_id() -> None:
    message = message_decode(_item('"  hi there \\n"', id=f'"{{{NOW_ID.upper()}}}"').encode())
    assert message == ValidMessage(1, 2, "hi there", NOW_ID)


def test_a_good_batch_takes_the_fast_path_with_every_item_as_validated() -> None:
    body = ('{"messages": [' + ", ".join(GOOD_ITEMS) + "]}").encode()
    decoded = _assert_batch_equivalent(body)
    assert decoded is not None and len(decoded) == len(GOOD_ITEMS)


def _batch_body(items: list[str]) -> bytes:
    return ('{"messages": [' + ", ".join(items) + "]}").encode()


def _shapes(items: list[str]) -> list[Any]:
    return validation._batch_decoder.decode(_batch_body(items)).messages


def test_a_batch_without_client_ids_is_checked_at_once_as_item_by_item() -> None:
    items = [item for item in GOOD_ITEMS if '"id"' not in item] * 2
    assert len(items) >= validation._AT_ONCE_FROM, "batch_decode takes the at-once path for it"
    at_once = validation._checked_at_once(_shapes(items))
    assert at_once is not None and len(at_once) == len(items)
    body = _batch_body(items)
    general = _general_batch(body)
    assert isinstance(general, list)
    assert [_exactly(m) for m in at_once] == [_exactly(m) for m in general]
    decoded = _assert_batch_equivalent(body)
    assert decoded is not None and [_exactly(m) for m in decoded] == [_exactly(m) for m in general]


@pytest.mark.parametrize(
    "bad",
    [_item('"a\\u0000b"'), _item('"   "'), _item('"\\n\\t\\u3000"'), _item('""'),
     _item(f'"{"x" * (CONTENT_MAX_CHARS + 1)}"'), _item(id=f'"{NOW_ID}"')],
)  # fmt: skip
def test_a_batch_is_checked_item_by_item_when_one_content_fails_or_carries_an_id(bad: str) -> None:
    assert validation._checked_at_once(_shapes([_item(), bad, _item('"caf\u00e9"')])) is None


@pytest.mark.parametrize("raw", [*(raw.encode() for raw in TRICKY_ITEMS), *RAW_BYTES_ITEMS])
def test_one_bad_item_sends_the_whole_batch_to_the_general_path(raw: bytes) -> None:
    good = _item().encode()
    assert _assert_batch_equivalent(b'{"messages": [' + good + b", " + raw + b", " + good + b"]}") is None


@pytest.mark.parametrize(
    "raw",
    [
        '{"messages": []}',  # empty: the view's own length check answers it, on either path
        '{"messages": [' + _item() + "]}",
    ],
)
def test_batch_bodies_the_fast_path_takes_as_they_are(raw: str) -> None:
    assert _assert_batch_equivalent(raw.encode()) is not None


@pytest.mark.parametrize(
    "raw",
    [
        '{"messages": [' + _item() + '], "messages": 5}',
        '{"messages": 5, "messages": [' + _item() + "]}",  # every value checked, even one overridden
        '{"messages": [' + _item() + '], "extra": 1}',
        '{"messages": null}',
        '{"messages": {"0": ' + _item() + "}}",
        '{"message": [' + _item() + "]}",
        "[" + _item() + "]",
        _item(),
        '{"messages": [' + _item() + ", 5]}",
        '{"messages": [' + _item() + ", [" + _item() + "]]}",
        '{"messages": [' + "[" * 50_000 + "]" * 50_000 + "]}",
    ],
)
def test_batch_bodies_of_another_shape_take_the_general_path(raw: str) -> None:
    assert _assert_batch_equivalent(raw.encode()) is None


# Generated bodies: values of every JSON kind where the schema's fields are, keys repeated or
# unknown, written with and without escapes, then sometimes damaged byte by byte.

_ints = st.sampled_from([0, -1, 1, 2, BIGINT_MAX, BIGINT_MAX + 1, 10**30]) | st.integers()
_texts = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()) | st.sampled_from(" \t\n\x00\ud800\udc00"),
    max_size=12,
)
_ids = st.sampled_from([NOW_ID, NOW_ID.upper(), OLD_ID, AHEAD_ID, str(uuid.uuid4()), "x", ""])
_values = (
    _ints
    | _texts
    | _ids
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
    | st.lists(_ints, max_size=2)
)
_keys = st.sampled_from(["user_id", "channel_id", "content", "id", "extra", "User_id"])


def _field(key: str, value: Any, ensure_ascii: bool) -> str:
    return json.dumps(key) + ": " + json.dumps(value, ensure_ascii=ensure_ascii)


def _mostly(draw: st.DrawFn, good: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """Nine times in ten a value the schema takes: a body passes only when all of its do."""
    return draw(good) if draw(st.integers(0, 9)) else draw(other)


@st.composite
def _item_texts(draw: st.DrawFn) -> str:
    ensure_ascii = draw(st.booleans())
    good_int = st.integers(1, BIGINT_MAX)
    fields = {
        "user_id": _mostly(draw, good_int, _values),
        "channel_id": _mostly(draw, good_int, _values),
        "content": _mostly(draw, st.text(min_size=1, max_size=12), _texts | _values),
    }
    if draw(st.booleans()):
        fields["id"] = _mostly(draw, st.just(NOW_ID), _ids | _values)
    pairs = [
        (key, value) for key, value in fields.items() if draw(st.integers(0, 19))
    ]  # sometimes one missing
    if not draw(st.integers(0, 3)):
        pairs += draw(st.lists(st.tuples(_keys, _values), max_size=2))  # repeated or unknown keys
    pairs = draw(st.permutations(pairs))
    return "{" + ", ".join(_field(key, value, ensure_ascii) for key, value in pairs) + "}"


def _encoded(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@st.composite
def _damaged(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> bytes:
    body = draw(bodies)
    if body and draw(st.integers(0, 5)) == 0:
        at = draw(st.integers(0, len(body) - 1))
        replacement = draw(
            st.binary(max_size=2) | st.sampled_from([b'"', b"\\", b",", b"}", b"\\u00", b"\x00"])
        )
        body = body[:at] + replacement + body[at + draw(st.integers(0, 2)) :]
    return body


_single_bodies = _damaged(_item_texts().map(_encoded))
_batch_bodies = _damaged(
    st.lists(_item_texts(), min_size=1, max_size=3).map(
        lambda items: _encoded('{"messages": [' + ", ".join(items) + "]}")
    )
)


@hypothesis_settings(max_examples=3000, deadline=None, database=None)
@given(body=_single_bodies)
def test_generated_single_bodies_never_get_another_answer_on_the_fast_path(body: bytes) -> None:
    _assert_single_equivalent(body)


@hypothesis_settings(max_examples=1500, deadline=None, database=None)
@given(body=_batch_bodies)
def test_generated_batch_bodies_never_get_another_answer_on_the_fast_path(body: bytes) -> None:
    _assert_batch_equivalent(body)


# Through the view: the same answer and the same queued rows with the fast path as without it.


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10) as client:
        yield client


def _comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs between two requests: the ids the server mints, the time."""
    answer = dict(answer)
    answer.pop("queued_at", None)
    if "message_id" in answer:
        answer["message_id"] = len(answer["message_id"])
    if "message_ids" in answer:
        answer["message_ids"] = [len(message_id) for message_id in answer["message_ids"]]
    return answer


_batch = '{{"messages": [{}]}}'.format

# (path, body, whether the fast path takes it)
VIEW_BODIES = [
    ("/messages", _item('"  stripped \\n"'), True),
    ("/messages", _item(id=f'"{NOW_ID.upper()}"'), True),
    ("/messages", _item(user_id="true"), False),
    ("/messages", _item('"\\ud800"'), False),
    ("/messages", _item(id="null"), False),
    ("/messages", _item(extra="1"), False),
    ("/messages", "[]", False),
    ("/messages", "{", False),
    ("/messages/batch", _batch(", ".join([_item('" a "'), _item('"\\u0000"'), _item()])), False),
    ("/messages/batch", _batch(", ".join([_item('" b "')] * 3)), True),
    ("/messages/batch", _batch(", ".join([_item()] * 1001)), True),
    ("/messages/batch", _batch(""), True),
    ("/messages/batch", '{"messages": 5}', False),
    ("/messages/batch", _batch(", ".join([_item(id=f'"{NOW_ID}"')] * 2)), True),
    (
        "/messages/batch",
        _batch(", ".join([_item(id=f'"{NOW_ID}"'), _item('"other"', id=f'"{NOW_ID}"')])),
        True,
    ),
]


@pytest.mark.parametrize(("path", "raw", "taken"), VIEW_BODIES)
async def test_the_view_answers_the_same_with_and_without_the_fast_path(
    api: httpx.AsyncClient,
    redis_client: redis_lib.Redis,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    raw: str,
    taken: bool,
) -> None:
    answers = []
    for fast in (True, False):
        redis_client.flushdb()
        decoded: list[object] = []

        def spy(
            decode: Callable[[bytes], object], body: bytes, fast: bool = fast, decoded: list[object] = decoded
        ) -> object:
            decoded.append(decode(body) if fast else None)
            return decoded[-1]

        with monkeypatch.context() as patch:
            patch.setattr(views, "message_decode", functools.partial(spy, message_decode))
            patch.setattr(views, "batch_decode", functools.partial(spy, batch_decode))
            response = await api.post(
                path, content=raw.encode(), headers={"Content-Type": "application/json"}
            )
        assert [result is not None for result in decoded] == [fast and taken]
        rows = [row[1:4] for job in ingest_queue().get_jobs() for row in job.args[0]]
        answers.append((response.status_code, _comparable(response.json()), rows))
    assert answers[0] == answers[1]
