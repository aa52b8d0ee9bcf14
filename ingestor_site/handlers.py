"""A Django ASGI handler without middleware, for the JSON API's hot paths."""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response

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
    """Django's ASGI handler with an empty middleware chain."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        handler: Any = self
        get_response = handler._get_response_async if is_async else handler._get_response
        self._middleware_chain = convert_exception_to_response(get_response)
