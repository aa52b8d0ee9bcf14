from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis as redis_lib
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from ingestor_site.embedded import EmbeddedPostgres
from tests.livestack import BASE_DIR, MANAGE, LiveStack

OUTPUT_DIR = Path(__file__).resolve().parent.parent / "test-output"


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """A folder for this test's logs and screenshots, kept after the run (git-ignored)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-120:]
    path = OUTPUT_DIR / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def redis_client() -> Iterator[redis_lib.Redis]:
    """The configured Redis database, empty before and after the test."""
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def subprocess_database_url() -> str:
    """DATABASE_URL of the test database pytest-django created, for server subprocesses."""
    db = connection.settings_dict
    auth = quote(db["USER"] or "")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"])
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def live_stack(
    transactional_db: None, redis_client: redis_lib.Redis, output_dir: Path
) -> Iterator[LiveStack]:
    """The real web server and one real rq worker, against the test database and Redis."""
    stack = LiveStack(
        database_url=subprocess_database_url(), redis_url=settings.REDIS_URL, log_dir=output_dir
    )
    try:
        stack.web_start()
        stack.worker_start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session", autouse=True)
def cpu_yield_off() -> Iterator[None]:
    """Batchers run in the test process too, whose session is the test runner's, not a web
    server's (messages_app/cpu_yield.py). The servers the tests start keep the setting."""
    with override_settings(INGEST_YIELD_NICE=0):
        yield


@pytest.fixture(scope="session", autouse=True)
def collected_static() -> None:
    """Static files collected as `make run` does: pages link the hashed names of the manifest and
    the web server serves the collected files, as in production (without a manifest, pages link
    plain names that WhiteNoise serves from the app folders: tests/test_manage_commands.py)."""
    call_command("collectstatic", "--noinput", verbosity=0)


def migrate(database_url: str) -> None:
    """`manage.py migrate` against `database_url`, as a deployment runs it."""
    subprocess.run(
        [sys.executable, MANAGE, "migrate", "--no-input", "-v", "0"],
        env={**os.environ, "DATABASE_URL": database_url},
        cwd=BASE_DIR,
        check=True,
        timeout=120,
    )


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of the test's own, migrated, that the test may stop."""
    postgres = EmbeddedPostgres(tmp_path / "postgres", database="ingestor")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        postgres.start()
    try:
        migrate(postgres.url)
        yield postgres
    finally:
        postgres.stop()
