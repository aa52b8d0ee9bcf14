"""The doors in front of the pipeline hold against an attacker and a fault: each test runs a real
granian server (the command `make run` runs) on loopback, with bounded floods."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import httpx
import psutil
import psycopg
import pytest
import redis as redis_lib
import uuid6
from django.conf import settings

from ingestor_site.embedded import EmbeddedPostgres, EmbeddedRedis
from ingestor_site.processes import MANAGE, WEB_HEADER_TIMEOUT_MS, WEB_KILL_TIMEOUT_S
from tests.conftest import subprocess_database_url
from tests.livestack import LiveStack, wait_until
from tests.test_guarantees import assert_exactly_once, message, wait_all_stored

pytestmark = [pytest.mark.integration]

StackFactory = Callable[..., LiveStack]
IDLE_FLOOD = 1_200  # past what took the server away before (about 1,000)
# The server closes a silent socket after its header read timeout: allow that several times over.
CLOSED_WITHIN_S = WEB_HEADER_TIMEOUT_MS / 1000 * 4


@pytest.fixture(autouse=True)
def enough_file_descriptors() -> None:
    """Floods open more sockets than a default soft limit of 1,024 allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8_192)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture
def shared_stack(
    transactional_db: None, redis_client: redis_lib.Redis, output_dir: Path
) -> Iterator[StackFactory]:
    """Build stacks on the test database and Redis (both emptied around the test), stopped after it."""
    stacks: list[LiveStack] = []

    def make(**env: str) -> LiveStack:
        stack = LiveStack(
            database_url=subprocess_database_url(), redis_url=settings.REDIS_URL, log_dir=output_dir, **env
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in reversed(stacks):
        stack.stop()


@contextlib.contextmanager
def idle_sockets(port: int, count: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    """`count` connections that send `first_bytes` (or nothing) and then hold still."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if first_bytes:
                sock.sendall(first_bytes)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed the socket (end of stream or reset)."""
    # poll, not select: select() cannot watch descriptors numbered past 1,023.
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def all_closed(sockets: list[socket.socket]) -> bool:
    return all(closed_by_server(sock) for sock in sockets)


def answers(stack: LiveStack) -> None:
    """A fresh client gets its answers: liveness and an accepted message."""
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        assert client.get("/health/live").status_code == 200
        response = client.post("/messages", json=message(1))
        assert response.status_code == 201, response.text


# --- 1. connections: idle, slow, past the limit --------------------------------------------------


def test_a_flood_of_idle_connections_leaves_the_service_to_others_and_is_closed(
    shared_stack: StackFactory,
) -> None:
    stack = shared_stack()
    stack.web_start(processes=2)
    stack.worker_start()
    with idle_sockets(stack.port, IDLE_FLOOD) as sockets:
        answers(stack)
        wait_until(lambda: all_closed(sockets), timeout_s=CLOSED_WITHIN_S, what="the idle sockets closed")
        answers(stack)


def test_partial_headers_and_idle_keep_alive_connections_are_closed(shared_stack: StackFactory) -> None:
    stack = shared_stack()
    stack.web_start()
    with idle_sockets(stack.port, 50, first_bytes=b"GET /health/live HTTP/1.1\r\nHo") as partial:
        keep_alive = []
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            keep_alive.append(sock)
        try:
            wait_until(lambda: all_closed(partial), timeout_s=CLOSED_WITHIN_S, what="partial headers closed")
            wait_until(lambda: all_closed(keep_alive), timeout_s=CLOSED_WITHIN_S, what="keep-alives closed")
        finally:
            for sock in keep_alive:
                sock.close()


def test_past_the_connection_limit_new_clients_wait_for_idle_ones_to_be_closed(
    shared_stack: StackFactory,
) -> None:
    stack = shared_stack()
    stack.web_start(connections=32)
    stack.worker_start()
    with idle_sockets(stack.port, 100) as sockets:
        # Queued in the kernel until the server closes a silent socket; then served.
        with httpx.Client(base_url=stack.url, timeout=CLOSED_WITHIN_S) as client:
            assert client.get("/health/live").status_code == 200
        wait_until(lambda: all_closed(sockets), timeout_s=CLOSED_WITHIN_S * 3, what="the idle sockets closed")


# --- 2. bodies: refused before they are read ------------------------------------------------------


def head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", *headers, "", ""]
    return "\r\n".join(lines).encode()


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer.split(b" ", 2)[1])


def answer_to_head_alone(port: int, request_head: bytes) -> bytes:
    """Send a request head that announces a body, send none of it, and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_head)
        return sock.recv(65536)


def test_method_key_type_and_declared_length_are_refused_before_any_body_is_sent(
    shared_stack: StackFactory,
) -> None:
    stack = shared_stack(INGEST_API_KEYS="k1")
    stack.web_start()
    four_gb = f"Content-Length: {4 * 2**30}"
    json_type = "Content-Type: application/json"
    cases = {
        405: head("PUT", "/messages", four_gb, json_type, "X-API-Key: k1"),
        401: head("POST", "/messages", "Content-Length: 300000000", json_type),
        415: head("POST", "/messages/batch", four_gb, "Content-Type: text/plain", "X-API-Key: k1"),
        413: head("POST", "/messages", four_gb, json_type, "Authorization: Bearer k1"),
    }
    for expected, request_head in cases.items():
        answer = answer_to_head_alone(stack.port, request_head)
        assert status_of(answer) == expected, answer
        assert b'"detail"' in answer  # JSON, as every API error
    # The same refusals by path: a write to a read-only report is 405 without its body.
    answer = answer_to_head_alone(stack.port, head("PUT", "/stats", four_gb))
    assert status_of(answer) == 405, answer


def test_a_body_without_a_length_is_read_up_to_the_limit_and_no_further(shared_stack: StackFactory) -> None:
    stack = shared_stack(INGEST_MAX_BODY_BYTES="65536")
    stack.web_start()
    chunk = b"x" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    whole = 64 * 2**20  # what the client would send: 1,000 times the limit
    sent = 0
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(
            head("POST", "/messages", "Content-Type: application/json", "Transfer-Encoding: chunked")
        )
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        with contextlib.suppress(OSError):  # the server may close while we still send
            while sent < whole and not poller.poll(0):
                sock.sendall(framed)
                sent += len(chunk)
        answer = sock.recv(65536)
    assert status_of(answer) == 413, answer
    assert sent < whole, "the server read the whole body before answering"


def test_a_body_trickled_slower_than_the_body_timeout_is_refused_with_408(shared_stack: StackFactory) -> None:
    stack = shared_stack(INGEST_BODY_TIMEOUT_S="1")
    stack.web_start()
    with socket.create_connection(("127.0.0.1", stack.port), timeout=15) as sock:
        sock.sendall(
            head("POST", "/messages", "Content-Type: application/json", "Content-Length: 100") + b"{"
        )
        answer = sock.recv(65536)
    assert status_of(answer) == 408, answer


# --- 4. a reused id --------------------------------------------------------------------------------


def test_a_reused_id_is_a_replay_with_the_same_content_and_refused_with_other_content(
    shared_stack: StackFactory,
) -> None:
    stack = shared_stack()
    stack.web_start(processes=2)
    stack.worker_start()
    client_id, in_batch = str(uuid6.uuid7()), str(uuid6.uuid7())
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        first = client.post("/messages", json={**message(1), "id": client_id})
        again = client.post("/messages", json={**message(1), "id": client_id})
        changed = client.post("/messages", json={**message(1), "content": "rewritten", "id": client_id})
        batch = client.post("/messages/batch", json={"messages": [{**message(2), "id": in_batch}] * 2})
    assert (first.status_code, again.status_code, changed.status_code) == (201, 201, 409)
    assert (first.json()["replay"], again.json()["replay"]) == (False, True)
    assert client_id in changed.json()["detail"]
    assert batch.status_code == 201 and batch.json()["replays"] == [{"index": 1, "id": in_batch}]
    database_url = subprocess_database_url()
    wait_all_stored(database_url, [client_id, in_batch], timeout_s=30)
    assert_exactly_once(database_url, [client_id, in_batch])
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT content FROM messages WHERE id = %s", (client_id,)).fetchone()
    assert row == (message(1)["content"],)


# --- 5. rate limits --------------------------------------------------------------------------------


def assert_limited(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == "0"
    assert int(response.headers["RateLimit-Reset"]) >= 1
    assert "rate limit" in response.json()["detail"]


def test_posts_over_the_rate_limit_answer_429_counted_across_web_processes(
    shared_stack: StackFactory,
) -> None:
    stack = shared_stack(INGEST_RATE_LIMIT="6/minute")
    stack.web_start(processes=2)
    # Fresh connections, so both processes take some of them.
    answers = [httpx.post(f"{stack.url}/messages", json=message(n), timeout=10) for n in range(9)]
    assert [response.status_code for response in answers] == [201] * 6 + [429] * 3
    assert_limited(answers[-1], 6)


def test_with_api_keys_each_key_has_its_own_rate_limit(shared_stack: StackFactory) -> None:
    stack = shared_stack(INGEST_RATE_LIMIT="3/minute", INGEST_API_KEYS="k1,k2")
    stack.web_start()
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        first = [client.post("/messages", json=message(n), headers={"X-API-Key": "k1"}) for n in range(4)]
        other = client.post("/messages", json=message(9), headers={"Authorization": "Bearer k2"})
        no_key = client.post("/messages", json=message(9))
    assert [response.status_code for response in first] == [201, 201, 201, 429]
    assert other.status_code == 201
    assert no_key.status_code == 401  # refused for its key before it counts against anyone


def test_through_redis_unix_socket_the_api_the_rate_limit_and_the_worker_work_as_over_tcp(
    transactional_db: None, tmp_path: Path, output_dir: Path
) -> None:
    """REDIS_URL=unix://...: every Redis client of the stack (the batcher's enqueue, the rate
    limiter, the rq worker) reaches Redis through the socket."""
    server = EmbeddedRedis(tmp_path / "redis", persistent=False).start()
    stack = LiveStack(database_url=subprocess_database_url(), redis_url=server.socket_url, log_dir=output_dir,
                      INGEST_RATE_LIMIT="3/minute")  # fmt: skip
    try:
        assert server.socket_url == f"unix://{tmp_path / 'redis' / 'redis.sock'}?db=0"
        stack.web_start()
        stack.worker_start()
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            answers = [client.post("/messages", json=message(n)) for n in range(4)]
        assert [response.status_code for response in answers] == [201, 201, 201, 429]
        acknowledged = [response.json()["message_id"] for response in answers[:3]]
        wait_all_stored(subprocess_database_url(), acknowledged, timeout_s=30)
        assert_exactly_once(subprocess_database_url(), acknowledged)
        # The messages went through the socket's server: its counters say so.
        counted = redis_lib.Redis.from_url(server.socket_url).get("total_accepted")
        assert counted == b"3"
    finally:
        stack.stop()
        server.stop()


def test_a_deep_data_folder_puts_the_redis_socket_in_a_private_temporary_folder(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedRedis(deep / "redis", persistent=False).start()
    socket_dir = server.socket_path.parent
    try:
        assert not server.socket_path.is_relative_to(deep)
        assert len(os.fsencode(server.socket_path)) <= 103
        assert socket_dir.stat().st_mode & 0o077 == 0  # the owner's alone
        assert redis_lib.Redis.from_url(server.socket_url).ping()
    finally:
        server.stop()
    assert not socket_dir.exists()
    server.start()  # again: in a new private folder
    try:
        assert redis_lib.Redis.from_url(server.socket_url).ping()
    finally:
        server.stop()


def test_an_anonymous_client_with_its_own_csrf_cookie_is_rate_limited_on_simulate(
    shared_stack: StackFactory,
) -> None:
    stack = shared_stack(SIMULATE_RATE_LIMIT="2/minute")
    stack.web_start()
    token = "a" * 32
    with httpx.Client(base_url=stack.url, timeout=10, cookies={"csrftoken": token}) as client:
        answers = [
            client.post("/simulate", json={"count": 1}, headers={"X-CSRFToken": token, "Referer": stack.url})
            for _ in range(3)
        ]
    assert [response.status_code for response in answers] == [202, 202, 429], [r.text for r in answers]
    assert_limited(answers[-1], 2)


# --- 3. a web process dies ------------------------------------------------------------------------


def _web_processes(master: psutil.Process) -> list[psutil.Process]:
    """The granian master's two web processes, once both are up."""
    found: list[psutil.Process] = wait_until(
        lambda: len(master.children()) == 2 and master.children(), timeout_s=10, what="2 workers"
    )
    return found


