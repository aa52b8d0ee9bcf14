from __future__ import annotations

from django.apps import AppConfig


class MessagesAppConfig(AppConfig):
    name = "messages_app"
    verbose_name = "Messages"
    default_auto_field = "django.db.models.BigAutoField"
