"""PostgreSQL and Redis for a checkout: the embedded servers, who owns them, and how others find them.

With DATABASE_URL / REDIS_URL unset, whoever needs them (`make run`, `make test`, a `manage.py`
command) starts embedded servers with their data in a data folder: `.data/` for `make run` and
`manage.py`, `.data/test/` for `make test`, so tests never stop or flush what `make run` holds.
The starter owns the folder while it runs: it holds a lock on `owner.lock` (released by the
kernel however the owner dies) and describes itself in `owner.json` (pid, URLs). A second starter
on the same folder is refused with one line; a `manage.py` command joins the servers of a live
owner instead; a dead owner's servers are stopped before the folder is used again.

Nothing here imports Django: `manage.py` uses it before Django loads, and so can the load
generator.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingestor_site.embedded import EmbeddedServer

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DATA_DIR = Path(os.environ.get("INGESTOR_DATA_DIR") or BASE_DIR / ".data")
TEST_DATA_DIR = RUN_DATA_DIR / "test"
LOCK_FILE = "owner.lock"
STATE_FILE = "owner.json"


class FolderInUse(RuntimeError):
    """Another live process owns the data folder's servers."""

    def __init__(self, data_dir: Path, owner: dict[str, Any]) -> None:
        self.owner = owner
        where = f", dashboard {owner['dashboard']}" if owner.get("dashboard") else ""
        super().__init__(
            f"{data_dir} is in use by `{owner.get('command', '?')}` (pid {owner.get('pid', '?')}{where}); "
            "stop it first, or give this one its own folder with INGESTOR_DATA_DIR=... (and PORT=...)"
        )


