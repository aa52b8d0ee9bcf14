from __future__ import annotations

from django.urls import path

from metrics_app import views

urlpatterns = [
    path("stats", views.stats, name="stats"),
]
