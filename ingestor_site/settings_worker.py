"""The settings of an rq worker: the site's, without the apps that only serve pages.

Django imports every installed app at start-up, and the system checks every management command
runs import the URL configuration, and with it every view. The admin, sessions, the messages
framework, static files, Channels, HTMX and template partials, and the views, serve browsers
and WebSockets, which a worker never does (README, Benchmarks: what they cost a worker).
`manage.py rqworker ingest --settings ingestor_site.settings_worker` runs on these (make run's
workers and the compose file's do); a worker on the site's own settings works the same.
"""

from __future__ import annotations

from typing import Any

from ingestor_site.settings import *  # noqa: F403
from ingestor_site.settings import INSTALLED_APPS as SITE_APPS

# What a worker keeps: this project's apps (the rqworker command, the models it writes), the
# models theirs rest on, and django_rq (its queues and command).
PAGE_ONLY_APPS = frozenset(
    {
        "django.contrib.admin",
        "django.contrib.sessions",
        "django.contrib.messages",
        "whitenoise.runserver_nostatic",
        "django.contrib.staticfiles",
        "channels",
        "django_htmx",
        "template_partials",
    }
)
INSTALLED_APPS = [app for app in SITE_APPS if app not in PAGE_ONLY_APPS]

# A worker serves no request: no middleware, and its URL configuration is this module, whose
# urlpatterns are empty.
MIDDLEWARE = []
ROOT_URLCONF = __name__
urlpatterns: list[Any] = []