def _state_read(data_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def owner_read(data_dir: Path = RUN_DATA_DIR) -> dict[str, Any] | None:
    """The live owner of `data_dir` (pid, command, database_url, redis_url, ...), or None."""
    try:
        with (data_dir / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return None
    except BlockingIOError:
        return _state_read(data_dir) or {"command": "?", "pid": "?"}
    return None


def process_started(pid: int) -> int | float | None:
    """When process `pid` started, to tell it from a later process given the same number, or None
    if there is none. Where there is a /proc (Linux), its start in clock ticks since boot, read
    there: psutil would stay loaded in `make run`'s supervisor for its whole life (~1.4 MB). Else
    psutil's create_time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # Field 22; the name in parentheses before it may hold spaces.
            return int(stat.read().rpartition(b")")[2].split()[19])
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # a /proc without it: the process is gone
    except (OSError, ValueError, IndexError):
        return None
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


class Ownership:
    """The lock and the state file of a data folder we own."""

    def __init__(self, data_dir: Path, command: str) -> None:
        self.data_dir = data_dir
        self.state: dict[str, Any] = {"pid": os.getpid(), "command": command, "servers": []}
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] = (data_dir / LOCK_FILE).open("a")
        # A few tries: `owner_read` in another process holds a shared lock for an instant.
        for attempt in range(10):
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 9:
                    self._lock.close()
                    raise FolderInUse(data_dir, _state_read(data_dir) or {}) from None
                time.sleep(0.05)
        previous = _state_read(data_dir)
        self.write()  # at once: no one may take a dead owner's URLs for ours
        self._leftovers_stop(previous)

    def _leftovers_stop(self, previous: dict[str, Any]) -> None:
        """Stop servers a dead owner left running: they hold the data files (and their ports)."""
        servers = previous.get("servers", [])
        if not servers:
            return
        import psutil

        for server in servers:
            try:
                process = psutil.Process(int(server["pid"]))
                recorded = server.get("started")
                # A float is psutil's create_time, as recorded before process_started existed.
                started = (
                    process.create_time() if isinstance(recorded, float) else process_started(process.pid)
                )
                if started != recorded or process.status() == psutil.STATUS_ZOMBIE:
                    continue  # the number belongs to another process now
            except (psutil.Error, KeyError, TypeError, ValueError):
                continue
            print(
                f"[ingestor] stopping the {server.get('name')} a dead run left (pid {process.pid})",
                flush=True,
            )
            process.send_signal(signal.SIGINT if server.get("name") == "postgres" else signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except psutil.TimeoutExpired:
                process.kill()

    def server_add(self, server: EmbeddedServer) -> None:
        assert server.process is not None
        started = process_started(server.process.pid)
        self.state["servers"].append({"name": server.name, "pid": server.process.pid, "started": started})
        self.write()

    def write(self, **fields: Any) -> None:
        self.state.update(fields)
        temporary = self.data_dir / f".{STATE_FILE}.{os.getpid()}"
        temporary.write_text(json.dumps(self.state, indent=1))
        temporary.replace(self.data_dir / STATE_FILE)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            (self.data_dir / STATE_FILE).unlink()
        self._lock.close()


class LocalServices:
    """PostgreSQL and Redis for a block: those of DATABASE_URL / REDIS_URL when set (left alone),
    else embedded servers in `data_dir`, owned for the block and stopped at its end.

        with LocalServices(data_dir, command="make run") as services:
            subprocess.run(..., env=services.env)
    """

    def __init__(self, data_dir: Path, *, command: str, quiet: bool = False) -> None:
        self.data_dir = data_dir
        self.command = command
        self.quiet = quiet
        self.env = dict(os.environ)
        self.env.setdefault("INGESTOR_LOCAL", "true")  # settings allow the development SECRET_KEY
        self.ownership: Ownership | None = None
        self.started: list[EmbeddedServer] = []

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(f"[ingestor] {text}", flush=True)

    def _redis_given(self) -> bool:
        # Behind Sentinel (REDIS_SENTINELS) the sentinels name the Redis to use: none embedded.
        return bool(self.env.get("REDIS_URL") or self.env.get("REDIS_SENTINELS"))

    def __enter__(self) -> LocalServices:
        if self.env.get("DATABASE_URL") and self._redis_given():
            return self
        self.ownership = Ownership(self.data_dir, self.command)
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def _start(self) -> None:
        assert self.ownership is not None
        if not self.env.get("DATABASE_URL"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
                from ingestor_site.embedded import EmbeddedPostgres

                postgres = EmbeddedPostgres(self.data_dir / "postgres")
                self.started.append(postgres)
                postgres.start()
            self.ownership.server_add(postgres)
            self.env["DATABASE_URL"] = postgres.url
            self._say(f"embedded PostgreSQL on {postgres.url} (data in {postgres.data_dir})")
        if not self._redis_given():
            from ingestor_site.embedded import EmbeddedRedis

            redis = EmbeddedRedis(self.data_dir / "redis")
            self.started.append(redis)
            redis.start()
            self.ownership.server_add(redis)
            self.env["REDIS_URL"] = redis.url
            self._say(f"embedded Redis on {redis.url} (append-only file in {redis.data_dir})")
        self.ownership.write(database_url=self.env["DATABASE_URL"], redis_url=self.env.get("REDIS_URL", ""))

    def record(self, **fields: Any) -> None:
        """Add `fields` (the dashboard URL) to what others read about the owner."""
        if self.ownership is not None:
            self.ownership.write(**fields)

    def _stop(self) -> None:
        for server in reversed(self.started):
            server.stop()
            self._say(f"stopped embedded {server.name}")
        self.started.clear()
        if self.ownership is not None:
            self.ownership.release()
            self.ownership = None

    def __exit__(self, *exc_info: object) -> None:
        self._stop()


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port (so a web server can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def local_database_url(api_url: str) -> str | None:
    """DATABASE_URL of this checkout's running stack, when `api_url` is its web server."""
    from urllib.parse import urlsplit

    owner = owner_read(RUN_DATA_DIR)
    if not owner or not owner.get("dashboard") or not owner.get("database_url"):
        return None
    target, ours = urlsplit(api_url), urlsplit(str(owner["dashboard"]))
    loopback = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}  # noqa: S104
    if target.port == ours.port and target.hostname in loopback | {ours.hostname}:
        return str(owner["database_url"])
    return None


# `manage.py` commands that need neither PostgreSQL nor Redis: nothing starts for them.
OFFLINE_COMMANDS = frozenset({
    "help", "version", "makemigrations", "collectstatic", "findstatic", "check", "diffsettings",
    "startapp", "startproject", "squashmigrations", "optimizemigration", "makemessages", "compilemessages",
})  # fmt: skip
# Commands that only talk to a running stack over HTTP (loadtest finds the database of this
# checkout's `make run` itself, when --url is its server): nothing starts for them.
JOIN_ONLY_COMMANDS = frozenset({"loadtest"})
# Commands that must see the schema as it is (or are migrate itself): no migrate before them.
UNMIGRATED_COMMANDS = frozenset({"migrate", "dbshell", "showmigrations", "sqlmigrate", "sqlflush", "flush"})


def _note(text: str) -> None:
    # stderr: a command's own output (dumpdata, a shell's) stays clean for pipes.
    print(f"manage.py: {text}", file=sys.stderr, flush=True)


def _psql_on_path() -> None:
    """dbshell runs `psql` from PATH: fall back on the client that ships with the embedded server."""
    import shutil

    if shutil.which("psql") is None:
        from ingestor_site.embedded import EmbeddedPostgres

        os.environ["PATH"] = f"{EmbeddedPostgres.bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}"


@contextmanager
def command_services(argv: list[str]) -> Iterator[None]:
    """Point a `manage.py` command at this checkout's servers when DATABASE_URL / REDIS_URL are unset.

    Those of a running `make run` (or another command that started them) when there is one, read
    from its state file; else embedded ones started (and migrated) for the command's lifetime.
    """
    command = argv[1] if len(argv) > 1 else "help"
    if command.startswith("-") or command in OFFLINE_COMMANDS | JOIN_ONLY_COMMANDS:
        yield
        return
    if command == "dbshell":
        _psql_on_path()
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        yield
        return
    owner = owner_read(RUN_DATA_DIR)
    if owner and owner.get("database_url") and owner.get("redis_url"):
        os.environ.setdefault("DATABASE_URL", str(owner["database_url"]))
        os.environ.setdefault("REDIS_URL", str(owner["redis_url"]))
        _note(f"using the servers of `{owner.get('command')}` (pid {owner.get('pid')}) in {RUN_DATA_DIR}")
        yield
        return
    with LocalServices(RUN_DATA_DIR, command=f"manage.py {command}", quiet=True) as services:
        os.environ.update(DATABASE_URL=services.env["DATABASE_URL"], REDIS_URL=services.env["REDIS_URL"])
        _note(f"started embedded PostgreSQL and Redis (data in {RUN_DATA_DIR}) for this command")
        if command not in UNMIGRATED_COMMANDS:
            _migrate()
        # A SIGTERM ends the command through `finally`, so the servers stop with it.
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    import psutil

    # runserver's autoreloader serves from a child process: it must not outlive the servers.
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            child.terminate()
    raise SystemExit(128 + signum)


def _migrate() -> None:
    import django
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    connections.close_all()
