"""The middleware-free API handler: which paths it serves, and the request cycle it keeps of Django's.

The request-cycle tests drive ApiASGIHandler through ASGI, as a server does, with views of
this module as the URLconf (they need a view that waits).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import httpx
import pytest
import redis as redis_lib
from django.conf import settings
from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path, resolve

from ingestor_site import views as site_views
from ingestor_site.asgi import application
from ingestor_site.handlers import API_PATHS, ApiASGIHandler
from messages_app import services
from messages_app import urls as ingest_urls
from messages_app.batcher import batcher_for_loop
from metrics_app import views as dashboard_views

# --- which paths skip the middleware --------------------------------------------------------------


def test_every_api_path_resolves_to_a_view() -> None:
    for api_path in sorted(API_PATHS):
        assert resolve(api_path).func is not None, api_path


def test_the_api_paths_are_the_ingest_views_and_the_json_reports() -> None:
    ingest = {f"/{pattern.pattern}": pattern.callback for pattern in ingest_urls.urlpatterns}
    reports = {
        "/stats": dashboard_views.stats,
        "/metrics": dashboard_views.prometheus_metrics,
        "/openapi.json": site_views.openapi,
    }
    assert set(API_PATHS) == set(ingest) | set(reports)
    for api_path, view in {**ingest, **reports}.items():
        assert resolve(api_path).func is view, f"{api_path} resolves to {resolve(api_path).func}, not {view}"


# What only Django's middleware provides (sessions, authentication, CSRF tokens for templates):
# a view using one of these must not skip it.
NEEDS_MIDDLEWARE = ("request.user", "request.session", "auser", "_is_staff", "get_token", "render(request")


@pytest.mark.parametrize("api_path", sorted(API_PATHS))
def test_no_api_view_needs_sessions_or_authentication(api_path: str) -> None:
    view = resolve(api_path).func
    source = inspect.getsource(inspect.unwrap(view))
    needs = [name for name in NEEDS_MIDDLEWARE if name in source]
    assert not needs, f"{api_path} uses {needs}, which needs Django's middleware"


@pytest.mark.parametrize("api_path", sorted(API_PATHS))
async def test_no_api_view_takes_a_write_that_csrf_would_guard(api_path: str) -> None:
    # Without CsrfViewMiddleware nothing checks CSRF: a view that takes writes must need none
    # (csrf_exempt: JSON bodies and API keys, no cookies); the others refuse every write.
    view = resolve(api_path).func
    if getattr(view, "csrf_exempt", False):
        return
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(api_path, json={})
    assert response.status_code == 405, f"{api_path} answered a POST with {response.status_code}"


@pytest.mark.parametrize("api_path", sorted(API_PATHS))
def test_api_views_run_sync_code_off_djangos_shared_sync_thread(api_path: str) -> None:
    # The handler sends request_finished on the event loop, not in Django's shared sync thread:
    # a database connection opened there by an API view would never be closed.
    source = inspect.getsource(inspect.unwrap(resolve(api_path).func))
    calls = source.count("sync_to_async(")
    assert source.count("thread_sensitive=False") == calls, (
        f"{api_path} calls sync_to_async thread-sensitively"
    )


def test_the_site_pages_that_need_middleware_keep_it() -> None:
    assert not {"/", "/simulate", "/reset", "/admin/"} & API_PATHS


# --- the request cycle ------------------------------------------------------------------------------

view_started = asyncio.Event()
view_cancelled: list[bool] = []


async def waiting_view(request: HttpRequest) -> HttpResponse:
    view_started.set()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        view_cancelled.append(True)
        raise
    return JsonResponse({"waited": True})


async def plain_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"plain": True})


urlpatterns = [
    path("wait", waiting_view),
    path("plain", plain_view),
]


@pytest.fixture
def this_urlconf(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__
    view_started.clear()
    view_cancelled.clear()


@pytest.fixture
def finished() -> Iterator[list[tuple[Any, int]]]:
    """(sender, thread id) of each request_finished sent while the test runs."""
    seen: list[tuple[Any, int]] = []

    def on_finished(sender: Any, **kwargs: Any) -> None:
        seen.append((sender, threading.get_ident()))

    request_finished.connect(on_finished)
    try:
        yield seen
    finally:
        request_finished.disconnect(on_finished)


def _scope(request_path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": request_path,
        "raw_path": request_path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


class Client:
    """The server side of one ASGI connection: what the handler receives, and what it sent."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self.incoming.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        self.sent: list[Mapping[str, Any]] = []

    async def receive(self) -> MutableMapping[str, Any]:
        return await self.incoming.get()

    async def send(self, message: Mapping[str, Any]) -> None:
        self.sent.append(message)

    def hang_up(self) -> None:
        self.incoming.put_nowait({"type": "http.disconnect"})


async def test_a_client_that_hangs_up_while_its_view_runs_gets_the_view_cancelled(
    this_urlconf: None, finished: list[tuple[Any, int]]
) -> None:
    client = Client()
    request = asyncio.create_task(ApiASGIHandler()(_scope("/wait"), client.receive, client.send))
    await asyncio.wait_for(view_started.wait(), timeout=5)
    client.hang_up()
    await asyncio.wait_for(request, timeout=5)  # returns: a hang-up is not an error
    assert view_cancelled == [True]
    assert client.sent == []
    assert finished == [(ApiASGIHandler, threading.get_ident())]


