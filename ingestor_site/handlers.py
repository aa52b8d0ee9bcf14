"""A Django ASGI handler without middleware, for the JSON API's hot paths.

It leans on pieces of Django's ASGIHandler that Django does not document; every one of them is
named in ingestor_site/internals.py, and tests/test_internals.py fails by name when a Django
upgrade moves one.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.urls import set_script_prefix

from messages_app.batcher import batcher_for_loop
from messages_app.http import json_error
from messages_app.ratelimit import identity_of_address, identity_of_key, ingest_limit, rate_check
from messages_app.views import body_too_large, ingest_door

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]

# Paths served without Django's middleware stack. Each is a JSON endpoint with no use for
# sessions, CSRF or templates; everything else (admin, dashboard, /simulate, /reset) keeps it.
API_PATHS = frozenset(
    {
        "/messages",
        "/messages/batch",
        "/health",
        "/health/live",
        "/queue/status",
        "/stats",
        "/metrics",
        "/openapi.json",
    }
)


# The only requests of the API whose body is read: each is checked by `ingest_door` (method,
# path, API key, content type, declared length) before a byte of it is, and then read into
# memory up to INGEST_MAX_BODY_BYTES. Any other request's body is never read: its view answers
# from the method, path and query alone (405 to a write it does not take).
BODY_ROUTES = frozenset({("/messages", "POST"), ("/messages/batch", "POST")})
# The request headers ingest_door reads.
_DOOR_HEADERS = frozenset({b"content-type", b"content-length", b"x-api-key", b"authorization"})


async def door_check(scope: Scope) -> tuple[HttpResponseBase | None, int | None]:
    """ingest_door's answer from the request's headers alone (the body still unread), then the
    rate limit of the request's API key (of its client address without keys); and the body's
    declared length (Content-Length) when it passed."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if (name := name.lower()) in _DOOR_HEADERS:
            text = value.decode("latin1")
            # A repeated header joins as in Django's request.META: a repeated length is then invalid.
            found[name] = f"{found[name]},{text}" if name in found else text
    x_api_key, authorization = found.get(b"x-api-key"), found.get(b"authorization")
    refusal = ingest_door(
        content_type=found.get(b"content-type", ""),
        content_length=found.get(b"content-length"),
        x_api_key=x_api_key,
        authorization=authorization,
    )
    if refusal is not None:
        return refusal, None
    # ingest_door accepted it: absent, or one decimal number.
    declared = found.get(b"content-length")
    declared_length = None if declared is None else int(declared)
    limit = ingest_limit()
    if limit.item is None:
        return None, declared_length
    if settings.INGEST_API_KEYS:  # the key is valid: ingest_door said so
        key = x_api_key if x_api_key is not None else (authorization or "").partition(" ")[2]
        identity = identity_of_key(key)
    else:
        identity = identity_of_address((scope.get("client") or (None,))[0])
    return await rate_check(limit, identity), declared_length


class BodyRefused(Exception):
    """The body was not read to its end: the answer (413, 408) says why."""

    def __init__(self, response: HttpResponseBase) -> None:
        self.response = response


