from __future__ import annotations

from django.urls import path

from messages_app import views

urlpatterns = [
    path("messages", views.messages, name="messages"),
    path("messages/batch", views.messages_batch, name="messages-batch"),
    path("health", views.health, name="health"),
    path("health/live", views.health_live, name="health-live"),
    path("queue/status", views.queue_status, name="queue-status"),
]
