"""Settings for the ingestor, driven by environment variables.

Every variable has a safe default for local use; a bad value raises ImproperlyConfigured at
start-up instead of surfacing later as a confusing runtime error.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from telemetry import sentinel as redis_sentinel

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    """The variable's value; unset or empty gives `default`, as for the other helpers, so a
    deployment can pass every variable through (`NAME: ${NAME:-}`) without overriding defaults."""
    return os.environ.get(name) or default


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} must be <= {maximum}, got {value}")
    return value


def env_duration(name: str, default: str, *, minimum: timedelta | None = None) -> timedelta:
    """A duration such as `30d`, `12h`, `90m` or `0` (seconds when there is no unit)."""
    raw = (os.environ.get(name) or default).strip().lower()
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in units else (raw, "s")
    try:
        value = timedelta(seconds=int(number) * units[unit])
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a duration like 30d, 12h or 0, got {raw!r}") from exc
    if value < timedelta(0) or (minimum is not None and value and value < minimum):
        raise ImproperlyConfigured(f"{name} must be 0 or at least {minimum}, got {raw!r}")
    return value


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def database_from_url(url: str) -> dict[str, Any]:
    """Django's DATABASES entry for postgres://user:pass@host:port/name?option=value.

    dj-database-url parses it; every query option (sslmode, sslrootcert, options, application_name,
    target_session_attrs...) reaches libpq as a connection parameter.
    """
    # The error never repeats the URL: it may carry a password into a log.
    scheme = url.partition(":")[0] if ":" in url else ""
    if scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(f"DATABASE_URL must start with postgres://, got {scheme or 'no'} scheme")
    try:
        config: dict[str, Any] = dict(dj_database_url.parse(url))
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid URL: {exc}") from None
    # libpq would default to the user's name; Django insists on a NAME (or a service file entry).
    config["NAME"] = config["NAME"] or "postgres"
    config["PORT"] = str(config["PORT"] or "")
    # psycopg 3's pool: async views and workers share a few connections instead of opening one per
    # concurrent request (64 concurrent requests opened 57 connections without it). Django refuses
    # persistent connections together with its pool.
    config["CONN_MAX_AGE"] = 0
    options: dict[str, Any] = config.setdefault("OPTIONS", {})
    options["pool"] = {
        "min_size": 1,
        "max_size": env_int("DATABASE_POOL_SIZE", 8, minimum=1),
        # Seconds a query waits for a connection before failing: with PostgreSQL down, the API
        # answers 503 and a job goes back for retry after this, not later.
        "timeout": env_int("DATABASE_POOL_TIMEOUT", 3, minimum=1),
    }
    options.setdefault("connect_timeout", 5)
    return config


# Local runs (`make run`, `make test`, `manage.py` in a checkout) set INGESTOR_LOCAL; the Docker
# image sets it false. Only there, or with DEBUG on, may the fixed development key stand in.
LOCAL_RUN = env_bool("INGESTOR_LOCAL", False)
DEVELOPMENT_SECRET_KEY = "insecure-local-development-key-set-SECRET_KEY-in-production"  # noqa: S105


def secret_key_from_env(*, debug: bool, local: bool) -> str:
    """SECRET_KEY, or the development key for a local run; anything else is refused at start-up."""
    key = env_str("SECRET_KEY", "")
    if key:
        return key
    if debug or local:
        # A fixed key keeps sessions valid across restarts of `make run`.
        return DEVELOPMENT_SECRET_KEY
    raise ImproperlyConfigured(
        "SECRET_KEY is not set: give it a long random value (python -c 'import secrets; "
        "print(secrets.token_urlsafe(50))'); only local runs (INGESTOR_LOCAL=true or DEBUG=true) "
        "fall back to a development key"
    )


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = secret_key_from_env(debug=DEBUG, local=LOCAL_RUN)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# No "daphne": its app would load Twisted into every process; messages_app's `runserver` is
# daphne's command, loaded by that command alone.
INSTALLED_APPS = [
    # Listed before django_rq so that its `rqworker` command (JSON serializer, our worker class)
    # replaces django-rq's, which defaults to pickle and fails every JSON job; and before
    # staticfiles and WhiteNoise so that its `runserver` (daphne's) replaces theirs.
    "messages_app",
    "metrics_app",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_rq",
    "django_htmx",
    "template_partials",
]

# The ingest API bypasses this stack entirely (see ingestor_site/asgi.py): Django's sync-only
# middleware costs ~14 thread hops a request, more than half the throughput of a bare view.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "ingestor_site.urls"
# JSON for the JSON doors behind CSRF (/simulate, /reset); Django's page for the admin.
CSRF_FAILURE_VIEW = "ingestor_site.views.csrf_failure"
ASGI_APPLICATION = "ingestor_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ingestor")
DATABASES = {"default": database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
# Short timeouts: with Redis gone the API must answer 503 within a second, not hang. A stopped
# Redis refuses at once; a frozen one is given up on after the socket timeout. (rq's worker
# raises its own connection's timeout above its blocking dequeue, so this limits the API only.)
REDIS_SOCKET_TIMEOUT = 1.0
REDIS_CONNECT_TIMEOUT = 0.5


def redis_url_with_options(url: str, **options: float) -> str:
    """`url` with redis-py connection options in its query string, unless the URL sets them.

    django-rq ignores CONNECTION_KWARGS for a queue configured by URL, so the timeouts go here;
    without them a frozen or unreachable Redis held POST /messages for redis-py's default 5 s.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for name, value in options.items():
        query.setdefault(name, str(value))
    # Not urlunsplit: it drops the empty host of a Unix socket's `unix:///path`.
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"


