"""Settings for the ingestor, driven by environment variables.

Every variable has a safe default for local use; a bad value raises ImproperlyConfigured at
start-up instead of surfacing later as a confusing runtime error.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

from telemetry import sentinel as redis_sentinel

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


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


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def database_from_url(url: str) -> dict[str, object]:
    """Translate postgres://user:pass@host:port/name into Django's DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(f"DATABASE_URL must start with postgres://, got {url!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # psycopg 3's pool: async views and workers share a few connections instead of opening
        # one per concurrent request (64 concurrent requests opened 57 connections without it).
        "CONN_MAX_AGE": 0,
        "OPTIONS": {
            "pool": {
                "min_size": 1,
                "max_size": env_int("DATABASE_POOL_SIZE", 8, minimum=1),
                # Seconds a query waits for a connection before failing: with PostgreSQL down,
                # the API answers 503 and a job goes back for retry after this, not later.
                "timeout": env_int("DATABASE_POOL_TIMEOUT", 3, minimum=1),
            },
            "connect_timeout": 5,
        },
    }


DEBUG = env_bool("DEBUG", False)
# A fixed development key keeps sessions valid across restarts of `make run`; deployments set
# SECRET_KEY (docker-compose.yml refuses to start without it).
SECRET_KEY = env_str("SECRET_KEY", "") or "insecure-local-development-key-set-SECRET_KEY-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    # Listed before django_rq so that its `rqworker` command (JSON serializer, our worker class)
    # replaces django-rq's, which defaults to pickle and fails every JSON job.
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
    return urlunsplit(parts._replace(query=urlencode(query)))


RQ_QUEUES = {
    "ingest": {
        "URL": redis_url_with_options(
            REDIS_URL,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
            health_check_interval=30,
        ),
        "DEFAULT_TIMEOUT": 60,
        "SERIALIZER": "rq.serializers.JSONSerializer",
    },
}
RQ_SHOW_ADMIN_LINK = True

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
INGEST_MAX_BACKLOG = env_int("INGEST_MAX_BACKLOG", 1_000_000, minimum=1)
INGEST_API_KEYS = frozenset(env_list("INGEST_API_KEYS", ""))
INGEST_MAX_BODY_BYTES = env_int("INGEST_MAX_BODY_BYTES", 1_048_576, minimum=1024)
INGEST_MAX_BATCH_ITEMS = env_int("INGEST_MAX_BATCH_ITEMS", 1000, minimum=1, maximum=10_000)
INGEST_JOB_TIMEOUT = env_int("INGEST_JOB_TIMEOUT", 20, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = INGEST_MAX_BODY_BYTES

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

RQ = {"WORKER_CLASS": "messages_app.worker.IngestWorker"}
