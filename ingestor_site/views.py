"""Views of the site itself: the API's description."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse

from ingestor_site.openapi import OPENAPI_SCHEMA
from messages_app.http import require_safe


@require_safe
async def openapi(request: HttpRequest) -> HttpResponse:
    return JsonResponse(OPENAPI_SCHEMA)
