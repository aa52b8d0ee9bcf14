"""A Django ASGI handler without middleware, for the JSON API's hot paths."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix

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
    """Django's ASGI handler, lean: no middleware, no per-request thread, no signal thread hops.

    Profiled under load, Django's own per-request machinery cost more than the ingest itself:
    each request runs in a ThreadSensitiveContext that starts and joins a fresh thread, and the
    request_started / request_finished signals each hop to a thread to run their sync receivers
    (close_old_connections). The API views own their database use: every query runs in an
    explicit sync_to_async function that closes its connection, so those receivers have
    nothing to do here. Everything else Django does for a request (URL resolution, the view,
    exception-to-response conversion, sending) is kept.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        handler: Any = self
        get_response = handler._get_response_async if is_async else handler._get_response
        self._middleware_chain = convert_exception_to_response(get_response)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            request, error_response = self.create_request(scope, body_file)
            response = await self.run_get_response(request) if request is not None else error_response
            assert response is not None  # create_request returns a request or an error response
            await self.send_response(response, send)
        finally:
            body_file.close()
