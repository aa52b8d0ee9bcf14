"""scripts/bench_asgi_servers.py: its app does what each timed path says, under the real granian."""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import httpx
import pytest
from django.conf import settings

from tests.scripts import script_module


@pytest.fixture(scope="module")
def servers_bench() -> ModuleType:
    """The script as a module (scripts/ is not a package)."""
    return script_module("bench_asgi_servers")


async def _call(
    module: ModuleType, path: str, body: list[bytes], *, declared: int | None = None
) -> tuple[int, list[str]]:
    """Run the app on one request whose body arrives in `body`'s chunks, then an empty closing
    message as granian sends it: its status, and what it did."""
    done: list[str] = []
    chunks = list(body)

    async def receive() -> Mapping[str, Any]:
        done.append("receive")
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunk)}

    headers = [] if declared is None else [(b"content-length", str(declared).encode())]

    sent: list[Mapping[str, Any]] = []

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(message)

    await module.app({"type": "http", "path": path, "method": "POST", "headers": headers}, receive, send)
    return int(sent[0]["status"]), done


async def test_get_reads_no_body_and_post_reads_all_of_it(
    servers_bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await _call(servers_bench, "/get", [b"ignored"]) == (200, [])
    # To the closing message without a Content-Length; up to the declared length with one.
    assert await _call(servers_bench, "/post", [b'{"a":', b" 1}"]) == (200, ["receive"] * 3)
    assert await _call(servers_bench, "/post", [b'{"a":', b" 1}"], declared=8) == (200, ["receive"] * 2)
    monkeypatch.setenv("REDIS_URL", settings.REDIS_URL)
    status, done = await _call(servers_bench, "/post-redis", [b"{}"], declared=2)
    assert (status, done) == (200, ["receive"])
    client = next(iter(servers_bench._clients.values()))
    assert await client.ping() is True  # the real Redis it waited for
    await client.aclose()
    servers_bench._clients.clear()


def test_granian_serves_the_app_and_stops(servers_bench: ModuleType) -> None:
    command = servers_bench.servers()["granian"]
    with servers_bench.serving(command) as url:
        assert httpx.post(f"{url}/post", content=b'{"x": 1}', timeout=5).json() == {"ok": True}
        port = int(url.rsplit(":", 1)[1])
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/get", timeout=2)
