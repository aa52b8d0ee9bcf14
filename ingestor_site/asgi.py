"""ASGI entry point: the ingest API on a middleware-free Django handler, the site on the full one.

Django's default middleware runs each hook of an async request in a thread; measured on a
2-core host, that stack alone cost more than half the throughput of `POST /messages`. The JSON
API needs none of it (no sessions, no CSRF, no templates), so its paths (API_PATHS) get a
handler without it (ingestor_site/handlers.py), while the admin and the dashboard keep theirs.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ingestor_site.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

# Build Django's app (and so the app registry) before importing anything that touches models.
site_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from ingestor_site.handlers import API_PATHS, ApiASGIHandler, Receive, Scope, Send  # noqa: E402
from metrics_app.routing import websocket_urlpatterns  # noqa: E402
from telemetry.collector import collector_settle  # noqa: E402

api_application = ApiASGIHandler()


async def http_application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] in API_PATHS:
        await api_application(scope, receive, send)
    else:
        await site_application(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)

# Everything a web process serves with is loaded by now (telemetry/collector.py).
collector_settle()
