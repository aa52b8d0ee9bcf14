#!/usr/bin/env python
"""How much memory does `make run` hold? `python scripts/bench_memory.py`

Runs `make run`'s own supervisor (`python -m ingestor_site.stack run`) on a free port with its data
folder under .data/bench-memory (wiped first; DATABASE_URL / REDIS_URL are ignored), so it starts
its embedded PostgreSQL and Redis as `make run` does, and reads the memory of every Python process
in its tree (the servers are listed apart): RSS, PSS (shared pages split between the processes sharing them: the sum is
what the stack really costs) and USS (what stopping that process alone would free). It reads them
at rest after a short warm-up, right after a load (wrk POST /messages), and once that load has
drained and settled. The wrk figures are printed too, so a change that saves memory can be checked
for lost throughput in the same run.

    python scripts/bench_memory.py [--runs 1] [--load-seconds 15] [--connections 64] [--json]

`memory_snapshot()` and `memory_table()` are the parts a benchmark report can import.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

import httpx  # noqa: E402
import psutil  # noqa: E402

from ingestor_site.embedded import free_port  # noqa: E402

DATA_DIR = BASE_DIR / ".data" / "bench-memory"
MB = 1024 * 1024
# After the last request, long enough for the batcher's and the worker's idle ticks to have run.
SETTLE_S = 10.0

# The roles, in the order a table lists them.
ROLES = ("supervisor", "watchdog", "web master", "web process", "rq worker", "rq scheduler", "other")
# The embedded servers the supervisor starts: theirs is the data's memory, not the stack's.
SERVER_NAMES = ("postgres", "valkey")


@dataclass(frozen=True)
class ProcessMemory:
    """One process of the stack at one moment, sizes in bytes."""

    role: str
    pid: int
    rss: int
    pss: int
    uss: int
    threads: int


def _role(process: psutil.Process, supervisor_pid: int) -> str:
    if process.pid == supervisor_pid:
        return "supervisor"
    command = " ".join(process.cmdline())
    parent = process.parent()
    parent_command = " ".join(parent.cmdline()) if parent is not None else ""
    if "watchdog.sh" in command:
        return "watchdog"
    if "rqworker" in command and parent is not None and parent.pid == supervisor_pid:
        return "rq worker"
    if "rqworker" in parent_command:
        return "rq scheduler"  # the only child a worker forks
    if "ingestor_site.web " in f"{command} ":
        return "web process"  # one granian worker without a master (ingestor_site/web.py)
    if "granian" in command and parent is not None and parent.pid == supervisor_pid:
        return "web master"
    if "granian" in parent_command:
        return "web process"
    return "other"


def memory_snapshot(supervisor_pid: int) -> list[ProcessMemory]:
    """The memory of the supervisor and every process under it but the database and Redis
    servers, sorted by role."""
    root = psutil.Process(supervisor_pid)
    found = []
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            if process.name().startswith(SERVER_NAMES):
                continue
            info = process.memory_full_info()
            found.append(
                ProcessMemory(
                    role=_role(process, supervisor_pid),
                    pid=process.pid,
                    rss=info.rss,
                    pss=getattr(info, "pss", 0),
                    uss=info.uss,
                    threads=process.num_threads(),
                )
            )
    return sorted(found, key=lambda item: (ROLES.index(item.role), item.pid))


def _mb(value: float) -> str:
    return f"{value / MB:.1f}"


def memory_table(phases: dict[str, list[ProcessMemory]]) -> str:
    """A Markdown table: a row per process, RSS / PSS (MB) per phase, and the totals."""
    names = list(phases)
    first = phases[names[0]]
    header = "| process | threads | " + " | ".join(f"{name}: RSS / PSS MB" for name in names) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(names)]
    # Rows by position within a role, so the same process lines up across phases even if a pid
    # changed (a restart) or a role has several processes.
    keys = []
    for role in ROLES:
        count = max(sum(1 for item in snapshot if item.role == role) for snapshot in phases.values())
        keys += [(role, index) for index in range(count)]
    for role, index in keys:
        cells = []
        threads = ""
        for name in names:
            same_role = [item for item in phases[name] if item.role == role]
            if index < len(same_role):
                item = same_role[index]
                cells.append(f"{_mb(item.rss)} / {_mb(item.pss)}")
                threads = threads or str(item.threads)
            else:
                cells.append("–")
        label = role if sum(1 for item in first if item.role == role) <= 1 else f"{role} {index + 1}"
        lines.append(f"| {label} | {threads} | " + " | ".join(cells) + " |")
    totals = [
        f"**{_mb(sum(i.rss for i in phases[n]))} / {_mb(sum(i.pss for i in phases[n]))}**" for n in names
    ]
    lines.append("| **total** | | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def totals(snapshot: list[ProcessMemory]) -> dict[str, float]:
    return {
        "rss_mb": sum(item.rss for item in snapshot) / MB,
        "pss_mb": sum(item.pss for item in snapshot) / MB,
        "processes": len(snapshot),
    }


# --- running the stack ---------------------------------------------------------------------------


class Supervised:
    """`python -m ingestor_site.stack run` with its own embedded servers in `data_dir`, on a free port."""

    def __init__(self, *, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL")}
        env.update(
            INGESTOR_DATA_DIR=str(data_dir), PORT=str(self.port), LOG_LEVEL="WARNING", INGESTOR_LOCAL="true"
        )
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "ingestor_site.stack", "run"],
            env=env, cwd=BASE_DIR, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def healthy_wait(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the supervisor exited with {self.process.returncode}; see {self.log.name}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"the stack did not become healthy; see {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def warm_up(url: str, messages: int = 200) -> None:
    """The routes a quiet `make run` sees: posts, health, queue status, the dashboard page."""
    with httpx.Client(base_url=url, timeout=10) as client:
        for number in range(messages):
            client.post("/messages", json={"user_id": 1, "channel_id": 1, "content": f"warm-up {number}"})
        for path in ("/health", "/queue/status", "/messages?limit=10", "/", "/metrics"):
            client.get(path)


def measure(*, load_seconds: int, connections: int) -> dict[str, Any]:
    """One fresh stack: memory at rest, after a wrk load, and settled again; the load's figures."""
    from bench import POST_LUA, drain_wait, wrk  # noqa: PLC0415  # scripts/ is on sys.path when run as a script

    shutil.rmtree(DATA_DIR, ignore_errors=True)
    DATA_DIR.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        stack = Supervised(data_dir=DATA_DIR, log_path=DATA_DIR / "stack.log")
        try:
            stack.healthy_wait()
            warm_up(stack.url)
            drain_wait(stack.url)
            time.sleep(SETTLE_S)
            phases = {"at rest": memory_snapshot(stack.process.pid)}
            script = Path(scratch) / "post.lua"
            script.write_text(POST_LUA)
            load = wrk(stack.url, connections=connections, duration_s=load_seconds, script=script)
            phases["after load"] = memory_snapshot(stack.process.pid)
            drain_wait(stack.url)
            time.sleep(SETTLE_S)
            phases["settled"] = memory_snapshot(stack.process.pid)
        finally:
            stack.stop()
    return {"phases": phases, "load": load}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1, help="fresh stacks to measure (medians printed)")
    parser.add_argument("--load-seconds", type=int, default=15, help="length of the wrk POST load")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--json", action="store_true", help="print every run's figures as JSON")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BASE_DIR / "scripts"))
    runs = [measure(load_seconds=args.load_seconds, connections=args.connections) for _ in range(args.runs)]
    if args.json:
        print(json.dumps([
            {"load": run["load"], "phases": {name: [asdict(item) for item in snapshot]
                                             for name, snapshot in run["phases"].items()}}
            for run in runs
        ], indent=2))  # fmt: skip
        return 0
    for number, run in enumerate(runs, 1):
        print(f"## run {number}\n")
        print(memory_table(run["phases"]))
        load = run["load"]
        print(f"\nwrk POST /messages -c{args.connections} {args.load_seconds}s: {load['requests_per_s']:.0f} req/s, "
              f"p50 {load.get('p50', 0):.1f} ms, p99 {load.get('p99', 0):.1f} ms, non-2xx {load['non_2xx']:.0f}\n")  # fmt: skip
    if len(runs) > 1:
        print("## medians\n")
        for phase in runs[0]["phases"]:
            rss = statistics.median(totals(run["phases"][phase])["rss_mb"] for run in runs)
            pss = statistics.median(totals(run["phases"][phase])["pss_mb"] for run in runs)
            print(f"- {phase}: RSS {rss:.1f} MB, PSS {pss:.1f} MB")
        rate = statistics.median(run["load"]["requests_per_s"] for run in runs)
        print(f"- wrk POST /messages: {rate:.0f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
