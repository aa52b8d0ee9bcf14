"""The few calls to the ingestor's own API around a run (httpx): health, stats, queue drain."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx


class ApiUnreachable(Exception):
    """The API did not answer, or answered that it is not healthy."""


def _client(url: str, api_key: str | None, timeout_s: float) -> httpx.Client:
    headers = {"X-API-Key": api_key} if api_key else {}
    return httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers)


def api_health(url: str, *, api_key: str | None = None, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET /health; raise ApiUnreachable with a message a user can act on unless it is healthy."""
    try:
        with _client(url, api_key, timeout_s) as client:
            response = client.get("/health")
    except httpx.HTTPError as exc:
        raise ApiUnreachable(
            f"cannot reach the ingestor API at {url} ({type(exc).__name__}: {exc or 'no answer'}). "
            "Is it running? Start it with `make run`, or pass --url."
        ) from exc
    try:
        report: dict[str, Any] = response.json()
    except ValueError:
        report = {"body": response.text[:200]}
    if response.status_code != 200 or report.get("status") != "healthy":
        raise ApiUnreachable(f"the API at {url} is not healthy (HTTP {response.status_code}): {report}")
    return report


def api_stats(url: str, *, api_key: str | None = None, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The server's own metrics (GET /stats), or None if it does not give them."""
    try:
        with _client(url, api_key, timeout_s) as client:
            response = client.get("/stats")
        if response.status_code != 200:
            return None
        stats: dict[str, Any] = response.json()
        return stats
    except (httpx.HTTPError, ValueError):
        return None


@dataclass(frozen=True)
class DrainResult:
    drained: bool
    waited_s: float
    backlog: int | None


def queue_drain_wait(
    url: str, *, timeout_s: float, api_key: str | None = None, interval_s: float = 0.2
) -> DrainResult:
    """Wait until GET /queue/status reports no message accepted and not yet persisted."""
    started = time.monotonic()
    backlog: int | None = None
    with _client(url, api_key, 5.0) as client:
        while True:
            try:
                response = client.get("/queue/status")
                if response.status_code == 200:
                    status = response.json()
                    backlog = int(status.get("backlog_messages") or 0)
                    if backlog == 0 and not status.get("jobs_queued"):
                        return DrainResult(True, time.monotonic() - started, 0)
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() - started >= timeout_s:
                return DrainResult(False, time.monotonic() - started, backlog)
            time.sleep(interval_s)
