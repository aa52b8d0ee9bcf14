"""/openapi.json is valid OpenAPI 3 and stays true to the URLconf and to the answers the API gives."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis as redis_lib
import uuid6
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import AsyncClient
from django.urls import URLPattern, URLResolver
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import OpenAPIV30SpecValidator
from openapi_spec_validator import validate as openapi_validate

from ingestor_site import urls as site_urls
from ingestor_site.asgi import application
from ingestor_site.openapi import OPENAPI_SCHEMA
from messages_app.models import Message
from messages_app.validation import message_validate
from telemetry import metrics
from telemetry.connection import redis_connection

# Routes of the site that are not JSON, and so need no OpenAPI entry.
NOT_JSON = {"/": "the HTML dashboard"}
# Included URLconfs of Django's and django-rq's own pages (HTML, staff only).
NOT_OURS = ("admin/",)


def _routes(patterns: list[Any] | None = None, prefix: str = "/") -> set[str]:
    """Every route of the site's URLconf, written as OpenAPI paths (`<int:id>` -> `{id}`)."""
    routes: set[str] = set()
    pattern: Any
    for pattern in site_urls.urlpatterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            if not str(pattern.pattern).startswith(NOT_OURS):
                routes |= _routes(pattern.url_patterns, route)
            continue
        assert isinstance(pattern, URLPattern)
        routes.add(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route))
    return routes


def _resolved(schema: Any) -> Any:
    """The schema with every local `$ref` replaced by what it points to."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            target: Any = OPENAPI_SCHEMA
            for part in schema["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolved(target)
        return {key: _resolved(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_resolved(item) for item in schema]
    return schema


def _assert_documented(method: str, path: str, response: httpx.Response) -> None:
    """The answer's status is documented for this operation and its JSON body fits the schema."""
    operation = OPENAPI_SCHEMA["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method} {path} answered {status}, which is not documented"
    content = operation["responses"][status]["content"]
    media_type = response.headers["Content-Type"].split(";")[0]
    assert media_type in content, (
        f"{method} {path} {status} answered {media_type}, documented {list(content)}"
    )
    if media_type == "application/json":
        schema = _resolved(content[media_type]["schema"])
        errors = list(OAS30Validator(schema).iter_errors(response.json()))
        assert not errors, f"{method} {path} {status}: {[error.message for error in errors]}"


def _as_httpx(response: Any) -> httpx.Response:
    return httpx.Response(response.status_code, headers=dict(response.items()), content=response.content)


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10) as client:
        yield client


def test_document_is_valid_openapi_3_0() -> None:
    # 3.0 precisely: the answers are checked with OAS30Validator. (Left to guess the version from
    # the document, the validator would accept any version it knows.)
    openapi_validate(OPENAPI_SCHEMA, cls=OpenAPIV30SpecValidator)


def test_every_json_route_is_described() -> None:
    missing = _routes() - set(OPENAPI_SCHEMA["paths"]) - set(NOT_JSON)
    assert not missing, f"routes without an OpenAPI entry: {sorted(missing)}"


def test_every_described_path_exists() -> None:
    unknown = set(OPENAPI_SCHEMA["paths"]) - _routes()
    assert not unknown, f"OpenAPI paths with no route: {sorted(unknown)}"


async def test_served_document_is_the_described_one(api: httpx.AsyncClient) -> None:
    response = await api.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == OPENAPI_SCHEMA
    _assert_documented("GET", "/openapi.json", response)


@pytest.mark.parametrize(
    ("payload", "accepted"),
    [
        ({"user_id": 1, "channel_id": 2, "content": "hi"}, True),
        (
            # A UUIDv7 of now: the validator takes client ids minted within the last day.
            {"user_id": 1, "channel_id": 2, "content": "hi", "id": str(uuid6.uuid7())},
            True,
        ),
        ({"user_id": 1, "channel_id": 2, "content": "hi", "unknown": [1]}, True),
        ({"user_id": 2**63 - 1, "channel_id": 1, "content": "x" * 2000}, True),
        ({"user_id": 2**63, "channel_id": 1, "content": "hi"}, False),
        ({"user_id": 0, "channel_id": 1, "content": "hi"}, False),
        ({"user_id": True, "channel_id": 1, "content": "hi"}, False),
        ({"user_id": "5", "channel_id": 1, "content": "hi"}, False),
        ({"user_id": 1.5, "channel_id": 1, "content": "hi"}, False),
        ({"user_id": 1, "channel_id": 1, "content": ""}, False),
        ({"user_id": 1, "channel_id": 1, "content": "x" * 2001}, False),
        ({"user_id": 1, "channel_id": 1, "content": 5}, False),
        ({"user_id": 1, "content": "hi"}, False),
    ],
)
def test_request_schema_agrees_with_the_validator(payload: dict[str, Any], accepted: bool) -> None:
    schema = _resolved(OPENAPI_SCHEMA["components"]["schemas"]["MessageIn"])
    assert OAS30Validator(schema).is_valid(payload) is accepted
    assert (message_validate(payload)[0] is not None) is accepted


