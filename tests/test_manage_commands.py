"""Django's own commands in a fresh clone with no environment: no DATABASE_URL, no REDIS_URL, no
`collectstatic` yet. They start this checkout's embedded servers for their lifetime (migrated),
and stop them when they end."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import httpx
import psutil
import pytest

from ingestor_site.embedded import free_port
from ingestor_site.local_services import owner_read
from tests.livestack import BASE_DIR, wait_until

pytestmark = [pytest.mark.integration]


def fresh_clone(tmp_path: Path) -> Path:
    """The project's tracked files in a new folder: no .data, no staticfiles, no venv."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=BASE_DIR, capture_output=True, check=True
    ).stdout.decode()
    clone = tmp_path / "clone"
    for name in filter(None, tracked.split("\0")):
        source = BASE_DIR / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    return clone


def bare_env() -> dict[str, str]:
    hidden = {"DATABASE_URL", "REDIS_URL", "INGESTOR_DATA_DIR", "DJANGO_SETTINGS_MODULE"}
    return {key: value for key, value in os.environ.items() if key not in hidden}


def manage(clone: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=clone,
        env={**bare_env(), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def servers_of(folder: Path) -> list[psutil.Process]:
    """PostgreSQL or Valkey processes whose command line names `folder`."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(folder) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def test_createsuperuser_shell_dbshell_and_rqworker_work_in_a_fresh_clone_with_no_environment(
    tmp_path: Path,
) -> None:
    clone = fresh_clone(tmp_path)

    created = manage(clone, "createsuperuser", "--noinput", "--username", "admin",
                     "--email", "admin@example.com", DJANGO_SUPERUSER_PASSWORD="a-long-password-1")  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "Superuser created" in created.stdout
    assert "started embedded PostgreSQL and Redis" in created.stderr

    shell = manage(
        clone, "shell", "-c", "from django.contrib.auth.models import User; print(User.objects.get())"
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.strip().endswith("admin")

    # psql comes with the embedded server when the machine has none.
    dbshell = manage(clone, "dbshell", "--", "-At", "-c", "SELECT username FROM auth_user")
    assert dbshell.returncode == 0, dbshell.stderr
    assert dbshell.stdout.strip() == "admin"

    worker = manage(clone, "rqworker", "ingest", "--burst")
    assert worker.returncode == 0, worker.stderr

    # Each command stopped what it started: no owner left, no server running on the clone's data.
    assert owner_read(clone / ".data") is None
    assert servers_of(clone / ".data") == []


def test_a_command_that_cannot_reach_its_database_says_so_in_one_line(tmp_path: Path) -> None:
    result = manage(BASE_DIR, "createsuperuser", "--noinput", "--username", "x", "--email", "x@example.com",
                    DATABASE_URL=f"postgres://nobody@127.0.0.1:{free_port()}/nothing", REDIS_URL="redis://127.0.0.1:1/0",
                    DJANGO_SUPERUSER_PASSWORD="a-long-password-1", DATABASE_POOL_TIMEOUT="1")  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "manage.py: cannot reach PostgreSQL" in result.stderr and "DATABASE_URL" in result.stderr


async def _first_frame(ws_url: str, origin: str) -> str:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, origin=origin) as socket:
        message = await asyncio.wait_for(socket.receive(), timeout=15)
        return str(message.data)


def test_runserver_in_a_fresh_clone_serves_pages_static_files_admin_and_the_dashboard_socket(
    tmp_path: Path, output_dir: Path
) -> None:
    clone = fresh_clone(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (output_dir / "runserver.log").open("w") as log:
        # With the autoreloader, as a developer runs it: the server runs in a child process.
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", str(port)],
            cwd=clone, env=bare_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started: list[psutil.Process] = []
        try:

            def answers() -> bool:
                try:
                    return httpx.get(f"{url}/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(answers, timeout_s=120, what="runserver to answer with its servers up")
            started = psutil.Process(server.pid).children(recursive=True)
            page = httpx.get(f"{url}/", timeout=10)
            assert page.status_code == 200 and "Ingestor" in page.text
            scripts = re.findall(r'src="(/static/[^"]+)"', page.text)
            assert scripts, page.text[:500]
            for script in scripts:
                assert httpx.get(f"{url}{script}", timeout=10).status_code == 200, script
            assert httpx.get(f"{url}/admin/login/", timeout=10).status_code == 200
            assert httpx.get(f"{url}/static/admin/css/base.css", timeout=10).status_code == 200
            posted = httpx.post(f"{url}/messages", json={"user_id": 1, "channel_id": 2, "content": "hi"})
            assert posted.status_code == 201, posted.text

            frame = asyncio.run(_first_frame(f"ws://127.0.0.1:{port}/ws/stats", url))
            assert json.loads(frame)["type"] == "snapshot"
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        _, alive = psutil.wait_procs(started, timeout=30)
        assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
    assert "started embedded PostgreSQL and Redis" in (output_dir / "runserver.log").read_text()
