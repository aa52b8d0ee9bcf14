from __future__ import annotations

from typing import Any

from django.urls import path

from metrics_app.consumers import StatsConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/stats", StatsConsumer.as_asgi()),
]
