"""Settings come from the environment; a bad value stops start-up with a clear ImproperlyConfigured."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import redis as redis_lib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ingestor_site.embedded import redis_url_database
from ingestor_site.settings import (
    DEVELOPMENT_SECRET_KEY,
    database_from_url,
    env_bool,
    env_int,
    env_list,
    env_str,
    redis_url_with_options,
)

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


def test_env_str_and_env_list_treat_an_empty_value_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # docker-compose.yml passes every variable through as `${NAME:-}`: empty must mean the default.
    monkeypatch.setenv(NAME, "")
    assert env_str(NAME, "fallback") == "fallback"
    assert env_list(NAME, "a,b") == ["a", "b"]


def test_database_from_url_reads_every_part() -> None:
    config = database_from_url("postgres://ingest%40ops:p%3Ass%2Fw@db.internal:6543/chat%20log")
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["USER"], config["PASSWORD"]) == ("ingest@ops", "p:ss/w")
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("db.internal", "6543", "chat log")


def test_database_from_url_fills_in_defaults() -> None:
    config = database_from_url("postgresql://localhost")
    assert (config["USER"], config["PASSWORD"], config["PORT"], config["NAME"]) == ("", "", "", "postgres")
    assert config["HOST"] == "localhost"
    assert config["OPTIONS"]["connect_timeout"] == 5


def test_database_from_url_passes_query_options_to_libpq() -> None:
    config = database_from_url(
        "postgres://u:p@db.internal:5432/ingestor?sslmode=require&sslrootcert=/etc/ssl/ca.pem"
        "&application_name=ingestor&connect_timeout=10"
    )
    options = config["OPTIONS"]
    assert options["sslmode"] == "require"
    assert options["sslrootcert"] == "/etc/ssl/ca.pem"
    assert options["application_name"] == "ingestor"
    # The URL's own value wins over the default.
    assert options["connect_timeout"] == 10
    assert options["pool"]["max_size"] >= 1


def test_database_from_url_reads_a_unix_socket_host() -> None:
    config = database_from_url("postgres://%2Fvar%2Frun%2Fpostgresql/ingestor")
    assert (config["HOST"], config["NAME"]) == ("/var/run/postgresql", "ingestor")


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


@pytest.mark.parametrize(
    "url",
    ["mysql://u:secret@h/db", "sqlite:///db.sqlite3", "postgis://u@h/db", "h:5432/db", "", "db.internal"],
)
def test_database_from_url_refuses_anything_but_postgres(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL") as error:
        database_from_url(url)
    assert "secret" not in str(error.value)


def test_database_from_url_refuses_a_malformed_url_without_repeating_it() -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL") as error:
        database_from_url("postgres://u:secret@h:port/db")
    assert "secret" not in str(error.value)


def run_settings(env: dict[str, str], code: str = "pass") -> subprocess.CompletedProcess[str]:
    """Load the real settings module (django.setup()) in a fresh interpreter, then run `code`."""
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup()\n{code}"],
        env={**env, "DJANGO_SETTINGS_MODULE": "ingestor_site.settings"},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db
def test_database_url_query_options_reach_the_real_server() -> None:
    from tests.conftest import subprocess_database_url

    url = subprocess_database_url()
    show = "from django.db import connection\nwith connection.cursor() as c:\n"
    show += "    c.execute('SHOW application_name'); print(c.fetchone()[0])\n"
    show += "    c.execute('SHOW statement_timeout'); print(c.fetchone()[0])"
    options = "?application_name=ingestor-probe&options=-c%20statement_timeout%3D4321"
    result = run_settings({**os.environ, "DATABASE_URL": url + options}, show)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ingestor-probe", "4321ms"]

    # The test server speaks no TLS: a URL that requires it must fail, not silently connect in clear.
    insist = {**os.environ, "DATABASE_URL": url + "?sslmode=require", "DATABASE_POOL_TIMEOUT": "1"}
    result = run_settings(insist, show)
    assert result.returncode != 0
    assert "server does not support SSL, but SSL was required" in result.stderr


def test_redis_url_with_options_keeps_the_scheme_credentials_and_query() -> None:
    url = redis_url_with_options(
        "rediss://:p%40ss@cache.internal:6380/2?ssl_cert_reqs=none&socket_timeout=3",
        socket_timeout=1.0,
        health_check_interval=30,
    )
    assert url.startswith("rediss://:p%40ss@cache.internal:6380/2?")
    assert "ssl_cert_reqs=none" in url
    assert "socket_timeout=3" in url  # the URL's own value wins
    assert "health_check_interval=30" in url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@127.0.0.1:6380/0", "redis://:pw@127.0.0.1:6380/3"),
        ("unix:///run/ingestor/redis.sock?db=0", "unix:///run/ingestor/redis.sock?db=3"),
        ("unix:///run/ingestor/redis.sock", "unix:///run/ingestor/redis.sock?db=3"),
    ],
)
def test_a_redis_url_names_another_database_in_either_form(url: str, expected: str) -> None:
    """How the benchmarks give each of two stacks a database of one Redis."""
    assert redis_url_database(url, 3) == expected


def test_redis_url_with_options_keeps_a_unix_sockets_path() -> None:
    url = redis_url_with_options("unix:///run/ingestor/redis.sock?db=3", socket_timeout=1.0)
    assert url == "unix:///run/ingestor/redis.sock?db=3&socket_timeout=1.0"
    assert (
        redis_lib.Redis.from_url(url).connection_pool.connection_kwargs["path"] == "/run/ingestor/redis.sock"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("BATCH_SIZE", "0"), ("BATCH_SIZE", "many"), ("DEBUG", "maybe"), ("INGEST_MAX_BODY_BYTES", "10"),
     ("DATABASE_URL", "mysql://u@h/db"), ("INGEST_RATE_LIMIT", "lots"), ("SIMULATE_RATE_LIMIT", "5 a day"),
     ("SECURE_PROXY_SSL_HEADER", "https"), ("SECURE_HSTS_SECONDS", "-1")],
)  # fmt: skip
def test_a_bad_environment_variable_stops_start_up(variable: str, value: str) -> None:
    result = run_settings({**os.environ, variable: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr


def test_the_default_rate_limits_parse_and_load_no_limits_library_at_start_up() -> None:
    """env_rate takes its defaults unchecked, so that no process loads `limits` for them."""
    from limits import parse

    env = {key: value for key, value in os.environ.items() if not key.endswith("_RATE_LIMIT")}
    code = (
        "import json, sys; from django.conf import settings; import ingestor_site.asgi\n"
        "print(json.dumps([settings.INGEST_RATE_LIMIT, settings.SIMULATE_RATE_LIMIT, 'limits' in sys.modules]))"
    )
    result = run_settings(env, code)
    assert result.returncode == 0, result.stderr
    ingest, simulate, limits_loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert ingest == ""
    assert parse(simulate).amount > 0
    assert not limits_loaded


def deployment_env() -> dict[str, str]:
    """This process's environment as a deployment would have it: no SECRET_KEY, not local."""
    env = {key: value for key, value in os.environ.items() if key not in {"SECRET_KEY", "DEBUG"}}
    return {**env, "INGESTOR_LOCAL": "false"}