async def test_answers_of_post_messages_match_their_schemas(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    good = {"user_id": 1, "channel_id": 2, "content": "hi"}
    _assert_documented("POST", "/messages", await api.post("/messages", json=good))
    _assert_documented("POST", "/messages", await api.post("/messages", json={**good, "user_id": 0}))
    bad_json = await api.post("/messages", content=b"{", headers={"Content-Type": "application/json"})
    _assert_documented("POST", "/messages", bad_json)
    _assert_documented("POST", "/messages", await api.post("/messages", content=b"x"))
    too_big = await api.post(
        "/messages", content=b" " * 2_000_000, headers={"Content-Type": "application/json"}
    )
    assert too_big.status_code == 413
    _assert_documented("POST", "/messages", too_big)


async def test_answers_of_post_messages_batch_match_their_schemas(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    good = {"user_id": 1, "channel_id": 2, "content": "hi"}
    mixed = await api.post("/messages/batch", json={"messages": [good, {}, good]})
    assert mixed.status_code == 201
    _assert_documented("POST", "/messages/batch", mixed)
    all_bad = await api.post("/messages/batch", json={"messages": [{}]})
    assert all_bad.status_code == 422
    _assert_documented("POST", "/messages/batch", all_bad)
    too_many = await api.post("/messages/batch", json={"messages": [good] * 1001})
    assert too_many.status_code == 413
    _assert_documented("POST", "/messages/batch", too_many)


@sync_to_async
def _persisted(message_id: str) -> None:
    now = datetime.now(tz=UTC)
    try:
        Message.objects.create(
            id=message_id, user_id=1, channel_id=2, content="hi", created_at=now, inserted_at=now
        )
    finally:
        connection.close()  # back to the pool: a checked-out connection blocks dropping the test database


@pytest.mark.django_db(transaction=True)
async def test_answers_of_get_routes_match_their_schemas(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    # A persisted batch, so the list and the queue status have content to describe.
    response = await api.post("/messages", json={"user_id": 1, "channel_id": 2, "content": "hi"})
    assert response.status_code == 201
    await _persisted(response.json()["message_id"])
    with redis_connection().pipeline() as pipe:
        metrics.batch_record(
            pipe,
            size=1,
            inserted=1,
            dead=0,
            latencies_ms={12.0: 1},
            duration_s=0.01,
            worker="w",
            now=time.time(),
        )
        pipe.execute()

    for path in ("/messages", "/health", "/health/live", "/queue/status", "/stats"):
        response = await api.get(path)
        assert response.status_code == 200, (path, response.text)
        assert path != "/messages" or response.json()["count"] == 1
        _assert_documented("GET", path, response)
    _assert_documented("GET", "/messages", await api.get("/messages?limit=0"))


async def test_metrics_answers_the_documented_text_format(
    api: httpx.AsyncClient, redis_client: redis_lib.Redis
) -> None:
    response = await api.get("/metrics")
    assert response.status_code == 200
    _assert_documented("GET", "/metrics", response)


@pytest.mark.django_db(transaction=True)
async def test_answers_of_the_dashboard_controls_match_their_schemas(
    redis_client: redis_lib.Redis, admin_user: Any
) -> None:
    # The dashboard's routes keep Django's middleware; its test client skips the CSRF check.
    client = AsyncClient()
    try:
        await _dashboard_controls_check(client, admin_user)
    finally:
        # The test client keeps its requests' connection open (for test transactions): give it
        # back to the pool, or the test database cannot be dropped at the end.
        await sync_to_async(_connection_close)()


def _connection_close() -> None:
    connection.close()


async def _dashboard_controls_check(client: AsyncClient, admin_user: Any) -> None:
    simulated = await client.post("/simulate", {"count": 3}, content_type="application/json")
    assert simulated.status_code == 202
    _assert_documented("POST", "/simulate", _as_httpx(simulated))
    refused = await client.post("/simulate", {"count": 0}, content_type="application/json")
    _assert_documented("POST", "/simulate", _as_httpx(refused))

    anonymous = await client.delete("/reset")
    assert anonymous.status_code == 403
    _assert_documented("DELETE", "/reset", _as_httpx(anonymous))
    await client.aforce_login(admin_user)
    done = await client.delete("/reset")
    assert done.status_code == 200
    _assert_documented("DELETE", "/reset", _as_httpx(done))
