"""`make run`'s supervisor, as a newcomer runs it: no DATABASE_URL / REDIS_URL, so embedded
PostgreSQL and Redis start under the data folder; then a worker dies and a SIGTERM stops it all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from ingestor_site.embedded import free_port
from tests.livestack import BASE_DIR, wait_until

pytestmark = [pytest.mark.integration]


class Output:
    """The supervisor's output, read as it comes so the pipe never fills up."""

    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.lines: list[str] = []
        self._log = log.open("w")
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)
            self._log.write(line)
            self._log.flush()

    def text(self) -> str:
        return "".join(self.lines)


def _workers(url: str) -> int:
    try:
        return int(httpx.get(f"{url}/queue/status", timeout=2).json()["workers"])
    except (httpx.HTTPError, ValueError, KeyError):
        return -1


def _post_and_wait_stored(url: str, content: str, *, timeout_s: float, what: str) -> None:
    """POST one message (a 201) and wait until GET /messages lists it."""
    with httpx.Client(base_url=url, timeout=10) as client:
        acknowledged = client.post("/messages", json={"user_id": 1, "channel_id": 1, "content": content})
        assert acknowledged.status_code == 201
        message_id = acknowledged.json()["message_id"]
        wait_until(
            lambda: any(m["id"] == message_id for m in client.get("/messages").json()["messages"]),
            timeout_s=timeout_s,
            what=what,
        )


def test_run_starts_embedded_services_restarts_a_dead_worker_and_stops_cleanly(
    tmp_path: Path, output_dir: Path
) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(PORT=str(port), WORKERS="1", WEB_PROCESSES="1", INGESTOR_DATA_DIR=str(tmp_path / "data"))
    supervisor = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "ingestor_site.stack", "run"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(supervisor, output_dir / "stack.log")
    url = f"http://127.0.0.1:{port}"
    seen: dict[int, psutil.Process] = {}  # every descendant met, to clean up whatever happens
    try:
        wait_until(lambda: "dashboard: http://localhost:" in output.text(), timeout_s=90, what="the URL")
        assert f"http://localhost:{port}/" in output.text()
        assert "embedded PostgreSQL" in output.text() and "embedded Redis" in output.text()
        wait_until(lambda: _workers(url) == 1, timeout_s=30, what="one worker registered")

        _post_and_wait_stored(url, "hello", timeout_s=30, what="the message stored")

        seen.update((p.pid, p) for p in psutil.Process(supervisor.pid).children(recursive=True))
        children = psutil.Process(supervisor.pid).children()
        (worker,) = [child for child in children if "rqworker" in " ".join(child.cmdline())]
        worker.kill()
        wait_until(lambda: "worker 1 exited" in output.text(), timeout_s=15, what="the supervisor to notice")
        wait_until(
            lambda: any(
                "rqworker" in " ".join(child.cmdline()) and child.pid != worker.pid
                for child in psutil.Process(supervisor.pid).children()
            ),
            timeout_s=30,
            what="a new worker process",
        )
        # The dead worker's registration lives on in Redis for its TTL (30 s): a restarted
        # worker that could not register would leave this message waiting past the deadline.
        _post_and_wait_stored(url, "after", timeout_s=20, what="the restarted worker to store a message")
        assert output.text().count("exited with code") == 1, "the restarted worker died too"

        descendants = psutil.Process(supervisor.pid).children(recursive=True)
        seen.update((p.pid, p) for p in descendants)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=90) == 0
        _, alive = psutil.wait_procs(descendants, timeout=15)
        assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
        assert "stopped embedded postgres" in output.text()
        assert "stopped embedded redis" in output.text()
        # The embedded servers kept their data under the data folder, for the next start.
        assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()
        assert any((tmp_path / "data" / "redis").iterdir())
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        for process in seen.values():
            if process.is_running():
                process.kill()


def test_manage_py_runserver_serves_the_api_and_the_dashboard_through_daphne(
    transactional_db: None, redis_client: object, output_dir: Path
) -> None:
    from django.conf import settings

    from tests.conftest import subprocess_database_url

    port = free_port()
    env = {**os.environ, "DATABASE_URL": subprocess_database_url(), "REDIS_URL": settings.REDIS_URL}
    with (output_dir / "runserver.log").open("w") as log:
        server = subprocess.Popen(  # noqa: S603
            [sys.executable, "manage.py", "runserver", str(port), "--noreload"],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def answers() -> bool:
                try:
                    return httpx.get(f"{url}/health/live", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(answers, timeout_s=30, what="runserver to answer")
            posted = httpx.post(f"{url}/messages", json={"user_id": 1, "channel_id": 2, "content": "hi"})
            assert posted.status_code == 201, posted.text
            assert "Ingestor" in httpx.get(f"{url}/", timeout=10).text
        finally:
            server.terminate()
            server.wait(timeout=20)
    assert "daphne" in (output_dir / "runserver.log").read_text().lower()