RQ_QUEUES = {
    "ingest": {
        "URL": redis_url_with_options(
            REDIS_URL,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
            health_check_interval=30,
        ),
        "DEFAULT_TIMEOUT": 60,
        "SERIALIZER": "messages_app.serializers.JSONSerializer",
    },
}
RQ_SHOW_ADMIN_LINK = True

# Dashboard sockets (WS /ws/stats) one web process serves; past it a new socket is accepted and
# closed at once with code 1013 (try again later). Each open one holds about 190 KB (README).
DASHBOARD_MAX_SOCKETS = env_int("DASHBOARD_MAX_SOCKETS", 1000, minimum=1)

# The dashboard's sockets use no channel layer (each process fans its frames out in memory);
# the layer stays configured for any other consumer.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py 8 sets a 5 s socket timeout by default, and channels-redis then drops an idle
            # websocket after ~5 s (channels_redis#422): no read timeout on the layer's sockets.
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "capacity": 1500,
            "expiry": 10,
        },
    },
}

# Redis behind Sentinel (high availability). With REDIS_SENTINELS set, every Redis client (the
# API's queue and metrics, the rq workers, the Channels layer, the dashboard) asks these sentinels
# for the current master of REDIS_MASTER_NAME; REDIS_URL then gives only the database number and
# the credentials.
try:
    REDIS_SENTINELS = redis_sentinel.sentinels_parse(env_str("REDIS_SENTINELS", ""))
except ValueError as exc:
    raise ImproperlyConfigured(f"REDIS_SENTINELS: {exc}") from exc
REDIS_MASTER_NAME = env_str("REDIS_MASTER_NAME", "mymaster")
if REDIS_SENTINELS:
    _sentinel_target = redis_sentinel.SentinelTarget(
        url=REDIS_URL,
        sentinels=REDIS_SENTINELS,
        master_name=REDIS_MASTER_NAME,
        socket_timeout=REDIS_SOCKET_TIMEOUT,
        connect_timeout=REDIS_CONNECT_TIMEOUT,
    )
    RQ_QUEUES["ingest"] = {
        **{key: value for key, value in RQ_QUEUES["ingest"].items() if key != "URL"},
        **_sentinel_target.rq_queue_options(),
    }
    CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [_sentinel_target.channel_layer_host()]  # type: ignore[index]

# Replicas that must confirm a batch (Redis WAIT) before the API answers 201. Replication is
# asynchronous: with 0, a master that dies right after answering can lose the last batches it
# acknowledged; with 1 they are on a replica Sentinel can promote, for one round trip more a batch.
INGEST_REDIS_MIN_REPLICAS = env_int("INGEST_REDIS_MIN_REPLICAS", 0, minimum=0)
INGEST_REDIS_REPLICA_TIMEOUT_MS = env_int("INGEST_REDIS_REPLICA_TIMEOUT_MS", 500, minimum=1)

