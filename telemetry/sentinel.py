"""Redis behind Sentinel: how each kind of client is told to ask the sentinels for the master.

With REDIS_SENTINELS set, no client connects to a fixed address: each asks the sentinels for the
current master of REDIS_MASTER_NAME when it opens a connection, so after a failover new
connections reach the promoted replica. REDIS_URL then supplies only the database number and the
credentials (its host and port are not used).

Pure functions of setting values, no Django: the settings module builds django-rq's queue and
the Channels layer configuration from them, and `telemetry.connection` its clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.connection import parse_url

SENTINEL_DEFAULT_PORT = 26379


def sentinels_parse(text: str) -> list[tuple[str, int]]:
    """'host:port,host:port' (the port defaults to 26379) -> [(host, port), ...]; ValueError if malformed."""
    sentinels: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, _, port = item.rpartition(":") if ":" in item else (item, "", str(SENTINEL_DEFAULT_PORT))
        host = host.strip("[]")  # an IPv6 address written [::1]:26379
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not a sentinel address (host:port): {item!r}")
        sentinels.append((host, int(port)))
    return sentinels


def url_auth(url: str) -> dict[str, Any]:
    """The database number and credentials REDIS_URL names (what a sentinel-managed client keeps of it)."""
    options = parse_url(url)  # type: ignore[no-untyped-call]
    auth: dict[str, Any] = {"db": int(options.get("db") or 0)}
    for name in ("username", "password"):
        if options.get(name):
            auth[name] = options[name]
    return auth


def sentinel_client_options(*, socket_timeout: float, connect_timeout: float) -> dict[str, Any]:
    """Options of the clients that talk to the sentinels themselves.

    redis-py gives them no timeout by default: a sentinel host that stopped answering would hold
    every new connection (and so the API's answer) instead of moving on to the next sentinel.
    """
    return {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}


@dataclass(frozen=True)
class SentinelTarget:
    """Where the master is to be found, and the timeouts every client of it uses."""

    url: str
    sentinels: list[tuple[str, int]]
    master_name: str
    socket_timeout: float
    connect_timeout: float

    def sentinel_options(self) -> dict[str, Any]:
        return sentinel_client_options(
            socket_timeout=self.socket_timeout, connect_timeout=self.connect_timeout
        )

    def rq_queue_options(self) -> dict[str, Any]:
        """The connection keys of a django-rq RQ_QUEUES entry (in place of URL): the workers' client."""
        auth = url_auth(self.url)
        return {
            "SENTINELS": self.sentinels,
            "MASTER_NAME": self.master_name,
            "DB": auth["db"],
            "USERNAME": auth.get("username"),
            "PASSWORD": auth.get("password"),
            "SOCKET_TIMEOUT": self.socket_timeout,
            "CONNECTION_KWARGS": {
                "socket_connect_timeout": self.connect_timeout,
                "health_check_interval": 30,
            },
            "SENTINEL_KWARGS": self.sentinel_options(),
        }

    def channel_layer_host(self) -> dict[str, Any]:
        """A channels-redis `hosts` entry that finds the master through the sentinels.

        No read timeout on the layer's own connections (a group receive blocks for long on
        purpose); the sentinel queries keep theirs.
        """
        return {
            "sentinels": self.sentinels,
            "master_name": self.master_name,
            "sentinel_kwargs": self.sentinel_options(),
            "socket_timeout": None,
            "socket_connect_timeout": self.connect_timeout,
            **url_auth(self.url),
        }
