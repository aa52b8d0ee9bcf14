from __future__ import annotations

from django.urls import path

from metrics_app import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("stats", views.stats, name="stats"),
    path("metrics", views.prometheus_metrics, name="metrics"),
    path("simulate", views.simulate, name="simulate"),
    path("reset", views.reset, name="reset"),
]
