#!/usr/bin/env python
"""A small multi-host cluster on this one machine, a load through it, and a host killed at a time.

    sudo .venv/bin/python scripts/cluster.py [--phase-s 8] [--concurrent 32] [--delay-ms 0.5]

Every host is a Linux network namespace (`ip netns`, so: root) on one private /24, joined by veth
links to a bridge in a namespace of its own; no address lives outside the namespaces it creates,
and it deletes them (and stops every process it started) when done, also on failure:

    load        the load generator (scripts/load_test.py, verifying by id in PostgreSQL)
    lb          HAProxy, round robin over the two web hosts, health-checked on /health/live
    web1, web2  granian + the app, REDIS_SENTINELS
    worker1, 2  one rq worker each, restarted when it exits (as a supervisor would)
    redis-a, b  Redis master and replica (no persistence), announced through their proxies
    sentinel1-3 three sentinels, quorum 2, down-after 1000 ms, failover-timeout 5000 ms
    pg          PostgreSQL (the embedded one)

This kernel has no netem, so every server host takes its traffic through scripts/delay_proxy.py,
which delays each chunk by --delay-ms each way: every hop between tiers (load -> lb -> web ->
Redis/PostgreSQL, worker -> Redis/PostgreSQL, replica -> master) gains that latency.

It runs, each for --phase-s seconds of closed-loop single messages: baselines with and without
group commit (BATCH_SIZE 1), with no added latency and with --delay-ms, and with
INGEST_REDIS_MIN_REPLICAS=1; then a web host, a worker host and the Redis master killed (kill -9)
a third of the way through a phase, each brought back (the old master as a replica) before the
next; the master once more with INGEST_REDIS_MIN_REPLICAS=1. For each phase it prints, as Markdown,
throughput acknowledged and persisted, client p50/p99, 503s, what was lost or duplicated and
receipt -> commit p99, and for the baselines the CPU each tier used and Redis's commands and bytes
per message. Each phase's raw report goes to .data/cluster/logs/phases.json (`--from-json` prints
the tables again from it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

import psutil  # noqa: E402

from ingestor_site.processes import WORKER_SETTINGS  # noqa: E402
from ingestor_site.replicated_redis import RedisNode, ReplicatedRedis, missing_binaries  # noqa: E402

PREFIX = "ingc-"
SUBNET = "10.250.0"
PYTHON = sys.executable
PROXY = str(BASE_DIR / "scripts" / "delay_proxy.py")
LOAD_TEST = str(BASE_DIR / "scripts" / "load_test.py")
MANAGE = str(BASE_DIR / "manage.py")
DATA_DIR = BASE_DIR / ".data" / "cluster"
HOSTS = {  # name: last byte of its address
    "load": 2,
    "lb": 3,
    "web1": 11,
    "web2": 12,
    "worker1": 21,
    "worker2": 22,
    "redis-a": 31,
    "redis-b": 32,
    "sentinel1": 41,
    "sentinel2": 42,
    "sentinel3": 43,
    "pg": 51,
}
PUBLIC_PORT = {"lb": 8080, "web": 8000, "redis": 6379, "pg": 5432}
LOCAL_PORT = {"lb": 8081, "web": 8001, "redis": 6380, "pg": 5433}
# Every message its own job, flushed at once: what group commit is compared with.
NO_GROUP_COMMIT = {"BATCH_SIZE": "1", "BATCH_LINGER_MS": "0"}


def say(text: str) -> None:
    print(f"[cluster] {text}", file=sys.stderr, flush=True)


def address(host: str) -> str:
    return f"{SUBNET}.{HOSTS[host]}"


def netns(host: str) -> str:
    return f"{PREFIX}{host}"


def in_host(host: str) -> list[str]:
    return ["ip", "netns", "exec", netns(host)]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)  # noqa: S603, S607


# --- the network ---------------------------------------------------------------------------------


class Network:
    """The namespaces and links this script creates, and removes again."""

    switch = f"{PREFIX}switch"

    def __init__(self) -> None:
        self.created: list[str] = []

    def build(self) -> None:
        existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout  # noqa: S607
        leftovers = [line.split()[0] for line in existing.splitlines() if line.startswith(PREFIX)]
        if leftovers:
            raise SystemExit(f"namespaces {leftovers} exist already (another run?); remove them first")
        ip("netns", "add", self.switch)
        self.created.append(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        ip("-n", self.switch, "link", "set", "lo", "up")
        for number, host in enumerate(HOSTS, start=1):
            ip("netns", "add", netns(host))
            self.created.append(netns(host))
            inside, outside = f"{PREFIX}h{number}", f"{PREFIX}s{number}"
            # Created in the switch namespace and one end moved: nothing is ever up outside ours.
            ip("-n", self.switch, "link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("-n", self.switch, "link", "set", inside, "netns", netns(host))
            ip("-n", self.switch, "link", "set", outside, "master", "br0", "up")
            ip("-n", netns(host), "link", "set", inside, "name", "eth0")
            ip("-n", netns(host), "addr", "add", f"{address(host)}/24", "dev", "eth0")
            ip("-n", netns(host), "link", "set", "eth0", "up")
            ip("-n", netns(host), "link", "set", "lo", "up")

    def remove(self) -> None:
        # Deleting a namespace deletes the veth ends inside it, and so their peers.
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], check=False)  # noqa: S603, S607
        self.created.clear()


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Process:
    """One process we started inside a host, by pid (its own process group)."""

    label: str
    host: str
    command: list[str]
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self, log_dir: Path) -> Process:
        log = (log_dir / f"{self.label}.log").open("ab")
        self.popen = subprocess.Popen(  # noqa: S603
            [*in_host(self.host), *self.command],
            env=self.env,
            cwd=BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def cpu_s(self) -> float:
        """CPU seconds of the process and its live children so far."""
        if not self.alive or self.popen is None:
            return 0.0
        total = 0.0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.popen.pid)
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    total += times.user + times.system
        return total


@dataclass
class Cluster:
    delay_ms: float
    log_dir: Path
    network: Network = field(default_factory=Network)
    processes: list[Process] = field(default_factory=list)
    proxies: dict[str, Process] = field(default_factory=dict)
    redis: ReplicatedRedis | None = None
    workers: dict[str, Process] = field(default_factory=dict)
    webs: dict[str, Process] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)  # hosts killed on purpose: not restarted
    web_settings: dict[str, str] = field(default_factory=dict)  # the web hosts' extra environment
    _watching: threading.Event = field(default_factory=threading.Event)

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@{address('pg')}:{PUBLIC_PORT['pg']}/cluster"

    def app_env(self, **extra: str) -> dict[str, str]:
        assert self.redis is not None
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": "redis://sentinel-managed/0",
            "REDIS_SENTINELS": self.redis.sentinel_setting,
            "REDIS_MASTER_NAME": self.redis.master_name,
            "ALLOWED_HOSTS": "*",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    def run(self, label: str, host: str, command: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(label, host, command, env or dict(os.environ)).start(self.log_dir)
        self.processes.append(process)
        return process

    def proxy_start(self, host: str, tier: str) -> None:
        listen = f"{address(host)}:{PUBLIC_PORT[tier]}"
        target = f"127.0.0.1:{LOCAL_PORT[tier]}"
        self.proxies[host] = self.run(
            f"proxy-{host}",
            host,
            [PYTHON, PROXY, "--listen", listen, "--to", target, "--delay-ms", str(self.delay_ms)],
        )

    def proxies_restart(self, delay_ms: float) -> None:
        """Every hop's latency changes: the proxies start again with the new delay."""
        self.delay_ms = delay_ms
        tiers = {host: tier for host, tier in self._proxy_tiers().items() if host in self.proxies}
        for host in tiers:
            self.proxies[host].kill()
        for host, tier in tiers.items():
            self.proxy_start(host, tier)
        # Every pooled connection broke with its proxy: fresh web and worker processes start
        # with fresh pools instead of each failing a request per broken connection first.
        for worker in self.workers.values():
            worker.kill(signal.SIGTERM)  # started again by _keep_workers
        self.webs_restart(self.web_settings)

    @staticmethod
    def _proxy_tiers() -> dict[str, str]:
        return {"lb": "lb", "web1": "web", "web2": "web", "redis-a": "redis", "redis-b": "redis", "pg": "pg"}

    def start(self) -> None:
        self.network.build()
        say(f"{len(HOSTS)} hosts in namespaces {PREFIX}*, {SUBNET}.0/24 inside them only")
        for host, tier in self._proxy_tiers().items():
            self.proxy_start(host, tier)
        # PostgreSQL: the embedded server, on the pg host's loopback behind its proxy.
        self.run("postgres", "pg", [PYTHON, __file__, "postgres-host", str(DATA_DIR / "postgres")])
        self.redis = ReplicatedRedis(
            DATA_DIR / "redis",
            master=self._redis_node("redis-a"),
            replica=self._redis_node("redis-b"),
            sentinels=[
                RedisNode(name, host=address(name), port=26379, wrap=in_host(name))
                for name in ("sentinel1", "sentinel2", "sentinel3")
            ],
            down_after_ms=1000,
            failover_timeout_ms=5000,
        ).start()
        say("Redis master, replica and three sentinels ready")
        self._wait_for(lambda: self._postgres_ready(), "PostgreSQL", 90)
        subprocess.run(  # noqa: S603
            [*in_host("worker1"), PYTHON, MANAGE, "migrate", "--noinput", "-v", "0"],
            env=self.app_env(), cwd=BASE_DIR, check=True,
        )  # fmt: skip
        self.lb_start()
        for host in ("web1", "web2"):
            self.web_start(host)
        for host in ("worker1", "worker2"):
            self.worker_start(host)
        threading.Thread(target=self._keep_workers, daemon=True).start()
        self._wait_for(self._api_ready, "the API through the load balancer", 60)
        say("web, workers and load balancer ready")

    def _redis_node(self, host: str) -> RedisNode:
        return RedisNode(
            host, host=address(host), port=PUBLIC_PORT["redis"], wrap=in_host(host),
            listen=("127.0.0.1", LOCAL_PORT["redis"]),
        )  # fmt: skip

    def _postgres_ready(self) -> bool:
        result = subprocess.run(  # noqa: S603
            [*in_host("worker1"), PYTHON, "-c", f"import psycopg; psycopg.connect({self.database_url!r}, connect_timeout=2).close()"],
            capture_output=True, check=False,
        )  # fmt: skip
        return result.returncode == 0

    def _api_ready(self) -> bool:
        result = subprocess.run(  # noqa: S603
            [*in_host("load"), "curl", "-sf", "-o", "/dev/null", "-m", "2", f"http://{address('lb')}:{PUBLIC_PORT['lb']}/health"],
            check=False,
        )  # fmt: skip
        return result.returncode == 0

    @staticmethod
    def _wait_for(predicate: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{what} not ready within {timeout_s:.0f}s")

    def lb_start(self) -> None:
        config = self.log_dir / "haproxy.cfg"
        servers = "\n".join(
            f"    server {host} {address(host)}:{PUBLIC_PORT['web']} check inter 500 fall 2 rise 2"
            for host in ("web1", "web2")
        )
        config.write_text(
            "global\n    maxconn 4096\n"
            "defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n"
            "    timeout server 30s\n    retries 2\n    option redispatch\n"
            f"frontend api\n    bind 127.0.0.1:{LOCAL_PORT['lb']}\n    default_backend web\n"
            f"backend web\n    balance roundrobin\n    option httpchk GET /health/live\n{servers}\n"
        )
        self.run("haproxy", "lb", ["haproxy", "-db", "-f", str(config)])

    def web_start(self, host: str) -> None:
        self.webs[host] = self.run(
            host,
            host,
            [PYTHON, "-m", "granian", "--interface", "asginl", "--host", "127.0.0.1", "--port",
             str(LOCAL_PORT["web"]), "--workers", "1", "--log-level", "warning", "ingestor_site.asgi:application"],
            self.app_env(**self.web_settings),
        )  # fmt: skip

    def worker_start(self, host: str) -> None:
        name = f"{host}-{time.monotonic_ns()}"
        self.workers[host] = self.run(
            host,
            host,
            [PYTHON, MANAGE, "rqworker", "ingest", "--settings", WORKER_SETTINGS, "--name", name],
            self.app_env(),
        )

    def _keep_workers(self) -> None:
        """A worker that exits (rq quits on a Redis connection error mid-job) starts again."""
        while not self._watching.wait(1.0):
            for host, worker in list(self.workers.items()):
                if worker.popen is not None and worker.popen.poll() is not None and host not in self.down:
                    self.worker_start(host)

    def stop(self) -> None:
        self._watching.set()
        for process in reversed(self.processes):
            if process.alive:
                process.kill(signal.SIGTERM)
        if self.redis is not None:
            self.redis.stop()
        self.network.remove()
        # The logs stay for a look afterwards; the database's files need not.
        shutil.rmtree(DATA_DIR / "postgres", ignore_errors=True)

    # --- measuring -------------------------------------------------------------------------------

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far per tier (live processes only)."""
        tiers = {"web": list(self.webs.values()), "worker": list(self.workers.values())}
        tiers["postgres"] = [process for process in self.processes if process.label == "postgres"]
        tiers["proxies"] = list(self.proxies.values())
        result = {tier: sum(process.cpu_s() for process in processes) for tier, processes in tiers.items()}
        redis_cpu = 0.0
        assert self.redis is not None
        for node in self.redis.nodes:
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(node.process.pid).cpu_times()
                    redis_cpu += times.user + times.system
        result["redis"] = redis_cpu
        return result

    def redis_stats(self) -> dict[str, int]:
        """Commands and bytes the master has handled so far."""
        assert self.redis is not None
        master = self.redis.master_by_sentinels()
        if master is None:
            return {}
        info = self.redis.node_at(master).cli("INFO", "stats")
        wanted = ("total_commands_processed", "total_net_input_bytes", "total_net_output_bytes")
        stats = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return {key: int(stats[key]) for key in wanted if key in stats}

    def load(
        self, *, duration_s: float, concurrent: int, batch_size: int | None = None
    ) -> subprocess.Popen[str]:
        args = [
            *in_host("load"), PYTHON, LOAD_TEST, "--url", f"http://{address('lb')}:{PUBLIC_PORT['lb']}",
            "--json", "--no-progress", "--verify", "--database-url", self.database_url, "--duration", f"{duration_s}s",
            "--concurrent", str(concurrent), "--verify-timeout", "90s",
        ]  # fmt: skip
        if batch_size:
            args += ["--batch-size", str(batch_size)]
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=BASE_DIR)  # noqa: S603

    # --- faults ----------------------------------------------------------------------------------

    def kill_web(self, host: str) -> Callable[[], None]:
        self.webs[host].kill()
        self.proxies[host].kill()

        def bring_back() -> None:
            self.proxy_start(host, "web")
            self.web_start(host)
            self._wait_for(self._api_ready, "the API", 60)

        return bring_back

    def webs_restart(self, web_settings: dict[str, str]) -> None:
        """The web processes again, with other settings."""
        self.web_settings = web_settings
        for host in list(self.webs):
            self.webs[host].kill(signal.SIGTERM)
            self.web_start(host)
        self._wait_for(self._api_ready, "the API", 60)
        time.sleep(1.5)  # both web hosts up again (HAProxy checks every 500 ms, rise 2)

    def kill_worker(self, host: str) -> Callable[[], None]:
        self.down.add(host)
        self.workers[host].kill()

        def bring_back() -> None:
            self.down.discard(host)
            self.worker_start(host)

        return bring_back

    def kill_redis_master(self) -> Callable[[], None]:
        assert self.redis is not None
        master_address = self.redis.master_by_sentinels()
        assert master_address is not None
        master = self.redis.node_at(master_address)
        servers = self.redis
        servers.kill(master)
        self.proxies[master.name].kill()

        def bring_back() -> None:
            self._wait_for(
                lambda: servers.master_by_sentinels() not in (None, master_address), "promotion", 60
            )
            self.proxy_start(master.name, "redis")
            servers.restart(master)
            servers.wait_ready(timeout_s=60)

        return bring_back


# --- phases --------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    delay_ms: float
    fault: str | None = None  # "web", "worker", "redis"
    web_settings: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    redis: dict[str, int] = field(default_factory=dict)


def phase_run(cluster: Cluster, phase: Phase, *, duration_s: float, concurrent: int) -> None:
    say(f"phase: {phase.name}")
    cpu_before, redis_before = cluster.cpu(), cluster.redis_stats()
    load = cluster.load(duration_s=duration_s, concurrent=concurrent)
    bring_back: Callable[[], None] | None = None
    if phase.fault:
        time.sleep(duration_s / 3)
        say(f"  kill -9 the {phase.fault} host")
        bring_back = {
            "web": lambda: cluster.kill_web("web1"),
            "worker": lambda: cluster.kill_worker("worker1"),
            "redis": cluster.kill_redis_master,
        }[phase.fault]()
    if phase.fault == "redis" and bring_back is not None:
        bring_back()  # the old master returns as a replica as soon as the sentinels promoted
        bring_back = None
    stdout, stderr = load.communicate(timeout=duration_s + 240)
    if load.returncode not in (0, 1):
        raise RuntimeError(f"load_test.py exited {load.returncode}: {stderr[-2000:]}")
    phase.report = json.loads(stdout)
    cpu_after, redis_after = cluster.cpu(), cluster.redis_stats()
    phase.cpu = {tier: cpu_after[tier] - cpu_before.get(tier, 0.0) for tier in cpu_after}
    if phase.fault is None:
        phase.redis = {key: redis_after.get(key, 0) - redis_before.get(key, 0) for key in redis_after}
    if bring_back is not None:
        bring_back()
    time.sleep(2)


def markdown(phases: list[Phase], args: argparse.Namespace) -> str:
    lines = [
        f"Single messages, closed loop, {args.concurrent} connections, {args.phase_s:g} s a phase; 2 web hosts "
        "(1 granian process each), 2 worker hosts, Redis master + replica + 3 sentinels, PostgreSQL.",
        "",
        "| phase | added latency per hop | msg/s acknowledged | client p50 / p99 ms | 503s | other failures "
        "| acknowledged | lost | duplicated | msg/s persisted | receipt → commit p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in phases:
        report = phase.report
        failures = report.get("failures", {})
        others = sum(count for cause, count in failures.items() if cause != "HTTP 503")
        verify = report.get("verify", {})
        lines.append(
            f"| {phase.name} | {phase.delay_ms:g} ms | {report['throughput_msgs_per_s']:,.0f} "
            f"| {report['latency_ms'].get('p50', 0):.1f} / {report['latency_ms'].get('p99', 0):.1f} "
            f"| {failures.get('HTTP 503', 0):,} | {others} | {report.get('succeeded', 0):,} "
            f"| {verify.get('lost', '–')} | {verify.get('duplicated', '–')} "
            f"| {verify.get('persisted_throughput_msgs_per_s') or 0:,.0f} "
            f"| {(report.get('e2e_latency_ms') or {}).get('p99') or 0:,.0f} |"
        )
    lines += ["", "CPU per message (ms) and Redis traffic per message, baseline phases:", ""]
    lines += [
        "| phase | web | worker | PostgreSQL | Redis | proxies | Redis commands | Redis bytes in / out |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for phase in phases:
        if phase.fault is not None:
            continue
        count = max(phase.report.get("succeeded", 0), 1)
        per = {tier: seconds * 1000 / count for tier, seconds in phase.cpu.items()}
        redis = phase.redis
        lines.append(
            f"| {phase.name} | {per.get('web', 0):.3f} | {per.get('worker', 0):.3f} | {per.get('postgres', 0):.3f} "
            f"| {per.get('redis', 0):.3f} | {per.get('proxies', 0):.3f} "
            f"| {redis.get('total_commands_processed', 0) / count:.2f} "
            f"| {redis.get('total_net_input_bytes', 0) / count:,.0f} / {redis.get('total_net_output_bytes', 0) / count:,.0f} |"
        )
    return "\n".join(lines)


def postgres_host(data_dir: str) -> int:
    """Inside the pg namespace: the embedded PostgreSQL on its loopback until SIGTERM."""
    from ingestor_site.embedded import EmbeddedPostgres

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    postgres = EmbeddedPostgres(Path(data_dir), port=LOCAL_PORT["pg"], database="cluster").start()
    try:
        stop.wait()
    finally:
        postgres.stop()
    return 0


@contextlib.contextmanager
def cluster_running(delay_ms: float, log_dir: Path) -> Iterator[Cluster]:
    cluster = Cluster(delay_ms=delay_ms, log_dir=log_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        say("stopping every process and removing the namespaces")
        cluster.stop()


def main() -> int:
    if sys.argv[1:2] == ["postgres-host"]:
        return postgres_host(sys.argv[2])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phase-s", type=float, default=8.0, help="seconds of load per phase (default 8)")
    parser.add_argument("--concurrent", type=int, default=32, help="load generator connections (default 32)")
    parser.add_argument(
        "--delay-ms", type=float, default=0.5, help="added one-way latency per hop (default 0.5)"
    )
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    parser.add_argument(
        "--from-json", type=Path, help="only print the report again from a run's logs/phases.json"
    )
    args = parser.parse_args()
    if args.from_json:
        phases = [Phase(**item) for item in json.loads(args.from_json.read_text())]
        print(markdown(phases, args))
        return 0
    if os.geteuid() != 0:
        say("needs root (ip netns)")
        return 2
    missing = [name for name in ("ip", "haproxy", "curl") if shutil.which(name) is None] + missing_binaries()
    if missing:
        say(
            f"missing: {', '.join(missing)} (Debian: apt-get install iproute2 haproxy curl redis-server redis-sentinel)"
        )
        return 2
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    log_dir = DATA_DIR / "logs"
    log_dir.mkdir(parents=True)
    one_replica = {"INGEST_REDIS_MIN_REPLICAS": "1"}
    phases = [
        Phase("baseline", 0.0),
        Phase("baseline, no group commit", 0.0, web_settings=NO_GROUP_COMMIT),
        Phase("baseline, no group commit", args.delay_ms, web_settings=NO_GROUP_COMMIT),
        Phase("baseline", args.delay_ms),
        Phase("baseline, INGEST_REDIS_MIN_REPLICAS=1", args.delay_ms, web_settings=one_replica),
        Phase("web host killed", args.delay_ms, "web"),
        Phase("worker host killed", args.delay_ms, "worker"),
        Phase("Redis master killed", args.delay_ms, "redis"),
        Phase("Redis master killed, INGEST_REDIS_MIN_REPLICAS=1", args.delay_ms, "redis", one_replica),
    ]
    started = time.monotonic()
    with cluster_running(0.0, log_dir) as cluster:
        for phase in phases:
            if phase.delay_ms != cluster.delay_ms:
                cluster.proxies_restart(phase.delay_ms)
            if phase.web_settings != cluster.web_settings:
                cluster.webs_restart(phase.web_settings)
            phase_run(cluster, phase, duration_s=args.phase_s, concurrent=args.concurrent)
            say(
                f"  {phase.report['throughput_msgs_per_s']:,.0f} msg/s, failures {phase.report.get('failures')}"
            )
    (log_dir / "phases.json").write_text(json.dumps([phase.__dict__ for phase in phases], indent=1))
    report = markdown(phases, args)
    say(f"done in {time.monotonic() - started:.0f}s")
    print(report)
    if args.output:
        args.output.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