async def body_read_capped(
    receive: Receive, *, limit: int, timeout_s: float, declared_length: int | None = None
) -> bytes:
    """The request body, in memory, refused (BodyRefused) as soon as it passes `limit` bytes or
    has not all arrived within `timeout_s` (a body trickled byte by byte); RequestAborted when
    the client hangs up. Django's read_body, by contrast, spools any size to a temporary file
    with no deadline.

    With `declared_length` (the request's Content-Length), the body is whole once that many
    bytes are in: the server's closing message (no bytes, no more_body) is not waited for.
    granian sends the data of a small body and that closing message separately, each a hop
    from its thread to the event loop: a quarter of a lone message's time in the server."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestAborted()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BodyRefused(body_too_large())
                chunks.append(chunk)
                if size == declared_length or not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise BodyRefused(json_error(408, f"request body not received within {timeout_s:g}s")) from None


async def hang_up_wait(receive: Receive) -> None:
    """Raise RequestAborted once the client hangs up. The request's body, which its view does
    not read, is discarded as it arrives meanwhile (only while the view runs and answers)."""
    body_unread = True
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        if body_unread and message["type"] == "http.request":
            body_unread = message.get("more_body", False)
            continue
        raise RuntimeError(f"Invalid ASGI message after request body: {message['type']}")


class ApiASGIHandler(ASGIHandler):
    """Django's ASGI handler, lean: no middleware, no per-request thread, no thread hop.

    Under load, Django's own per-request machinery cost more than the ingest itself: each
    request runs in a ThreadSensitiveContext, and the request_started / request_finished
    signals each hop to a thread to run their sync receivers; on GET /health/live those hops
    alone halved the requests/s. What this handler keeps of Django's `handle()`:

    - URL resolution, the view, exception-to-response conversion and sending, unchanged;
    - the disconnect handling: a client that hangs up while its view runs gets the view
      cancelled, and a hang-up during sending is not an error; except on BODY_ROUTES, whose
      views, once the body is in, only decode it and queue its rows: they run to their end;
    - request_finished, sent by `HttpResponse.close()` as Django sends it, but on the event loop.
      Its receivers (pinned by tests/test_internals.py) are sync and touch only memory and the
      database connections of the thread they run in; on the event loop there are none, since
      Django refuses to open one there. The API views run their queries in
      `sync_to_async(..., thread_sensitive=False)` functions that close their connection
      themselves, so no connection waits for a receiver in Django's shared sync thread either.

    What it drops: request_started, whose receivers prepare that shared sync thread's
    connection, which the API views do not use; and Django's read_body(), which reads any body
    whole (to a temporary file past 2.5 MB) before the view can refuse it: here a body is read
    only for BODY_ROUTES, after their checks, into memory, capped and with a deadline.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler.load_middleware with an empty MIDDLEWARE: the same attributes, no hooks.
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        handler: Any = self
        get_response = handler._get_response_async if is_async else handler._get_response
        self._middleware_chain = convert_exception_to_response(get_response)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        if (scope["path"], scope["method"]) not in BODY_ROUTES:
            await self._request_cycle(scope, receive, send, body_unread=True)
            return
        # Counted while open: the batcher lets a flush wait for Redis's reply without sleeping
        # only when its request is the one ingest request open on the loop (batcher.py).
        batcher = batcher_for_loop()
        batcher.requests_open += 1
        try:
            await self._request_cycle(scope, receive, send, body_unread=False)
        finally:
            batcher.requests_open -= 1

    async def _request_cycle(self, scope: Scope, receive: Receive, send: Send, *, body_unread: bool) -> None:
        body = b""
        if not body_unread:
            early, declared_length = await door_check(scope)
            if early is None:
                try:
                    body = await body_read_capped(
                        receive,
                        limit=settings.INGEST_MAX_BODY_BYTES,
                        timeout_s=settings.INGEST_BODY_TIMEOUT_S,
                        declared_length=declared_length,
                    )
                except RequestAborted:
                    return
                except BodyRefused as refused:
                    early = refused.response
            if early is not None:
                await self.send_response(early, send)
                early.close()
                return
        body_file = io.BytesIO(body)
        try:
            set_script_prefix(get_script_prefix(scope))
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                assert error_response is not None  # create_request returns one or the other
                response: HttpResponseBase | None = error_response
                await self.send_response(error_response, send)
            elif body_unread:
                response = await self._response_unless_hung_up(request, receive, send)
            else:
                # An ingest request, its body in: its view decodes it and hands the rows to the
                # batcher, whose flush goes on whoever hangs up (batcher.py); a hang-up has
                # nothing left to stop. Listening for one would cost a task, a receive() the
                # server answers from its own thread, and a cancellation: a tenth of a lone
                # message's answer time here.
                response = await self.run_get_response(request)
                await self.send_response(response, send)
        finally:
            body_file.close()
        if response is None:
            # The client hung up before the view returned: no response to close.
            signals.request_finished.send(sender=self.__class__)
        else:
            response.close()

    async def _response_unless_hung_up(
        self, request: HttpRequest, receive: Receive, send: Send
    ) -> HttpResponseBase | None:
        """Run the view and send its response; cancel both if the client hangs up meanwhile.

        Django's `handle()` runs the view and a disconnect listener as two tasks; here the view
        runs in the request's own task and only the listener is a task of its own (one task per
        request instead of two), which cancels the request's task on a hang-up.
        """
        request_task = asyncio.current_task()
        assert request_task is not None  # called from a coroutine
        hung_up = False

        async def cancel_on_hang_up() -> None:
            nonlocal hung_up
            try:
                await hang_up_wait(receive)
            except RequestAborted:
                hung_up = True
                request_task.cancel()

        listener = asyncio.create_task(cancel_on_hang_up())
        response: HttpResponseBase | None = None
        try:
            response = await self.run_get_response(request)
            await self.send_response(response, send)
        except asyncio.CancelledError:
            # Swallow only the cancellation the listener asked for; the server's (shutdown) goes on.
            if not hung_up or request_task.uncancel() > 0:
                raise
        finally:
            listener.cancel()
        if listener.done() and not listener.cancelled() and (error := listener.exception()) is not None:
            raise error  # an ASGI message other than a disconnect after the body, as Django raises
        return response
