"""`make run`'s supervisor, as a newcomer runs it: no DATABASE_URL / REDIS_URL, so embedded
PostgreSQL and Redis start under the data folder; then a worker dies and a SIGTERM stops it all."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from ingestor_site.embedded import POSTGRES_MAX_WAL_SIZE, EmbeddedPostgres, free_port
from ingestor_site.local_services import port_free
from ingestor_site.stack import RESTART_BACKOFF_S, RESTART_HEALTHY_AFTER_S, Child
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


def _live(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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


def _run_env(data_dir: Path, port: int, web_processes: int = 1) -> dict[str, str]:
    """`make run`'s environment on a fresh machine: no DATABASE_URL / REDIS_URL."""
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(PORT=str(port), WORKERS="1", WEB_PROCESSES=str(web_processes), INGESTOR_DATA_DIR=str(data_dir))
    return env


def _run_start(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], Output]:
    supervisor = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "ingestor_site.stack", "run"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(supervisor, log)
    wait_until(lambda: "dashboard: http://localhost:" in output.text() or supervisor.poll() is not None,
               timeout_s=90, what="the URL")  # fmt: skip
    assert supervisor.poll() is None, output.text()
    return supervisor, output


def _cleanup(supervisor: subprocess.Popen[str], seen: dict[int, psutil.Process]) -> None:
    if supervisor.poll() is None:
        supervisor.kill()
        supervisor.wait()
    for process in seen.values():
        with contextlib.suppress(psutil.Error):
            if process.is_running():
                process.kill()


def test_run_starts_embedded_services_restarts_a_dead_worker_and_stops_cleanly(
    tmp_path: Path, output_dir: Path
) -> None:
    port = free_port()
    supervisor, output = _run_start(_run_env(tmp_path / "data", port), output_dir / "stack.log")
    url = f"http://127.0.0.1:{port}"
    seen: dict[int, psutil.Process] = {}  # every descendant met, to clean up whatever happens
    try:
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

        # A web process is the supervisor's to restart too (there is no granian master).
        children = psutil.Process(supervisor.pid).children()
        (web,) = [child for child in children if "ingestor_site.web" in " ".join(child.cmdline())]
        web.kill()
        wait_until(
            lambda: "web process 1 exited" in output.text(), timeout_s=15, what="the supervisor to notice"
        )
        wait_until(lambda: _live(url), timeout_s=30, what="a new web process to answer")
        _post_and_wait_stored(
            url, "web back", timeout_s=30, what="the restarted web process to take a message"
        )
        assert output.text().count("exited with code") == 2, "a restarted process died"

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
        _cleanup(supervisor, seen)


def test_killing_the_supervisor_stops_everything_it_started_and_frees_the_port(
    tmp_path: Path, output_dir: Path
) -> None:
    port = free_port()
    supervisor, output = _run_start(
        _run_env(tmp_path / "data", port, web_processes=2), output_dir / "stack.log"
    )
    seen: dict[int, psutil.Process] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _workers(url) == 1, timeout_s=30, what="one worker registered")
        _post_and_wait_stored(url, "before the crash", timeout_s=30, what="the message stored")
        seen.update((p.pid, p) for p in psutil.Process(supervisor.pid).children(recursive=True))
        commands = [" ".join(p.cmdline()) for p in seen.values()]
        # Two web processes, the rq worker, the watchdog, both servers and PostgreSQL's helpers.
        assert sum("ingestor_site.web" in command for command in commands) == 2, commands
        assert any("watchdog.sh" in command for command in commands), commands
        assert any("rqworker" in command for command in commands), commands
        assert any("valkey-server" in command for command in commands), commands
        assert sum("postgres" in command for command in commands) >= 2, commands

        supervisor.kill()  # SIGKILL: no handler runs, nothing is stopped in order
        supervisor.wait()
        _, alive = psutil.wait_procs(list(seen.values()), timeout=30)
        assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
        assert port_free("127.0.0.1", port)
        assert "watchdog: the supervisor is gone" in output.text()
    finally:
        _cleanup(supervisor, seen)


def test_a_second_run_refuses_a_data_folder_or_port_in_use_and_tests_use_their_own_servers(
    tmp_path: Path, output_dir: Path
) -> None:
    port = free_port()
    env = _run_env(tmp_path / "data", port)
    supervisor, output = _run_start(env, output_dir / "stack.log")
    seen: dict[int, psutil.Process] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        seen.update((p.pid, p) for p in psutil.Process(supervisor.pid).children(recursive=True))
        wait_until(lambda: _workers(url) == 1, timeout_s=30, what="one worker registered")
        _post_and_wait_stored(url, "kept", timeout_s=30, what="the message stored")
        total = httpx.get(f"{url}/stats", timeout=5).json()["total_messages"]
        assert total >= 1

        second = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "ingestor_site.stack", "run"],
            cwd=BASE_DIR, env={**env, "PORT": str(free_port())}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert "is in use by `make run`" in second.stdout and f"pid {supervisor.pid}" in second.stdout
        same_port = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "ingestor_site.stack", "run"],
            cwd=BASE_DIR, env={**env, "INGESTOR_DATA_DIR": str(tmp_path / "other")},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert same_port.returncode == 1
        assert f"port {port} on 127.0.0.1 is in use" in same_port.stdout

        # What `make test` runs, while make run is up: its own servers, which it may flush.
        flush = "import os, redis; print(os.environ['REDIS_URL']); redis.Redis.from_url(os.environ['REDIS_URL']).flushall()"
        tests = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "ingestor_site.stack", "exec", "--", sys.executable, "-c", flush],
            cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert tests.returncode == 0, tests.stdout + tests.stderr
        assert str(tmp_path / "data" / "test") in tests.stdout
        assert httpx.get(f"{url}/stats", timeout=5).json()["total_messages"] == total
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert "stopped embedded" not in output.text()
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=90)
        _cleanup(supervisor, seen)


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


