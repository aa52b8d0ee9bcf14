"""Reaching Redis through Sentinel (the settings' parts) and waiting for replicas after a write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis as redis_lib

from telemetry.connection import ReplicasBehind, replicated_pipeline
from telemetry.sentinel import SentinelTarget, sentinels_parse, url_auth


def test_sentinels_parse_reads_hosts_ports_and_the_default_port() -> None:
    assert sentinels_parse("10.0.0.1:26380, sentinel-b , [::1]:5000,") == [
        ("10.0.0.1", 26380),
        ("sentinel-b", 26379),
        ("::1", 5000),
    ]
    assert sentinels_parse("") == []


@pytest.mark.parametrize("raw", ["host:port", "host:", ":26379", "host:70000"])
def test_sentinels_parse_refuses_a_malformed_address(raw: str) -> None:
    with pytest.raises(ValueError, match="not a sentinel address"):
        sentinels_parse(raw)


def test_a_malformed_redis_sentinels_stops_the_start_up_naming_the_variable() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "ingestor_site.settings",
        "REDIS_SENTINELS": "s1:26379,s2:x",
    }
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured: REDIS_SENTINELS: not a sentinel address" in result.stderr.decode()


def test_a_sentinel_managed_client_keeps_only_database_and_credentials_of_redis_url() -> None:
    assert url_auth("redis://user:secret@ignored-host:1234/5") == {
        "db": 5,
        "username": "user",
        "password": "secret",
    }
    target = SentinelTarget(
        url="redis://:pw@x/2",
        sentinels=[("s1", 26379)],
        master_name="m",
        socket_timeout=1.0,
        connect_timeout=0.5,
    )
    queue = target.rq_queue_options()
    assert (queue["SENTINELS"], queue["MASTER_NAME"], queue["DB"], queue["PASSWORD"]) == (
        [("s1", 26379)],
        "m",
        2,
        "pw",
    )
    layer = target.channel_layer_host()
    assert (layer["master_name"], layer["db"], layer["socket_timeout"]) == ("m", 2, None)


def test_write_confirmed_by_no_replica_raises_replicas_behind_after_it_is_applied(
    redis_client: redis_lib.Redis,
) -> None:
    # The test Redis has no replica: WAIT gives up after its timeout with 0 confirmations.
    with (
        pytest.raises(ReplicasBehind, match="0 of 1 replicas"),
        replicated_pipeline(redis_client, min_replicas=1, timeout_ms=50) as pipe,
    ):
        pipe.incrby("counter", 3)
        pipe.execute()
    # The master applied it all the same: a retry by id makes no duplicate, a 503 is honest.
    assert redis_client.get("counter") == b"3"
    # The leased connection went back to the pool in a usable state.
    assert redis_client.ping()


def test_without_required_replicas_the_pipeline_is_a_plain_transaction(redis_client: redis_lib.Redis) -> None:
    with replicated_pipeline(redis_client, min_replicas=0, timeout_ms=50) as pipe:
        pipe.incrby("counter", 2)
        pipe.get("counter")
        assert pipe.execute() == [2, b"2"]