async def test_a_message_whose_client_hangs_up_after_sending_it_is_still_queued(
    redis_client: redis_lib.Redis,
) -> None:
    """Once an ingest request's body is in, its view runs to its end: its rows are queued (and
    answered to a client that may no longer read it), never half-handled by a cancellation."""
    body = json.dumps({"user_id": 1, "channel_id": 2, "content": "sent, then gone"}).encode()
    scope = {**_scope("/messages"), "method": "POST",
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}  # fmt: skip
    client = Client()
    client.incoming.get_nowait()
    client.incoming.put_nowait({"type": "http.request", "body": body, "more_body": False})
    client.hang_up()
    await asyncio.wait_for(application(scope, client.receive, client.send), timeout=10)
    assert client.sent[0]["status"] == 201
    assert services.ingest_queue().count == 1


def _message_post(body: bytes, *, declared: bool) -> dict[str, Any]:
    headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
    if declared:
        headers.append((b"content-length", str(len(body)).encode()))
    return {**_scope("/messages"), "method": "POST", "headers": headers}


async def test_a_body_is_whole_once_its_content_length_is_in(redis_client: redis_lib.Redis) -> None:
    """The server's closing message (no bytes, more_body false) is not waited for: granian
    sends it as a second hop to the event loop. Here it never comes, and the answer does."""
    body = json.dumps({"user_id": 1, "channel_id": 2, "content": "in two parts"}).encode()
    client = Client()
    client.incoming.get_nowait()
    client.incoming.put_nowait({"type": "http.request", "body": body[:10], "more_body": True})
    client.incoming.put_nowait({"type": "http.request", "body": body[10:], "more_body": True})
    await asyncio.wait_for(application(_message_post(body, declared=True), client.receive, client.send), 10)
    assert client.sent[0]["status"] == 201
    assert client.incoming.empty()  # both parts were read, nothing more was asked for
    assert services.ingest_queue().count == 1


async def test_a_body_without_a_content_length_is_read_to_its_last_message(
    redis_client: redis_lib.Redis,
) -> None:
    body = json.dumps({"user_id": 1, "channel_id": 2, "content": "chunked"}).encode()
    client = Client()
    client.incoming.get_nowait()
    client.incoming.put_nowait({"type": "http.request", "body": body, "more_body": True})
    request = asyncio.create_task(
        application(_message_post(body, declared=False), client.receive, client.send)
    )
    await asyncio.sleep(0.2)
    assert not request.done() and client.sent == []  # the body may go on: no answer yet
    client.incoming.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    await asyncio.wait_for(request, 10)
    assert client.sent[0]["status"] == 201
    assert services.ingest_queue().count == 1


async def test_an_ingest_request_is_counted_open_while_it_runs(
    redis_client: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batcher polls for Redis's reply only for the flush of the one ingest request open:
    the handler counts them, the refused ones too, and forgets each once it is answered."""
    seen: list[tuple[int, float]] = []
    real_enqueue = services.batch_enqueue_async

    async def enqueue(client: Any, *, batch: Any, reply_spin_s: float) -> services.Enqueued:
        seen.append((batcher_for_loop().requests_open, reply_spin_s))
        return await real_enqueue(client, batch=batch, reply_spin_s=reply_spin_s)

    monkeypatch.setattr(services, "batch_enqueue_async", enqueue)  # before this loop's batcher
    body = json.dumps({"user_id": 1, "channel_id": 2, "content": "counted"}).encode()
    client = Client()
    client.incoming.get_nowait()
    client.incoming.put_nowait({"type": "http.request", "body": body, "more_body": False})
    await asyncio.wait_for(application(_message_post(body, declared=True), client.receive, client.send), 10)
    refused = Client()
    scope = {**_message_post(b"x", declared=True), "headers": [(b"content-type", b"text/plain")]}
    await asyncio.wait_for(application(scope, refused.receive, refused.send), 10)
    assert [client.sent[0]["status"], refused.sent[0]["status"]] == [201, 415]
    assert seen == [(1, settings.BATCH_REPLY_SPIN_US / 1_000_000)]
    assert batcher_for_loop().requests_open == 0


async def test_a_server_cancelling_the_request_is_not_swallowed(this_urlconf: None) -> None:
    client = Client()
    request = asyncio.create_task(ApiASGIHandler()(_scope("/wait"), client.receive, client.send))
    await asyncio.wait_for(view_started.wait(), timeout=5)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert view_cancelled == [True]


async def test_an_answered_request_sends_request_finished_on_the_event_loop(
    this_urlconf: None, finished: list[tuple[Any, int]]
) -> None:
    client = Client()
    await ApiASGIHandler()(_scope("/plain"), client.receive, client.send)
    assert client.sent[0]["status"] == 200
    assert b'"plain": true' in client.sent[-1]["body"]
    assert finished == [(ApiASGIHandler, threading.get_ident())]
