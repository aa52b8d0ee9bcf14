from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from ingestor_site import views

urlpatterns = [
    path("admin/django-rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
    path("", include("messages_app.urls")),
    path("", include("metrics_app.urls")),
    path("openapi.json", views.openapi, name="openapi"),
]
