"""The JSON API's contract, through the real ASGI application and, where it matters, the real server.

Quick checks run `ingestor_site.asgi.application` in-process (the same routing and middleware-free
handler the server runs); the size limits, the API keys from the environment and rows landing in
PostgreSQL are checked against granian and a real rq worker.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib
import uuid6
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.test import override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ingestor_site.asgi import application
from ingestor_site.embedded import free_port
from messages_app.http import json_answer
from messages_app.models import Message
from messages_app.services import ingest_queue
from tests.conftest import subprocess_database_url
from tests.livestack import LiveStack, wait_until

JSON = {"Content-Type": "application/json"}


def _message(**changes: Any) -> dict[str, Any]:
    return {"user_id": 1, "channel_id": 2, "content": "hello", **changes}


def _queued_rows() -> list[list[Any]]:
    """Every row waiting in the rq `ingest` queue, in enqueue order."""
    return [row for job in ingest_queue().get_jobs() for row in job.args[0]]


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10) as client:
        yield client


# POST /messages


async def test_post_message_answers_201_once_it_is_queued(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    before = datetime.now(tz=UTC)
    response = await api.post("/messages", json=_message(content="  hi there \n"))
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"message_id", "status", "queued_at"}
    assert body["status"] == "queued"
    assert uuid.UUID(body["message_id"]).version == 7
    queued_at = datetime.fromisoformat(body["queued_at"])
    assert before - timedelta(seconds=1) <= queued_at <= datetime.now(tz=UTC)
    # In Redis inside a job by the time the 201 arrives, with the content stripped.
    rows = _queued_rows()
    assert [row[:4] for row in rows] == [[body["message_id"], 1, 2, "hi there"]]
    assert int(redis_client.get("queue_length") or 0) == 1


@pytest.mark.parametrize(
    "data",
    [
        {"message_ids": ["01a2343d-47c2-7b00-8000-000000000000"], "accepted": 1, "replay": False},
        {"rejected": [{"index": 0, "errors": ["é\u2028 ✓"]}], "none": None},
        {"rejected": [{"index": 3, "errors": ["\ud800 alone"]}]},  # no UTF-8 for it: JsonResponse's
    ],
    ids=["ids", "non-ascii", "lone-surrogate"],
)
def test_json_answer_says_what_jsonresponse_says(data: dict[str, Any]) -> None:
    answer, reference = json_answer(data, status=201), JsonResponse(data, status=201)
    assert answer.status_code == 201
    assert answer["Content-Type"] == reference["Content-Type"] == "application/json"
    assert json.loads(answer.content) == json.loads(reference.content) == data


async def test_post_message_with_a_client_id_uses_it_as_the_message_id(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    client_id = str(uuid6.uuid7())
    first = await api.post("/messages", json=_message(id=client_id.upper()))
    second = await api.post("/messages", json=_message(id=client_id))
    assert first.status_code == second.status_code == 201
    assert first.json()["message_id"] == second.json()["message_id"] == client_id
    assert (first.json()["replay"], second.json()["replay"]) == (False, True)


@pytest.mark.django_db(transaction=True)
async def test_head_messages_answers_like_get(api: httpx.AsyncClient) -> None:
    response = await api.head("/messages")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"


async def test_a_client_id_reused_with_different_content_answers_409_naming_it(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    client_id = str(uuid6.uuid7())
    assert (await api.post("/messages", json=_message(id=client_id))).status_code == 201
    for changed in (_message(id=client_id, content="other"), _message(id=client_id, channel_id=3)):
        response = await api.post("/messages", json=changed)
        assert response.status_code == 409, response.text
        assert client_id in response.json()["detail"] and response.json()["id"] == client_id
    assert [row[3] for row in _queued_rows()] == ["hello"]  # the refused content was never queued


async def test_a_batch_says_which_items_repeat_an_id_and_refuses_those_that_change_it(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    earlier, twice, changed = (str(uuid6.uuid7()) for _ in range(3))
    assert (await api.post("/messages", json=_message(id=earlier))).status_code == 201
    items = [
        _message(id=twice),
        _message(id=twice),  # the same again: a replay, one row
        _message(id=changed),
        _message(id=changed, content="not the same"),  # refused
        _message(id=earlier),  # a replay of the earlier request
        _message(id=earlier, content="changed"),  # refused, as against the earlier request
    ]
    response = await api.post("/messages/batch", json={"messages": items})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["accepted"] == 4
    assert body["message_ids"] == [twice, twice, changed, earlier]
    assert body["replays"] == [{"index": 1, "id": twice}, {"index": 4, "id": earlier}]
    assert [(rejection["index"], rejection["status"]) for rejection in body["rejected"]] == [
        (3, 409),
        (5, 409),
    ]
    assert all("different content" in rejection["errors"]["id"] for rejection in body["rejected"])
    queued = [(row[0], row[3]) for row in _queued_rows()]
    assert queued == [(earlier, "hello"), (twice, "hello"), (changed, "hello"), (earlier, "hello")]


async def test_a_batch_mixing_client_ids_and_minted_ones_keeps_each_in_its_place(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    client_id = str(uuid6.uuid7())
    items = [_message(content="a"), _message(id=client_id, content="b"), _message(content="c")]
    response = await api.post("/messages/batch", json={"messages": items})
    assert response.status_code == 201, response.text
    first, second, third = response.json()["message_ids"]
    assert second == client_id
    assert uuid.UUID(first).version == uuid.UUID(third).version == 7
    assert first < third and client_id not in {first, third}, "minted ids rise in the order of the items"
    assert [(row[0], row[3]) for row in _queued_rows()] == [(first, "a"), (client_id, "b"), (third, "c")]


async def test_a_batch_whose_every_item_reuses_an_id_with_other_content_answers_409(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    client_id = str(uuid6.uuid7())
    assert (await api.post("/messages", json=_message(id=client_id))).status_code == 201
    response = await api.post("/messages/batch", json={"messages": [_message(id=client_id, content="x")]})
    assert response.status_code == 409, response.text
    assert response.json()["accepted"] == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        None,
    ],
)
async def test_post_message_answers_415_to_a_non_json_content_type(
    api: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await api.post("/messages", content=json.dumps(_message()), headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.chat+json"])
async def test_post_message_accepts_json_content_types_with_parameters_or_suffix(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis, content_type: str
) -> None:
    response = await api.post(
        "/messages", content=json.dumps(_message()), headers={"Content-Type": content_type}
    )
    assert response.status_code == 201, response.text


def _oversized_body(limit: int) -> bytes:
    return json.dumps(_message(padding="p" * limit)).encode()


@override_settings(INGEST_MAX_BODY_BYTES=2048)
@pytest.mark.parametrize("path", ["/messages", "/messages/batch"])
async def test_answers_413_to_a_body_over_the_limit_with_content_length(
    api: httpx.AsyncClient, path: str
) -> None:
    response = await api.post(path, content=_oversized_body(2048), headers=JSON)
    assert response.status_code == 413
    assert response.json() == {"detail": "body larger than 2048 bytes"}


@override_settings(INGEST_MAX_BODY_BYTES=2048)
async def test_answers_413_to_a_chunked_body_over_the_limit(api: httpx.AsyncClient) -> None:
    body = _oversized_body(2048)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    response = await api.post("/messages", content=chunks(), headers=JSON)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/messages", "GET, HEAD, POST"),
        ("DELETE", "/messages", "GET, HEAD, POST"),
        ("PATCH", "/messages", "GET, HEAD, POST"),
        ("GET", "/messages/batch", "POST"),
        ("PUT", "/messages/batch", "POST"),
        ("POST", "/health", "GET, HEAD"),
        ("POST", "/health/live", "GET, HEAD"),
        ("DELETE", "/queue/status", "GET, HEAD"),
        ("POST", "/openapi.json", "GET, HEAD"),
    ],
)
async def test_answers_405_with_allow_to_a_wrong_method(
    api: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await api.request(method, path)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert method in response.json()["detail"]


# POST /messages/batch


async def test_batch_queues_good_items_and_reports_bad_ones_by_index(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    items: list[Any] = [
        _message(content="first"),
        _message(user_id=True),
        _message(content="  second  "),
        "not an object",
        _message(content=""),
        _message(content="third", channel_id=9),
    ]
    response = await api.post("/messages/batch", json={"messages": items})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["accepted"] == 3
    assert body["status"] == "queued"
    assert [entry["index"] for entry in body["rejected"]] == [1, 3, 4]
    assert body["rejected"][0]["errors"] == {"user_id": "must be an integer"}
    assert body["rejected"][1]["errors"] == {"body": "must be a JSON object"}
    assert set(body["rejected"][2]["errors"]) == {"content"}
    # message_ids follow the accepted items' order; all of them sit in one job.
    rows = _queued_rows()
    assert [row[0] for row in rows] == body["message_ids"]
    assert [(row[2], row[3]) for row in rows] == [(2, "first"), (2, "second"), (9, "third")]
    assert len(ingest_queue().get_jobs()) == 1


async def test_batch_keeps_the_order_of_many_accepted_items(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    items = [_message(content=f"m{index}") if index % 7 else {"bad": index} for index in range(1000)]
    response = await api.post("/messages/batch", json={"messages": items})
    assert response.status_code == 201
    body = response.json()
    assert body["accepted"] == 1000 - len(range(0, 1000, 7))
    assert [entry["index"] for entry in body["rejected"]] == list(range(0, 1000, 7))
    contents = {row[0]: row[3] for row in _queued_rows()}
    assert [contents[message_id] for message_id in body["message_ids"]] == [
        f"m{index}" for index in range(1000) if index % 7
    ]


async def test_ids_the_api_mints_hold_the_time_of_receipt_however_many_it_mints(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    """Server-minted ids are UUIDv7s of the receipt's millisecond: 5,000 of them in a second must
    not walk their timestamp (and so their partition) ahead of the clock."""
    before_ms = time.time_ns() // 1_000_000
    for _ in range(5):
        items = [_message(content=f"m{index}") for index in range(1000)]
        assert (await api.post("/messages/batch", json={"messages": items})).status_code == 201
    after_ms = time.time_ns() // 1_000_000
    ids = [uuid.UUID(row[0]) for row in _queued_rows()]
    assert len(set(ids)) == 5000
    assert all(minted.version == 7 and minted.variant == uuid.RFC_4122 for minted in ids)
    assert all(before_ms <= minted.int >> 80 <= after_ms for minted in ids)


async def test_batch_over_the_item_limit_answers_413(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    response = await api.post("/messages/batch", json={"messages": [_message()] * 1001})
    assert response.status_code == 413
    assert "1001" in response.json()["detail"]
    assert _queued_rows() == []


async def test_empty_batch_answers_422(api: httpx.AsyncClient) -> None:
    response = await api.post("/messages/batch", json={"messages": []})
    assert response.status_code == 422
    assert "empty" in response.json()["detail"]


async def test_batch_with_only_bad_items_answers_422_with_each_reason(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    response = await api.post("/messages/batch", json={"messages": [_message(content=" "), {}]})
    assert response.status_code == 422
    body = response.json()
    assert body["accepted"] == 0
    assert body["message_ids"] == []
    assert [entry["index"] for entry in body["rejected"]] == [0, 1]
    assert _queued_rows() == []


@pytest.mark.parametrize(
    "payload", [[_message()], {"items": [_message()]}, {"messages": _message()}, {"messages": "x"}, "x"]
)
async def test_batch_body_without_a_messages_list_answers_422(api: httpx.AsyncClient, payload: Any) -> None:
    response = await api.post("/messages/batch", json=payload)
    assert response.status_code == 422
    assert "messages" in response.json()["detail"]


# GET /messages


@sync_to_async
def _stored(count: int, **fields: Any) -> list[Message]:
    """Rows as the worker would have written them; the connection goes back to the pool after.

    A connection left checked out in the ORM's thread would keep the test database from being dropped.
    """
    start = datetime.now(tz=UTC) - timedelta(hours=1)
    rows = [
        Message(
            id=uuid.uuid4(),
            user_id=fields.get("user_id", 1 + index % 3),
            channel_id=fields.get("channel_id", 1 + index % 2),
            content=f"stored {index}",
            created_at=start + timedelta(seconds=index),
            inserted_at=start + timedelta(seconds=index, milliseconds=5),
        )
        for index in range(count)
    ]
    try:
        return Message.objects.bulk_create(rows)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
async def test_list_returns_the_latest_50_newest_first_by_default(api: httpx.AsyncClient) -> None:
    await _stored(60)
    response = await api.get("/messages")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == len(body["messages"]) == 50
    assert body["messages"][0]["content"] == "stored 59"
    assert body["messages"][-1]["content"] == "stored 10"
    created = [message["created_at"] for message in body["messages"]]
    assert created == sorted(created, reverse=True)
    assert set(body["messages"][0]) == {"id", "user_id", "channel_id", "content", "created_at", "inserted_at"}


@pytest.mark.django_db(transaction=True)
async def test_list_honours_limit_up_to_1000(api: httpx.AsyncClient) -> None:
    await _stored(1005)
    assert (await api.get("/messages?limit=3")).json()["count"] == 3
    assert (await api.get("/messages?limit=1000")).json()["count"] == 1000
    assert (await api.get("/messages?limit=")).json()["count"] == 50


@pytest.mark.parametrize("query", ["limit=0", "limit=-1", "limit=1001", "limit=abc", "limit=1.5", "limit=²",
                                   "limit=1e3", "channel_id=0", "channel_id=x", "user_id=-3",
                                   f"user_id={2**63}"])  # fmt: skip
async def test_list_answers_422_to_a_bad_query_parameter(api: httpx.AsyncClient, query: str) -> None:
    response = await api.get(f"/messages?{query}")
    assert response.status_code == 422, response.text
    assert "must be an integer from 1 to" in response.json()["detail"]


@pytest.mark.django_db(transaction=True)
async def test_list_filters_by_channel_and_user(api: httpx.AsyncClient) -> None:
    await _stored(12)
    by_channel = (await api.get("/messages?channel_id=2&limit=100")).json()["messages"]
    assert len(by_channel) == 6
    assert {message["channel_id"] for message in by_channel} == {2}
    both = (await api.get("/messages?channel_id=2&user_id=2&limit=100")).json()["messages"]
    assert {(message["channel_id"], message["user_id"]) for message in both} == {(2, 2)}
    # index % 2 == 1 and index % 3 == 1: 1 and 7.
    assert [message["content"] for message in both] == ["stored 7", "stored 1"]
    assert (await api.get("/messages?channel_id=99")).json() == {"messages": [], "count": 0}


# /health, /health/live, /queue/status


@pytest.mark.django_db
async def test_health_reports_both_dependencies_connected(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    redis_client.set("queue_length", 7)
    response = await api.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "healthy",
        "redis": "connected",
        "database": "connected",
        "queue_length": 7,
    }


async def test_liveness_answers_without_database_access(api: httpx.AsyncClient) -> None:
    # No django_db mark: any database query here would raise, and so answer 500.
    response = await api.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


async def test_queue_status_reports_backlog_jobs_workers_and_last_batch(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    empty = (await api.get("/queue/status")).json()
    assert empty["backlog_messages"] == empty["jobs_queued"] == empty["workers"] == 0
    assert empty["last_batch"] is None
    assert (await api.post("/messages/batch", json={"messages": [_message()] * 3})).status_code == 201
    response = await api.get("/queue/status")
    assert response.status_code == 200
    status = response.json()
    assert set(status) == {
        "queue", "backlog_messages", "jobs_queued", "jobs_running", "jobs_scheduled_for_retry",
        "jobs_failed", "workers", "dead_letters", "last_batch",
    }  # fmt: skip
    assert status["queue"] == "ingest"
    assert status["backlog_messages"] == 3
    assert status["jobs_queued"] == 1
    assert status["jobs_running"] == status["jobs_failed"] == status["dead_letters"] == 0


# INGEST_API_KEYS


@override_settings(INGEST_API_KEYS=frozenset({"key-one", "key-two"}))
@pytest.mark.parametrize("path", ["/messages", "/messages/batch"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": ""},
        {"Authorization": "Bearer no"},
        {"Authorization": "key-one"},  # no scheme
        {"Authorization": "Basic key-one"},
        {"X-API-Key": "key-one\t"},
        {"Authorization": "Bearer  key-one"},
    ],
)
async def test_posts_without_a_known_api_key_answer_401(
    api: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> None:
    response = await api.post(path, json={"messages": [_message()], **_message()}, headers=headers)
    assert response.status_code == 401
    assert "API key" in response.json()["detail"]


@override_settings(INGEST_API_KEYS=frozenset({"key-one", "key-two"}))
@pytest.mark.parametrize("headers", [{"X-API-Key": "key-two"}, {"Authorization": "Bearer key-one"}])
async def test_posts_with_a_known_api_key_are_accepted(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis, headers: dict[str, str]
) -> None:
    assert (await api.post("/messages", json=_message(), headers=headers)).status_code == 201
    batch = await api.post("/messages/batch", json={"messages": [_message()]}, headers=headers)
    assert batch.status_code == 201


# Never a 500: random JSON values and raw bodies.

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
_json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
)
_field_values = (
    st.integers(min_value=-(2**64), max_value=2**64)
    | st.text(max_size=40)
    # What PostgreSQL cannot store (NUL, lone surrogates) mixed with whitespace and astral characters.
    | st.lists(
        st.sampled_from(["\x00", "\ud800", "\udfff", "a", " ", "\u3000", "\U0001f600"]), max_size=6
    ).map("".join)
    | _scalars
    | st.just("  ")
)
_message_like = st.fixed_dictionaries(
    {},
    optional={
        "user_id": _field_values,
        "channel_id": _field_values,
        "content": _field_values,
        "id": st.uuids().map(str) | _field_values,
        "extra": _json_values,
    },
)
_bodies = (
    _json_values.map(lambda value: json.dumps(value).encode())
    | _message_like.map(lambda value: json.dumps(value).encode())
    | st.lists(_message_like, max_size=5).map(lambda items: json.dumps({"messages": items}).encode())
    | st.binary(max_size=60)
)


@pytest.fixture
def event_loop_for_fuzz() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


@hypothesis_settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(path=st.sampled_from(["/messages", "/messages/batch"]), body=_bodies)
def test_random_bodies_never_get_a_server_error(
    redis_client: redis_lib.Redis, event_loop_for_fuzz: asyncio.AbstractEventLoop, path: str, body: bytes
) -> None:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.post(path, content=body, headers=JSON)

    response = event_loop_for_fuzz.run_until_complete(post())
    assert response.status_code in {201, 400, 413, 422}, (response.status_code, response.text)
    answer = response.json()
    if response.status_code == 201:
        # Whatever is accepted is storable: every queued row carries a text PostgreSQL takes.
        assert all("\x00" not in row[3] and row[3].strip() == row[3] != "" for row in _queued_rows())
    else:
        assert answer["detail"]


# Against the real server: granian, a real rq worker, PostgreSQL.


@pytest.mark.integration
def test_acknowledged_messages_land_as_rows_listed_newest_first(live_stack: LiveStack) -> None:
    client_id = str(uuid6.uuid7())
    with httpx.Client(base_url=live_stack.url, timeout=10) as client:
        single = client.post("/messages", json=_message(content="\t padded  ", channel_id=31))
        assert single.status_code == 201, single.text
        repeated = [client.post("/messages", json=_message(id=client_id, channel_id=31)) for _ in range(2)]
        assert [response.json()["message_id"] for response in repeated] == [client_id, client_id]
        batch = client.post(
            "/messages/batch",
            json={
                "messages": [_message(content=f"b{i}", channel_id=32) for i in range(5)] + [{"user_id": 0}]
            },
        )
        assert batch.status_code == 201
        assert batch.json()["accepted"] == 5
        expected = {single.json()["message_id"], client_id, *batch.json()["message_ids"]}

        wait_until(lambda: Message.objects.count() >= 7, timeout_s=30, what="7 rows")
        assert {str(pk) for pk in Message.objects.values_list("id", flat=True)} == expected
        assert Message.objects.get(pk=single.json()["message_id"]).content == "padded"

        listed = client.get("/messages", params={"channel_id": 32}).json()
        assert [message["content"] for message in listed["messages"]] == ["b4", "b3", "b2", "b1", "b0"]
        assert listed["messages"][0]["id"] == batch.json()["message_ids"][-1]
        status = client.get("/queue/status").json()
        assert status["workers"] == 1
        assert status["backlog_messages"] == 0
        assert status["last_batch"] is not None


@pytest.fixture(scope="module")
def guarded_server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """A real web server (no worker) with a small body limit and API keys set through the environment."""
    log_dir = Path(tmp_path_factory.mktemp("guarded-server"))
    stack = LiveStack(
        database_url=subprocess_database_url(),
        redis_url=settings.REDIS_URL,
        log_dir=log_dir,
        INGEST_MAX_BODY_BYTES="2048",
        INGEST_API_KEYS="live-key, other-key",
    )
    try:
        stack.web_start()
        yield stack
    finally:
        stack.stop()


@pytest.mark.integration
def test_real_server_answers_413_with_and_without_content_length(
    guarded_server: LiveStack, redis_client: redis_lib.Redis
) -> None:
    headers = {**JSON, "X-API-Key": "live-key"}
    body = _oversized_body(2048)
    with httpx.Client(base_url=guarded_server.url, timeout=10, headers=headers) as client:
        declared = client.post("/messages", content=body)
        assert declared.request.headers["Content-Length"] == str(len(body))
        assert declared.status_code == 413
        assert declared.json() == {"detail": "body larger than 2048 bytes"}

        chunked = client.post("/messages/batch", content=iter([body[:1000], body[1000:]]))
        assert chunked.request.headers["Transfer-Encoding"] == "chunked"
        assert chunked.status_code == 413

        small = json.dumps(_message()).encode()
        accepted = client.post("/messages", content=iter([small[:10], small[10:]]))
        assert accepted.status_code == 201, accepted.text
    assert len(_queued_rows()) == 1


@pytest.mark.integration
def test_real_server_takes_api_keys_from_the_environment(
    guarded_server: LiveStack, redis_client: redis_lib.Redis
) -> None:
    with httpx.Client(base_url=guarded_server.url, timeout=10) as client:
        assert client.post("/messages", json=_message()).status_code == 401
        assert client.post("/messages", json=_message(), headers={"X-API-Key": "nope"}).status_code == 401
        assert (
            client.post("/messages", json=_message(), headers={"X-API-Key": "other-key"}).status_code == 201
        )
        assert client.get("/health/live").status_code == 200
    assert len(_queued_rows()) == 1


@pytest.mark.integration
def test_real_server_answers_503_when_postgresql_is_unreachable(
    django_db_setup: None, redis_client: redis_lib.Redis, output_dir: Path
) -> None:
    stack = LiveStack(
        database_url=f"postgres://postgres@127.0.0.1:{free_port()}/nothing-listens",
        redis_url=settings.REDIS_URL,
        log_dir=output_dir,
        DATABASE_POOL_TIMEOUT="1",
    )
    try:
        stack.web_start()
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            health = client.get("/health")
            assert health.status_code == 503
            assert health.headers["Retry-After"].isdigit()
            assert health.json()["database"] == "disconnected"
            assert health.json()["redis"] == "connected"
            listed = client.get("/messages")
            assert listed.status_code == 503, listed.text
            assert listed.headers["Retry-After"].isdigit()
            assert listed.json()["database"] == "disconnected"
            # Ingest does not need PostgreSQL: messages wait in Redis for it.
            assert client.post("/messages", json=_message()).status_code == 201
    finally:
        stack.stop()
