"""A Redis master, its replica and three Sentinels as processes we start, kill and stop.

For the failover test (all on loopback) and the multi-host cluster script (each server in its
own network namespace: `wrap` is then the `ip netns exec NAME` prefix). It runs Debian's
`redis-server` and `redis-sentinel`; `missing_binaries()` says which are absent so a caller can
skip with the reason. Nothing is persisted to disk (no RDB, no AOF): what survives a kill is
what the replica had received, which is the point of the measurement.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ingestor_site.embedded import free_port

BINARIES = ("redis-server", "redis-sentinel", "redis-cli")


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


@dataclass
class RedisNode:
    """One server: where it listens, and the command prefix that runs a program where it lives."""

    name: str
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    wrap: list[str] = field(default_factory=list)
    # Where the server itself listens when something else (a proxy) owns host:port; it then
    # announces host:port as its address to the master and the sentinels.
    listen: tuple[str, int] | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def cli(self, *args: str, timeout_s: float = 2.0) -> str:
        """One redis-cli command against this server; its reply as text ('' if it did not answer)."""
        try:
            result = subprocess.run(  # noqa: S603
                [*self.wrap, "redis-cli", "-h", self.host, "-p", str(self.port), *args],
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return ""
        return result.stdout.decode(errors="replace").strip() if result.returncode == 0 else ""


class ReplicatedRedis:
    """A master, one replica and three sentinels (quorum 2) watching them under `master_name`.

    `down_after_ms` is how long a sentinel waits for the master to answer before it calls it down
    (Redis's default 30 s; small here so a failover fits in a test); `failover_timeout_ms` bounds
    one failover attempt before another sentinel may try (default 3 minutes).
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        master_name: str = "ingestor",
        master: RedisNode | None = None,
        replica: RedisNode | None = None,
        sentinels: list[RedisNode] | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.master_name = master_name
        self.nodes = [master or RedisNode("redis-a"), replica or RedisNode("redis-b")]
        self.sentinels = sentinels or [RedisNode(f"sentinel-{index}") for index in (1, 2, 3)]
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self._logs: list[IO[bytes]] = []

    @property
    def sentinel_setting(self) -> str:
        """The REDIS_SENTINELS value for clients."""
        return ",".join(f"{node.host}:{node.port}" for node in self.sentinels)

    def _spawn(self, node: RedisNode, program: str, config: str) -> None:
        node_dir = self.base_dir / node.name
        node_dir.mkdir(parents=True, exist_ok=True)
        config_path = node_dir / f"{program}.conf"
        # Sentinel rewrites its config file as it learns the topology: write it only once.
        if program == "redis-server" or not config_path.exists():
            config_path.write_text(config)
        log = (node_dir / f"{program}.log").open("ab")
        self._logs.append(log)
        node.process = subprocess.Popen(  # noqa: S603
            [*node.wrap, program, str(config_path)],
            cwd=node_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_answering(node)

    def _wait_answering(self, node: RedisNode, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"{node.name} exited with code {node.process.returncode} while starting")
            if node.cli("PING") == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError(f"{node.name} did not answer PING within {timeout_s:.0f}s")

    def _server_config(self, node: RedisNode, replica_of: RedisNode | None) -> str:
        bind, port = node.listen or node.address
        lines = [
            f"bind {bind}",
            f"port {port}",
            f"dir {self.base_dir / node.name}",
            "protected-mode no",
            'save ""',
            "appendonly no",
            # Sentinel reconfigures a killed master that comes back as a replica of the new one.
            "replica-read-only yes",
        ]
        if node.listen is not None:
            lines += [f"replica-announce-ip {node.host}", f"replica-announce-port {node.port}"]
        if replica_of is not None:
            lines.append(f"replicaof {replica_of.host} {replica_of.port}")
        return "\n".join(lines) + "\n"

    def _sentinel_config(self, node: RedisNode) -> str:
        master = self.nodes[0]
        name = self.master_name
        return (
            "\n".join(
                [
                    f"bind {node.host}",
                    f"port {node.port}",
                    f"dir {self.base_dir / node.name}",
                    "protected-mode no",
                    f"sentinel monitor {name} {master.host} {master.port} 2",
                    f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                    f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {name} 1",
                ]
            )
            + "\n"
        )

    def start(self) -> ReplicatedRedis:
        master, replica = self.nodes
        self._spawn(master, "redis-server", self._server_config(master, None))
        self._spawn(replica, "redis-server", self._server_config(replica, master))
        for sentinel in self.sentinels:
            self._spawn(sentinel, "redis-sentinel", self._sentinel_config(sentinel))
        self.wait_ready()
        return self

    def master_by_sentinels(self) -> tuple[str, int] | None:
        """The master address a majority of the sentinels that answer agree on."""
        votes: dict[tuple[str, int], int] = {}
        for sentinel in self.sentinels:
            reply = sentinel.cli("SENTINEL", "get-master-addr-by-name", self.master_name).split()
            if len(reply) == 2 and reply[1].isdigit():
                address = (reply[0], int(reply[1]))
                votes[address] = votes.get(address, 0) + 1
        best = max(votes.items(), key=lambda item: item[1], default=None)
        return best[0] if best and best[1] >= 2 else None

    def node_at(self, address: tuple[str, int]) -> RedisNode:
        return next(node for node in self.nodes if node.address == address)

    def replicas_in_sync(self, master: RedisNode) -> int:
        info = master.cli("INFO", "replication")
        return sum(1 for line in info.splitlines() if line.startswith("slave") and "state=online" in line)

    def wait_ready(self, timeout_s: float = 30.0) -> RedisNode:
        """Until the sentinels agree on a live master, it has its replica online and every
        sentinel knows the other two (a failover needs a quorum of them); returns the master."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            address = self.master_by_sentinels()
            if address is not None:
                master = self.node_at(address)
                if (
                    master.cli("ROLE").startswith("master")
                    and self.replicas_in_sync(master) >= 1
                    and all(
                        _field(sentinel.cli("SENTINEL", "master", self.master_name), "num-other-sentinels")
                        == str(len(self.sentinels) - 1)
                        for sentinel in self.sentinels
                    )
                ):
                    return master
            time.sleep(0.1)
        raise RuntimeError(
            f"the sentinels did not report a master with an online replica within {timeout_s}s"
        )

    def kill(self, node: RedisNode) -> None:
        """kill -9: no chance to finish anything, as when a host loses power."""
        if node.process is not None and node.process.poll() is None:
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=10)

    def restart(self, node: RedisNode) -> None:
        """Start a killed server again, as a replica of the master the sentinels name now.

        Started as a master, Sentinel would demote it too, but only after seeing it claim the role
        for a while (about 10-20 s here): a supervisor that asks the sentinels first saves that.
        """
        address = self.master_by_sentinels()
        master = self.node_at(address) if address is not None and address != node.address else None
        self._spawn(node, "redis-server", self._server_config(node, master))

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            if node.process is None or node.process.poll() is not None:
                continue
            node.process.terminate()
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()


def _field(reply: str, name: str) -> str | None:
    """A value from redis-cli's flat `SENTINEL master` reply (names and values on alternate lines)."""
    lines = reply.splitlines()
    for index in range(0, len(lines) - 1, 2):
        if lines[index] == name:
            return lines[index + 1]
    return None