def test_a_deployment_without_secret_key_refuses_to_start_with_one_clear_line() -> None:
    result = run_settings(deployment_env())
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured: SECRET_KEY is not set")


def test_a_deployment_runs_with_its_own_secret_key() -> None:
    result = run_settings(
        {**deployment_env(), "SECRET_KEY": "a-long-random-deployment-key"},
        "from django.conf import settings; print(settings.SECRET_KEY)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "a-long-random-deployment-key"


PRODUCTION = {
    "SECRET_KEY": "k7Qv-production-like-key-with-enough-length-and-variety-9XzP2mWc4rTt",
    "ALLOWED_HOSTS": "ingest.example.com",
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "SECURE_COOKIES": "true",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
}


def test_check_deploy_is_clean_with_production_settings_from_the_environment() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env={**deployment_env(), **PRODUCTION},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_flags_a_deployment_left_on_the_plain_http_defaults() -> None:
    env = {**deployment_env(), "SECRET_KEY": PRODUCTION["SECRET_KEY"]}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr + result.stdout


def test_the_proxy_ssl_header_is_read_as_header_and_value() -> None:
    result = run_settings(
        {**deployment_env(), **PRODUCTION},
        "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')"


@pytest.mark.parametrize("local", [{"INGESTOR_LOCAL": "true"}, {"DEBUG": "true"}])
def test_a_local_run_falls_back_to_the_development_key(local: dict[str, str]) -> None:
    result = run_settings(
        {**deployment_env(), **local}, "from django.conf import settings; print(settings.SECRET_KEY)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == DEVELOPMENT_SECRET_KEY


def test_manage_py_in_a_checkout_is_a_local_run() -> None:
    env = {key: value for key, value in deployment_env().items() if key != "INGESTOR_LOCAL"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # ... unless told otherwise, as the Docker image does.
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={**env, "INGESTOR_LOCAL": "false"},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files: the certificate is its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "redis.crt", folder / "redis.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_redis(redis_client: redis_lib.Redis, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS-only door to the test Redis (a terminating proxy, as a managed Redis's TLS endpoint
    is): (its port, the CA certificate that verifies it). A client that does not speak TLS fails."""
    cert_path, key_path = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    upstream = urlsplit(settings.REDIS_URL)
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(upstream.hostname, upstream.port)
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    server = loop.run_until_complete(asyncio.start_server(relay, "127.0.0.1", 0, ssl=context))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port, cert_path
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


# Every Redis client the app makes from REDIS_URL: the rq queue (API and workers), the channel
# layer (dashboard websockets) and the dashboard's own asyncio client.
EVERY_REDIS_CLIENT = """
import asyncio
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from redis.asyncio import Redis as AsyncRedis
from messages_app.services import ingest_queue

print("queue", ingest_queue().connection.ping())
layer = get_channel_layer()

async def layer_round_trip():
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "probe"})
    return (await layer.receive(channel))["type"]

print("layer", async_to_sync(layer_round_trip)())

async def async_ping():
    client = AsyncRedis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        return await client.ping()
    finally:
        await client.aclose()

print("async", asyncio.run(async_ping()))
"""


def test_every_redis_client_speaks_tls_with_a_rediss_url(tls_redis: tuple[int, Path]) -> None:
    port, ca_path = tls_redis
    db = urlsplit(settings.REDIS_URL).path.lstrip("/") or "0"
    url = f"rediss://127.0.0.1:{port}/{db}?ssl_ca_certs={quote(str(ca_path))}"
    result = run_settings({**os.environ, "REDIS_URL": url}, EVERY_REDIS_CLIENT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["queue", "True", "layer", "probe", "async", "True"]

    # The options in the URL are what made it work: without the CA, the certificate is refused...
    result = run_settings({**os.environ, "REDIS_URL": f"rediss://127.0.0.1:{port}/{db}"}, EVERY_REDIS_CLIENT)
    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    # ... unless the URL turns verification off (the rq queue's own default asks for it).
    url = f"rediss://127.0.0.1:{port}/{db}?ssl_cert_reqs=none"
    result = run_settings({**os.environ, "REDIS_URL": url}, EVERY_REDIS_CLIENT)
    assert result.returncode == 0, result.stderr
