"""A Django ASGI handler without middleware, for the JSON API's hot paths.

It leans on pieces of Django's ASGIHandler that Django does not document; every one of them is
named in ingestor_site/internals.py, and tests/test_internals.py fails by name when a Django
upgrade moves one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.urls import set_script_prefix

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


class ApiASGIHandler(ASGIHandler):
    """Django's ASGI handler, lean: no middleware, no per-request thread, no thread hop.

    Under load, Django's own per-request machinery cost more than the ingest itself: each
    request runs in a ThreadSensitiveContext, and the request_started / request_finished
    signals each hop to a thread to run their sync receivers; on GET /health/live those hops
    alone halved the requests/s. What this handler keeps of Django's `handle()`:

    - URL resolution, the view, exception-to-response conversion and sending, unchanged;
    - the disconnect handling: a client that hangs up while its view runs gets the view
      cancelled, and a hang-up during sending is not an error;
    - request_finished, sent by `HttpResponse.close()` as Django sends it, but on the event loop.
      Its receivers (pinned by tests/test_internals.py) are sync and touch only memory and the
      database connections of the thread they run in; on the event loop there are none, since
      Django refuses to open one there. The API views run their queries in
      `sync_to_async(..., thread_sensitive=False)` functions that close their connection
      themselves, so no connection waits for a receiver in Django's shared sync thread either.

    What it drops: request_started, whose receivers prepare that shared sync thread's
    connection, which the API views do not use.
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
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                assert error_response is not None  # create_request returns one or the other
                response: HttpResponseBase | None = error_response
                await self.send_response(error_response, send)
            else:
                response = await self._response_unless_hung_up(request, receive, send)
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
                await self.listen_for_disconnect(receive)
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
