"""Settings come from the environment; a bad value stops start-up with a clear ImproperlyConfigured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from ingestor_site.settings import database_from_url, env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
NAME = "INGESTOR_TEST_SETTING"


@pytest.mark.parametrize("raw", ["abc", "1.5", "10k", "0x10", " "])
def test_env_int_refuses_a_value_that_is_not_an_integer(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(ImproperlyConfigured, match=NAME):
        env_int(NAME, 5)


def test_env_int_enforces_its_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NAME, "0")
    with pytest.raises(ImproperlyConfigured, match=">= 1"):
        env_int(NAME, 5, minimum=1)
    monkeypatch.setenv(NAME, "10001")
    with pytest.raises(ImproperlyConfigured, match="<= 10000"):
        env_int(NAME, 5, maximum=10_000)
    monkeypatch.setenv(NAME, "10000")
    assert env_int(NAME, 5, minimum=1, maximum=10_000) == 10_000


def test_env_int_reads_a_value_or_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NAME, raising=False)
    assert env_int(NAME, 5) == 5
    monkeypatch.setenv(NAME, "")
    assert env_int(NAME, 5) == 5
    monkeypatch.setenv(NAME, " 42 ")
    assert env_int(NAME, 5) == 42
    monkeypatch.setenv(NAME, "-3")
    assert env_int(NAME, 5) == -3


@pytest.mark.parametrize("raw", ["maybe", "2", "yes please", "enabled", "tru"])
def test_env_bool_refuses_an_unknown_word(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(ImproperlyConfigured, match=NAME):
        env_bool(NAME, False)


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("TRUE", True), (" yes ", True), ("on", True),
     ("0", False), ("false", False), ("No", False), ("off", False)],
)  # fmt: skip
def test_env_bool_reads_the_usual_words(monkeypatch: pytest.MonkeyPatch, raw: str, value: bool) -> None:
    monkeypatch.setenv(NAME, raw)
    assert env_bool(NAME, not value) is value


def test_env_bool_falls_back_to_the_default_when_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NAME, raising=False)
    assert env_bool(NAME, True) is True
    monkeypatch.setenv(NAME, "")
    assert env_bool(NAME, False) is False


def test_env_str_and_env_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NAME, raising=False)
    assert env_str(NAME, "fallback") == "fallback"
    assert env_list(NAME, "a, b") == ["a", "b"]
    monkeypatch.setenv(NAME, " key-1 ,, key-2 ,")
    assert env_list(NAME, "") == ["key-1", "key-2"]


def test_database_from_url_reads_every_part() -> None:
    config = database_from_url("postgres://ingest%40ops:p%3Ass%2Fw@db.internal:6543/chat%20log")
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["USER"], config["PASSWORD"]) == ("ingest@ops", "p:ss/w")
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("db.internal", "6543", "chat log")


def test_database_from_url_fills_in_defaults() -> None:
    config = database_from_url("postgresql://localhost")
    assert (config["USER"], config["PASSWORD"], config["PORT"], config["NAME"]) == ("", "", "", "postgres")
    assert config["HOST"] == "localhost"


def test_database_from_url_uses_a_bounded_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOL_SIZE", "3")
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", "4")
    config = database_from_url("postgres://u@h/db")
    # Django refuses persistent connections together with its pool.
    assert config["CONN_MAX_AGE"] == 0
    options = config["OPTIONS"]
    assert isinstance(options, dict)
    assert options["pool"]["max_size"] == 3
    assert options["pool"]["timeout"] == 4
    monkeypatch.setenv("DATABASE_POOL_SIZE", "0")
    with pytest.raises(ImproperlyConfigured, match="DATABASE_POOL_SIZE"):
        database_from_url("postgres://u@h/db")


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite:///db.sqlite3", "h:5432/db", ""])
def test_database_from_url_refuses_anything_but_postgres(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        database_from_url(url)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("BATCH_SIZE", "0"), ("BATCH_SIZE", "many"), ("DEBUG", "maybe"), ("INGEST_MAX_BODY_BYTES", "10"),
     ("DATABASE_URL", "mysql://u@h/db")],
)  # fmt: skip
def test_a_bad_environment_variable_stops_start_up(variable: str, value: str) -> None:
    env = {**os.environ, variable: value, "DJANGO_SETTINGS_MODULE": "ingestor_site.settings"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr
