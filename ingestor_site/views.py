"""Views of the site itself: the API's description, the CSRF failure answer."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.views import csrf

from ingestor_site.openapi import OPENAPI_SCHEMA
from messages_app.http import json_error, method_not_allowed, require_safe


@require_safe
async def openapi(request: HttpRequest) -> HttpResponse:
    return JsonResponse(OPENAPI_SCHEMA)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: the JSON doors (/simulate, /reset) answer in JSON, and a method their
    view refuses anyway gets its 405 rather than a 403 (CSRF's check runs before the view)."""
    try:
        view = resolve(request.path_info).func
    except Resolver404:
        view = None
    methods = getattr(view, "allowed_methods", None)
    if methods is None:
        return csrf.csrf_failure(request, reason)  # Django's page, for the admin's forms
    if request.method not in methods:
        return method_not_allowed(request, ", ".join(methods))
    return json_error(403, f"CSRF check failed: {reason}")