def _one_killed_and_replaced(
    master: psutil.Process, before: list[psutil.Process], *, interval_s: float = 0.1
) -> set[int]:
    """SIGKILL the first of the master's web processes `before`; the pids of those it started
    since, as soon as it has."""
    os.kill(before[0].pid, signal.SIGKILL)
    replaced: set[int] = wait_until(
        lambda: {child.pid for child in master.children()} - {child.pid for child in before},
        timeout_s=10,
        interval_s=interval_s,
        what="a new web process",
    )
    return replaced


def test_a_web_process_killed_under_load_takes_no_other_down_and_is_replaced(
    shared_stack: StackFactory,
) -> None:
    stack = shared_stack()
    stack.web_start(processes=2)
    stack.worker_start()
    assert stack.web is not None
    master = psutil.Process(stack.web.pid)
    before = _web_processes(master)
    acknowledged: list[str] = []
    failures: list[str] = []  # ids of the requests that got no answer: stored or not, both are right
    failed_at: list[float] = []
    unexpected: list[str] = []  # answers other than 201 (asserted here: a thread's assert is lost)
    stop = threading.Event()

    def load(thread: int) -> None:
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            index = 0
            while not stop.is_set():
                index += 1
                body = {**message(index), "id": str(uuid6.uuid7())}
                try:
                    response = client.post("/messages", json=body)
                    # Redis's answer not read within its timeout (1 s: the loaded machine's loop
                    # or Redis stalled) is a 503 naming the message's id: a client sends it again
                    # with that id, as the README says, and it is stored once.
                    for _ in range(30):
                        if response.status_code != 503 or "message_ids" not in response.json():
                            break
                        response = client.post("/messages", json=body)
                except httpx.TransportError:
                    failures.append(body["id"])  # in flight on, or queued for, the killed process
                    failed_at.append(time.monotonic())
                    continue
                if response.status_code != 201:
                    unexpected.append(response.text)
                    continue
                acknowledged.append(response.json()["message_id"])

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(acknowledged) > 100, timeout_s=30, what="load running")
        replaced = _one_killed_and_replaced(master, before)
        replaced_at = time.monotonic()
        served = len(acknowledged)
        wait_until(lambda: len(acknowledged) > served + 200, timeout_s=30, what="load going on")
        # The new process takes its share once it listens on the port (its own socket).
        (new_pid,) = replaced
        wait_until(
            lambda: any(
                connection.status == psutil.CONN_LISTEN and connection.laddr.port == stack.port
                for connection in psutil.Process(new_pid).net_connections(kind="tcp")
            ),
            timeout_s=30,
            what="the new web process listening",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert stack.web.poll() is None, "the granian master exited"
    assert len(master.children()) == 2 and replaced
    assert unexpected == []
    # Only requests caught by the killed process fail: those in flight on it and, since granian
    # gives each process a listening socket of its own (SO_REUSEPORT), connections the kernel
    # queued on that socket while the process was dying (a client reconnecting at once can be
    # queued there again). Once the master has seen the death and started a replacement, the
    # socket is long gone: nothing fails after that (a second's slack for the threads' clocks).
    assert all(moment < replaced_at + 1.0 for moment in failed_at), (replaced_at, failed_at)
    wait_all_stored(subprocess_database_url(), acknowledged, timeout_s=60)
    assert_exactly_once(subprocess_database_url(), acknowledged, unknown=frozenset(failures))


def test_a_web_server_stopped_while_it_replaces_a_process_stops(shared_stack: StackFactory) -> None:
    """SIGTERM reaching the master while a replacement is still loading the site: that worker
    swallows its SIGTERM (it still has the master's handlers); the master must not wait for it
    forever, but stop it after its kill timeout."""
    stack = shared_stack()
    stack.web_start(processes=2)
    assert stack.web is not None
    master = psutil.Process(stack.web.pid)
    _one_killed_and_replaced(master, _web_processes(master), interval_s=0.005)
    workers = master.children()
    stack.web.terminate()
    try:
        code = stack.web.wait(timeout=WEB_KILL_TIMEOUT_S + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the granian master did not stop within {WEB_KILL_TIMEOUT_S + 10}s of SIGTERM")
    assert code == 0, stack.log("web")
    assert "refused to gracefully stop" in stack.log("web")  # the SIGTERM did reach it while loading
    wait_until(
        lambda: not [worker for worker in workers if worker.is_running()], timeout_s=5, what="no worker left"
    )


# --- 6. production settings -----------------------------------------------------------------------


def test_a_deployment_without_a_secret_key_does_not_start_and_says_why(shared_stack: StackFactory) -> None:
    stack = shared_stack(INGESTOR_LOCAL="false", SECRET_KEY="")
    with pytest.raises(RuntimeError, match="exited"):
        stack.web_start()
    assert "SECRET_KEY is not set" in stack.log("web")


# --- 7. the smaller doors -------------------------------------------------------------------------


def test_methods_keys_and_schemas_are_answered_as_documented(shared_stack: StackFactory) -> None:
    stack = shared_stack(INGEST_API_KEYS="k1")
    stack.web_start()
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        assert client.request("TRACE", "/").status_code == 405
        assert client.head("/messages").status_code == 200
        for method in ("PUT", "PATCH", "DELETE", "TRACE"):
            for path in ("/stats", "/metrics"):
                assert client.request(method, path).status_code == 405, (method, path)
        for method, path in (("PUT", "/simulate"), ("GET", "/reset"), ("PATCH", "/reset")):
            refused = client.request(method, path)
            assert refused.status_code == 405, (method, path)
            assert "detail" in refused.json()
        refused = client.post("/simulate", json={"count": 1})  # no CSRF token
        assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
        for authorization in ("k1", "Basic k1", "Bearer k2"):
            response = client.post("/messages", json=message(1), headers={"Authorization": authorization})
            assert response.status_code == 401, authorization
        keyed = {"X-API-Key": "k1"}
        assert client.post("/messages", json={**message(1), "id": None}, headers=keyed).status_code == 422
        assert client.post("/messages/batch", json={"messages": []}, headers=keyed).status_code == 422
        assert (
            client.post("/messages", json=message(1), headers={"Authorization": "bearer k1"}).status_code
            == 201
        )


def test_the_dashboard_of_a_staff_session_still_shows_while_postgres_is_down(
    own_postgres: EmbeddedPostgres, redis_client: redis_lib.Redis, output_dir: Path
) -> None:
    env = {**os.environ, "DATABASE_URL": own_postgres.url, "REDIS_URL": settings.REDIS_URL}
    subprocess.run(
        [
            sys.executable,
            MANAGE,
            "createsuperuser",
            "--noinput",
            "--username",
            "staff",
            "--email",
            "s@example.com",
        ],
        env={**env, "DJANGO_SUPERUSER_PASSWORD": "a-password-for-the-test"},
        check=True,
        capture_output=True,
    )
    stack = LiveStack(database_url=own_postgres.url, redis_url=settings.REDIS_URL, log_dir=output_dir)
    try:
        stack.web_start()
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            client.get("/admin/login/")
            logged_in = client.post(
                "/admin/login/?next=/",
                data={
                    "username": "staff",
                    "password": "a-password-for-the-test",
                    "csrfmiddlewaretoken": client.cookies["csrftoken"],
                },  # fmt: skip
            )
            assert logged_in.status_code == 302, logged_in.text
            assert 'hx-delete="/reset"' in client.get("/").text  # the staff controls
            own_postgres.stop()
            page = client.get("/")
            assert page.status_code == 200, page.text[:500]
            assert 'hx-delete="/reset"' not in page.text
    finally:
        stack.stop()


# --- dashboard sockets: a flood at once, and past the limit -----------------------------------


async def _sockets_flood(url: str, count: int) -> Counter[str]:
    """Open `count` dashboard sockets at once; what each got: "fed" (snapshot, then a live
    frame) or the code it was closed with."""
    outcome: Counter[str] = Counter()
    everyone_done = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def reader() -> None:
            async with session.ws_connect(url.replace("http", "ws") + "/ws/stats", origin=url) as socket:
                kinds = []
                async for frame in socket:
                    if frame.type != aiohttp.WSMsgType.TEXT:
                        break
                    kinds.append(json.loads(frame.data)["type"])
                    if kinds[0] == "snapshot" and "stats_update" in kinds[1:]:
                        outcome["fed"] += 1
                        break
                else:
                    outcome[f"closed {socket.close_code}"] += 1
                # Held open until all are counted, so the limit counts every socket at once.
                if sum(outcome.values()) == count:
                    everyone_done.set()
                await asyncio.wait_for(everyone_done.wait(), 60)

        await asyncio.wait_for(asyncio.gather(*(reader() for _ in range(count))), 90)
    return outcome


def test_hundreds_of_dashboard_sockets_opened_at_once_all_get_the_feed(shared_stack: StackFactory) -> None:
    """One web process; a channel-layer group_add per socket once failed past ~200 at once."""
    stack = shared_stack()
    stack.web_start(1)
    assert asyncio.run(_sockets_flood(stack.url, 600)) == {"fed": 600}
    answers(stack)


def test_past_the_socket_limit_dashboard_sockets_are_closed_with_try_again_later(
    shared_stack: StackFactory,
) -> None:
    stack = shared_stack(DASHBOARD_MAX_SOCKETS="250")
    stack.web_start(1)
    assert asyncio.run(_sockets_flood(stack.url, 300)) == {"fed": 250, "closed 1013": 50}
    # The sockets are gone: the process has room again.
    assert asyncio.run(_sockets_flood(stack.url, 250)) == {"fed": 250}