# The ingest pipeline.
BATCH_SIZE = env_int("BATCH_SIZE", 1000, minimum=1, maximum=10_000)
BATCH_LINGER_MS = env_int("BATCH_LINGER_MS", 5, minimum=0, maximum=10_000)
# How long a flush that is all its web process has to do waits for Redis's reply without
# sleeping (0: it sleeps at once). Waking a sleeping core costs more than the round trip here.
BATCH_REPLY_SPIN_US = env_int("BATCH_REPLY_SPIN_US", 200, minimum=0, maximum=10_000)
# How long a worker's job of a few messages waits for more when a few small jobs are queued behind
# it (messages_app/jobs.py; 0: never): bigger transactions under a stream of single messages.
WORKER_LINGER_MS = env_int("WORKER_LINGER_MS", 20, minimum=0, maximum=1_000)
INGEST_MAX_BACKLOG = env_int("INGEST_MAX_BACKLOG", 1_000_000, minimum=1)
# The nice value the web server's session takes while the backlog is a tenth of
# INGEST_MAX_BACKLOG or more, leaving the cores to the workers and PostgreSQL
# (messages_app/cpu_yield.py; 0: never).
INGEST_YIELD_NICE = env_int("INGEST_YIELD_NICE", 10, minimum=0, maximum=19)
INGEST_API_KEYS = frozenset(env_list("INGEST_API_KEYS", ""))
INGEST_MAX_BODY_BYTES = env_int("INGEST_MAX_BODY_BYTES", 1_048_576, minimum=1024)
# A body that has not all arrived by then (trickled byte by byte) is refused with 408.
INGEST_BODY_TIMEOUT_S = env_int("INGEST_BODY_TIMEOUT_S", 10, minimum=1)
# How long a client `id` stays bound to its message's content: a reuse with other content
# within it is refused (409); past it, only the row's uniqueness remains (the first content stays).
INGEST_IDEMPOTENCY_WINDOW_S = env_int("INGEST_IDEMPOTENCY_WINDOW_S", 3600, minimum=1)


def env_rate(name: str, default: str) -> str:
    """A rate limit as `limits` writes it ("100/second", "6000 per minute"); empty: no limit."""
    value = env_str(name, default).strip()
    if value.lower() in {"", "off", "none", "0"}:
        return ""
    if value == default:
        # Known good (tests/test_settings.py parses each default): `limits` and what it imports,
        # ~1.5 MB in every web process and worker, load only where a limit is used or set.
        return value
    from limits import parse

    try:
        parse(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a rate such as 100/second, got {value!r}") from exc
    return value


# Requests per API key (per client address without keys) on POST /messages and /messages/batch,
# counted across all web processes in Redis; off by default (README, Operations, says why).
INGEST_RATE_LIMIT = env_rate("INGEST_RATE_LIMIT", "")
# /simulate queues up to 10,000 messages a request: limited per client address whatever the keys.
SIMULATE_RATE_LIMIT = env_rate("SIMULATE_RATE_LIMIT", "6/minute")
INGEST_MAX_BATCH_ITEMS = env_int("INGEST_MAX_BATCH_ITEMS", 1000, minimum=1, maximum=10_000)
INGEST_JOB_TIMEOUT = env_int("INGEST_JOB_TIMEOUT", 20, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = INGEST_MAX_BODY_BYTES

# Storage: `messages` is partitioned by the time in its UUIDv7 ids (messages_app/partitions.py).
MESSAGE_PARTITION_INTERVAL = env_duration("MESSAGE_PARTITION_INTERVAL", "1d", minimum=timedelta(hours=1))
if not MESSAGE_PARTITION_INTERVAL or MESSAGE_PARTITION_INTERVAL % timedelta(hours=1):
    raise ImproperlyConfigured("MESSAGE_PARTITION_INTERVAL must be whole hours, like 1d or 6h")
MESSAGE_PARTITIONS_AHEAD = env_int("MESSAGE_PARTITIONS_AHEAD", 3, minimum=1, maximum=366)
# Partitions (and dead letters) older than this are dropped; 0 keeps everything.
MESSAGE_RETENTION = env_duration("MESSAGE_RETENTION", "0", minimum=timedelta(hours=1))

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOGIN_URL = "admin:login"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "rq.worker": {"level": env_str("LOG_LEVEL", "INFO")},
    },
}

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- HTTPS in production: off for local runs over plain HTTP, each settable from the environment
# (`manage.py check --deploy` is clean with them on: tests/test_settings.py).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)


def proxy_ssl_header_from_env() -> tuple[str, str] | None:
    """`SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https"`: the header (set by a proxy that
    strips it from clients) and value that mark a request as having arrived over HTTPS."""
    raw = env_str("SECURE_PROXY_SSL_HEADER", "")
    if not raw:
        return None
    name, separator, value = raw.partition(":")
    if not separator or not name.strip() or not value.strip():
        raise ImproperlyConfigured(f"SECURE_PROXY_SSL_HEADER must be 'Header-Name: value', got {raw!r}")
    return "HTTP_" + name.strip().upper().replace("-", "_"), value.strip()


SECURE_PROXY_SSL_HEADER = proxy_ssl_header_from_env()

RQ = {"WORKER_CLASS": "messages_app.worker.IngestWorker"}

# --- Local commands from a fresh clone ---------------------------------------------------------
# `manage.py runserver` works before any `collectstatic`: pages link the plain file names and
# WhiteNoise serves them from the app folders; once collected, the hashed files as in production.
STORAGES["staticfiles"] = {"BACKEND": "ingestor_site.staticfiles.ManifestWhenCollectedStorage"}
WHITENOISE_USE_FINDERS = not (STATIC_ROOT / "staticfiles.json").exists()