def test_manage_py_and_the_load_test_use_the_servers_of_a_running_make_run(
    tmp_path: Path, output_dir: Path
) -> None:
    port = free_port()
    env = _run_env(tmp_path / "data", port)
    supervisor, _ = _run_start(env, output_dir / "stack.log")
    seen: dict[int, psutil.Process] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        seen.update((p.pid, p) for p in psutil.Process(supervisor.pid).children(recursive=True))
        owner = json.loads((tmp_path / "data" / "owner.json").read_text())
        assert owner["pid"] == supervisor.pid and owner["dashboard"] == f"http://localhost:{port}/"

        shell = subprocess.run(  # noqa: S603
            [sys.executable, "manage.py", "shell", "-c", "import os; print(os.environ['DATABASE_URL'])"],
            cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shell.returncode == 0, shell.stderr
        assert shell.stdout.strip().splitlines()[-1] == owner["database_url"]
        assert f"using the servers of `make run` (pid {supervisor.pid})" in shell.stderr

        wait_until(lambda: _workers(url) == 1, timeout_s=30, what="one worker registered")
        # No --database-url and no DATABASE_URL: --verify finds make run's database by itself.
        load = subprocess.run(  # noqa: S603
            [sys.executable, "scripts/load_test.py", "--url", url, "--messages", "200", "--concurrent", "10",
             "--verify", "--json", "--no-progress"],
            cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert load.returncode == 0, load.stderr
        verify = json.loads(load.stdout)["verify"]
        assert verify["method"] == "database"
        assert verify["persisted"] == 200 and verify["lost"] == 0
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=90)
        _cleanup(supervisor, seen)


def test_a_new_run_stops_the_servers_a_dead_run_left_on_its_data_folder(
    tmp_path: Path, output_dir: Path
) -> None:
    env = _run_env(tmp_path / "data", free_port())
    first, _ = _run_start(env, output_dir / "first.log")
    seen: dict[int, psutil.Process] = {p.pid: p for p in psutil.Process(first.pid).children(recursive=True)}
    second: subprocess.Popen[str] | None = None
    try:
        servers = [
            p for p in psutil.Process(first.pid).children() if p.name() in {"postgres", "valkey-server"}
        ]
        assert len(servers) == 2
        # The supervisor and its watchdog die together: nothing stops the servers.
        (watchdog,) = [p for p in seen.values() if "watchdog.sh" in " ".join(p.cmdline())]
        watchdog.kill()
        first.kill()
        first.wait()
        for server in servers:
            assert server.is_running()
        for process in seen.values():
            if process not in servers:
                with contextlib.suppress(psutil.Error):
                    process.kill()

        second, output = _run_start({**env, "PORT": str(free_port())}, output_dir / "second.log")
        seen.update((p.pid, p) for p in psutil.Process(second.pid).children(recursive=True))
        assert "stopping the postgres a dead run left" in output.text()
        assert "stopping the redis a dead run left" in output.text()
        _, alive = psutil.wait_procs(servers, timeout=30)
        assert alive == []
    finally:
        if second is not None:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=90)
            _cleanup(second, seen)
        _cleanup(first, seen)


def test_restart_backoff_grows_while_a_child_keeps_dying_and_resets_after_a_healthy_run() -> None:
    child = Child("worker 1", lambda restarts: ["true"])
    delays = []
    for _ in range(5):
        child.started_at = 1000.0
        delays.append(child.restart_delay(1000.0 + 1))  # died a second after each start
    assert delays == [*RESTART_BACKOFF_S, RESTART_BACKOFF_S[-1]]
    child.started_at = 2000.0
    assert child.restart_delay(2000.0 + RESTART_HEALTHY_AFTER_S) == RESTART_BACKOFF_S[0]
    child.started_at = 3000.0
    assert child.restart_delay(3000.0 + 1) == RESTART_BACKOFF_S[1]


def test_make_run_compiles_the_projects_bytecode_first() -> None:
    """Where PYTHONDONTWRITEBYTECODE is set, no process would write it, and each would compile
    every module of ours again at each start (slower, and ~1 MB more in each)."""
    import importlib.util  # noqa: PLC0415

    from ingestor_site.stack import PACKAGES, bytecode_compile  # noqa: PLC0415

    sources = [
        BASE_DIR / package / "views.py" for package in PACKAGES if (BASE_DIR / package / "views.py").exists()
    ]
    assert sources
    compiled = [Path(importlib.util.cache_from_source(str(source))) for source in sources]
    for path in compiled:
        path.unlink(missing_ok=True)
    bytecode_compile({**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    for source, path in zip(sources, compiled, strict=True):
        assert path.exists(), f"{source.name} was not compiled"
        assert path.stat().st_mtime >= source.stat().st_mtime


def test_the_embedded_postgresql_runs_with_room_for_a_burst_of_wal(own_postgres: EmbeddedPostgres) -> None:
    """Its max_wal_size holds the batch benchmark's 2,000,000 rows (~850 MB of WAL) with room:
    at the default 1GB they set off one or two checkpoints while they went in."""
    with psycopg.connect(own_postgres.url) as conn:
        assert conn.execute("SHOW max_wal_size").fetchone() == (POSTGRES_MAX_WAL_SIZE,)
