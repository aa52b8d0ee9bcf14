#!/usr/bin/env python
"""Where the CPU goes per message: a budget in µs of CPU per persisted message, stage by stage.

Starts its own embedded PostgreSQL and Redis-compatible server (fresh, under .data/bench-stages;
DATABASE_URL / REDIS_URL are ignored) and the web server (2 processes) and one worker as `make
run` does, then drives them with wrk (`apt-get install wrk`) in two workloads: single-message
`POST /messages` (64 connections) and `POST /messages/batch` with 1,000 messages a request (8
connections). For each run it measures, from the start of the load until the queue has drained:

- the CPU time (user + system) of every process: the granian master and its workers, the rq
  worker and its scheduler child, the Redis server, the PostgreSQL postmaster with all its
  children, and wrk itself; divided by the rows the run stored, in µs per message;
- inside the web and worker processes, which code used it: py-spy samples each thread
  (`py-spy record -f raw --threads --nonblocking`), each sample is mapped to a stage by the
  frames of its stack (STAGE_RULES), and each thread's measured CPU is split in proportion to
  its samples;
- Redis's own account of its commands (INFO commandstats, the difference over the run).

    python scripts/bench_stages.py [--runs 3] [--duration 10] [--workload single|batch|all]
                                   [--json] [--write BENCHMARKS.md]

Figures are medians of --runs runs. bench.py can import `stage_budget` and run it against a stack
it already has (the rows are counted before and after, nothing is reset).

How the samples are read (checked against the measured CPU of the same threads): py-spy calls a
thread active when /proc says it is runnable, and on this Python it misses some waits, so a
thread blocked in epoll or in a socket read still yields samples. Samples whose innermost frame
is such a wait (IDLE_LEAVES) are dropped; the rest are used only as proportions within their own
thread, whose CPU comes from the kernel. On a saturated machine a runnable thread also waits for
a core, so the kept samples add up to more than the CPU used (the "sampled / measured" column);
that inflation falls evenly on whatever code was running and leaves the proportions as they are.
Threads no sample reaches (granian's Rust runtime threads) count for their process's own stage.
The other ways of running py-spy, tried against the same threads' CPU under the single-message
load: unfiltered samples came to about twice the CPU (waits counted as work), `--idle` to 10-20
times, the blocking mode (pausing the process at each sample) halved the web processes'
throughput, and `--gil` came to 0.8-1.3 times but sees one thread at a time and none of the C
code that runs without the GIL (socket writes, libpq).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
sys.path.insert(0, str(BASE_DIR / "scripts"))

import psutil  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from bench import OTHER_SCRIPTS_MARKER, POST_LUA, Stack, drain_wait, state_reset, wrk, wrk_missing  # noqa: E402

from ingestor_site.embedded import fresh_services  # noqa: E402

DATA_DIR = BASE_DIR / ".data" / "bench-stages"
PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
SAMPLE_RATE = 200  # per second and thread
SECTION_TITLE = "## Where the CPU goes per message (scripts/bench_stages.py)"

# One request body of 1,000 messages per wrk connection turn, built once when the script loads:
# formatting 1,000 messages per request would make wrk itself a large line of the budget.
BATCH_LUA = """
local bodies = {}
for b = 1, 8 do
  local items = {}
  for i = 1, 1000 do
    items[i] = string.format('{"user_id":%d,"channel_id":%d,"content":"wrk batch message %d"}',
                             math.random(1, 10000), math.random(1, 100), i)
  end
  bodies[b] = '{"messages":[' .. table.concat(items, ",") .. ']}'
end
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/messages/batch", {["Content-Type"] = "application/json"},
                    bodies[counter % 8 + 1])
end
"""


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    connections: int
    lua: str


WORKLOADS = {
    "single": Workload("single `POST /messages`, 64 connections", "/messages", 64, POST_LUA),
    "batch": Workload("`POST /messages/batch` of 1,000, 8 connections", "/messages/batch", 8, BATCH_LUA),
}

# --- stages ----------------------------------------------------------------------------------------

GRANIAN = "HTTP server and ASGI (granian)"
DJANGO = "Django request/response"
JSON_DECODE = "JSON decode"
VALIDATION = "validation and the row's id"
BATCHER = "batcher"
ENQUEUE = "job creation and serialization (rq enqueue)"
WEB_METRICS = "metrics recording (web)"
REDIS_SERVER = "Redis server"
DEQUEUE = "worker dequeue and rq bookkeeping"
JOB_DECODE = "job decode"
INSERT = "insert (Python side)"
WORKER_METRICS = "metrics recording (worker)"
POSTGRES_SERVER = "PostgreSQL server"
LOAD_GENERATOR = "load generator (wrk)"

STAGES = (GRANIAN, DJANGO, JSON_DECODE, VALIDATION, BATCHER, ENQUEUE, WEB_METRICS, REDIS_SERVER,
          DEQUEUE, JOB_DECODE, INSERT, WORKER_METRICS, POSTGRES_SERVER, LOAD_GENERATOR)  # fmt: skip


class Rule(NamedTuple):
    """A frame whose file starts with `file` (py-spy's short name) and whose function starts with
    `function` ("" for any) belongs to `stage`."""

    file: str
    function: str
    stage: str


# A sample's stage is decided by the innermost frame that matches a rule (the rules of its
# process); frames of libraries that serve several stages (redis, json, asyncio, psycopg) match
# nothing and so count for the code that called them. Within one frame the first rule wins.
STAGE_RULES: dict[str, tuple[Rule, ...]] = {
    "web": (
        Rule("telemetry/", "", WEB_METRICS),
        Rule("messages_app/batcher.py", "Batcher.response_count", WEB_METRICS),
        Rule("messages_app/batcher.py", "Batcher._responses_flush", WEB_METRICS),
        Rule("messages_app/batcher.py", "", BATCHER),
        Rule("messages_app/services.py", "batch_enqueue", ENQUEUE),
        Rule("messages_app/services.py", "ingest_queue", ENQUEUE),
        Rule("messages_app/job_writer.py", "", ENQUEUE),
        Rule("messages_app/serializers.py", "", ENQUEUE),
        Rule("rq/", "", ENQUEUE),
        Rule("django_rq/", "", ENQUEUE),
        # The fast path's msgspec decode (C code, no frame of its own); its checks are _checked.
        Rule("messages_app/validation.py", "message_decode", JSON_DECODE),
        Rule("messages_app/validation.py", "batch_decode", JSON_DECODE),
        Rule("messages_app/validation.py", "", VALIDATION),
        Rule("messages_app/views.py", "_row", VALIDATION),
        Rule("uuid6/", "", VALIDATION),
        Rule("messages_app/views.py", "_json_body", JSON_DECODE),
        Rule("messages_app/", "", DJANGO),
        Rule("django/", "", DJANGO),
        Rule("asgiref/", "", DJANGO),
        # The lean handler's ASGI side: reading the body and watching for a hang-up.
        Rule("ingestor_site/handlers.py", "body_read_capped", GRANIAN),
        Rule("ingestor_site/handlers.py", "hang_up_wait", GRANIAN),
        Rule("ingestor_site/handlers.py", "ApiASGIHandler._response_unless_hung_up.<locals>.cancel", GRANIAN),
        Rule("ingestor_site/handlers.py", "", DJANGO),
        # The hand-off to the batcher's threads (the work they run matches the rules above).
        Rule("concurrent/futures/", "", BATCHER),
        Rule("ingestor_site/asgi.py", "", GRANIAN),
        Rule("channels/", "", GRANIAN),
        Rule("granian/", "", GRANIAN),
    ),
    "worker": (
        Rule("telemetry/", "", WORKER_METRICS),
        Rule("messages_app/jobs.py", "_metrics_record", WORKER_METRICS),
        Rule("messages_app/services.py", "rows_decode", JOB_DECODE),
        Rule("rq/serializers.py", "JSONSerializer.loads", JOB_DECODE),
        Rule("messages_app/serializers.py", "JSONSerializer.loads", JOB_DECODE),
        Rule("rq/job.py", "Job._deserialize_data", JOB_DECODE),
        Rule("messages_app/services.py", "", INSERT),
        Rule("messages_app/jobs.py", "", INSERT),
        Rule("django/db/", "", INSERT),
        Rule("psycopg/", "", INSERT),
        Rule("rq/", "", DEQUEUE),
        Rule("django_rq/", "", DEQUEUE),
        Rule("messages_app/", "", DEQUEUE),
    ),
}
# Where a thread's CPU goes when no rule matches its samples, or when it has no samples at all.
PROCESS_STAGE = {"web": GRANIAN, "worker": DEQUEUE}
# A sample without a single Python frame: native code (granian's runtime, a C extension) or a
# thread py-spy calls runnable while it waits; it counts for its process's own stage.
NATIVE = "(no Python frame)"

# Innermost frames of a thread that waits rather than runs (py-spy's own check misses them here).
IDLE_LEAVES = (
    ("selectors.py", "EpollSelector.select"),
    ("selectors.py", "PollSelector.select"),
    ("selectors.py", "SelectSelector.select"),
    ("threading.py", "Condition.wait"),
    ("threading.py", "Event.wait"),
    ("threading.py", "Thread.join"),
    ("concurrent/futures/thread.py", "_worker"),
    ("queue.py", "Queue.get"),
    ("redis/_parsers/socket.py", "SocketBuffer._read_from_socket"),
    ("redis/_parsers/hiredis.py", "_HiredisParser.read_from_socket"),
    ("psycopg/connection.py", "Connection.wait"),
    ("psycopg/waiting.py", ""),
)


class Frame(NamedTuple):
    function: str
    file: str


_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_THREAD = re.compile(r"^thread \((?P<tid>\d+|0x[0-9a-fA-F]+)\)")


def frame_parse(text: str) -> Frame:
    """`func (file:line)` as py-spy writes a frame; a frame without a file keeps its text."""
    match = _FRAME.match(text)
    if match is None:
        return Frame(text, "")
    return Frame(match["function"], match["file"])


def stage_of(frames: Sequence[Frame], kind: str) -> str:
    """The stage of one sample (frames from the outermost to the innermost) in a `kind` process."""
    rules = STAGE_RULES[kind]
    for frame in reversed(frames):
        for rule in rules:
            if frame.file.startswith(rule.file) and frame.function.startswith(rule.function):
                return rule.stage
    return PROCESS_STAGE[kind]


def idle(frames: Sequence[Frame]) -> bool:
    """Whether a sample shows a thread waiting (its innermost frame is a known wait)."""
    if not frames:
        return False
    leaf = frames[-1]
    return any(
        leaf.file.endswith(file) and leaf.function.startswith(function) for file, function in IDLE_LEAVES
    )


class Sample(NamedTuple):
    thread: int
    frames: tuple[Frame, ...]
    hits: int


def raw_parse(lines: Iterable[str]) -> Iterator[Sample]:
    """py-spy's raw format with --threads: `thread (TID)[: name];frame;frame... COUNT` a line."""
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        head, *rest = stack.split(";")
        thread = _THREAD.match(head)
        if thread is None:  # not recorded with --threads: the whole line is frames
            tid, frames = 0, [head, *rest]
        else:
            tid, frames = int(thread["tid"], 0), rest
        yield Sample(tid, tuple(frame_parse(text) for text in frames if text), int(count))


def thread_split(samples: Iterable[Sample], kind: str) -> dict[int, Counter[str]]:
    """Thread id -> stage -> samples, idle samples dropped; samples with no frame under NATIVE."""
    split: dict[int, Counter[str]] = {}
    for sample in samples:
        if idle(sample.frames):
            continue
        stage = stage_of(sample.frames, kind) if sample.frames else NATIVE
        split.setdefault(sample.thread, Counter())[stage] += sample.hits
    return split


def cpu_apportion(
    thread_cpu: dict[int, float], process_cpu: float, split: dict[int, Counter[str]], kind: str
) -> dict[str, float]:
    """Seconds of CPU per stage: each thread's CPU in proportion to its samples; threads without
    samples, and threads that ended during the run (process CPU not in any thread), to the
    process's own stage."""
    stages: defaultdict[str, float] = defaultdict(float)
    for tid, seconds in thread_cpu.items():
        counts = split.get(tid)
        total = sum(counts.values()) if counts else 0
        if not counts or total == 0:
            stages[PROCESS_STAGE[kind]] += seconds
            continue
        for stage, count in counts.items():
            stages[PROCESS_STAGE[kind] if stage == NATIVE else stage] += seconds * count / total
    stages[PROCESS_STAGE[kind]] += max(process_cpu - sum(thread_cpu.values()), 0.0)
    return dict(stages)


# --- measuring -------------------------------------------------------------------------------------


def process_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def threads_cpu(process: psutil.Process) -> dict[int, float]:
    return {thread.id: float(thread.user_time + thread.system_time) for thread in process.threads()}


@dataclass
class Watched:
    """One process whose CPU the budget counts; `kind` says how its samples map to stages."""

    label: str
    process: psutil.Process
    kind: str | None = None  # "web" or "worker": profiled
    cpu: float = 0.0
    threads: dict[int, float] = field(default_factory=dict)

    def snapshot(self) -> tuple[float, dict[int, float]]:
        with contextlib.suppress(psutil.Error):
            return process_cpu(self.process), threads_cpu(self.process) if self.kind else {}
        return self.cpu, dict(self.threads)


def listener_pid(url: str) -> int:
    """The process listening on the TCP port of `url` (an embedded or local server)."""
    port = urlsplit(url).port
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return int(connection.pid)
    raise RuntimeError(f"no process of this machine listens on port {port} ({url})")


def stack_processes(stack: Stack, database_url: str, redis_url: str) -> list[Watched]:
    """Every process of the pipeline, by role. PostgreSQL's children are looked up again at the end
    of the run (backends come and go)."""
    if stack.web is None:
        raise RuntimeError("the stack has no web server")
    watched: list[Watched] = []
    master = psutil.Process(stack.web.pid)
    watched.append(Watched("granian master", master))
    for index, child in enumerate(master.children(), start=1):
        watched.append(Watched(f"web process {index}", child, kind="web"))
    for index, worker in enumerate(stack.workers, start=1):
        process = psutil.Process(worker.pid)
        watched.append(Watched(f"rq worker {index}", process, kind="worker"))
        for child in process.children(recursive=True):
            watched.append(Watched(f"rq worker {index}: scheduler", child))
    watched.append(Watched("Redis server", psutil.Process(listener_pid(redis_url))))
    return watched


def postgres_cpu(postmaster: psutil.Process) -> dict[int, float]:
    """CPU of the postmaster and each of its children, by pid."""
    cpu = {postmaster.pid: process_cpu(postmaster)}
    for child in postmaster.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cpu[child.pid] = process_cpu(child)
    return cpu


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Redis command -> (calls, µs) since its start."""
    stats: dict[str, Any] = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(entry["calls"]), int(entry["usec"]))
        for name, entry in stats.items()
    }


def rows_count(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM messages").fetchone()
    return int(row[0]) if row else 0


@dataclass
class Budget:
    """One run: µs of CPU per persisted message by stage and by process, and Redis's figures."""

    workload: str
    messages: int
    seconds: float
    requests_per_s: float
    non_2xx: float
    stages: dict[str, float]
    processes: dict[str, float]
    redis_calls_per_message: float
    redis_usec_per_message: float
    redis_commands: dict[str, tuple[float, float]]  # command -> (calls, µs) per message
    sampled_over_measured: dict[str, float]  # profiled process -> kept samples' seconds / its CPU
    profiler_us: float  # py-spy's own CPU per message: not in the stages

    @property
    def total(self) -> float:
        return sum(self.stages.values())


def profiler_start(watched: Watched, output: Path, *, rate: int) -> subprocess.Popen[bytes]:
    if PY_SPY is None:
        raise RuntimeError("py-spy is not installed (pip install '.[dev]')")
    command = [PY_SPY, "record", "-f", "raw", "--threads", "--nonblocking", "-r", str(rate),
               "--pid", str(watched.process.pid), "-o", str(output)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603


def profilers_stop(profilers: list[tuple[subprocess.Popen[bytes], psutil.Process]]) -> float:
    """SIGINT each py-spy (it writes its file then); the CPU they used, in seconds."""
    used = 0.0
    for profiler, process in profilers:
        with contextlib.suppress(psutil.Error):
            used += process_cpu(process)
        profiler.send_signal(signal.SIGINT)
    for profiler, _ in profilers:
        try:
            profiler.wait(timeout=60)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait()
    return used


def stage_budget(
    stack: Stack,
    database_url: str,
    redis_url: str,
    workload: Workload,
    *,
    duration_s: int = 10,
    sample_rate: int = SAMPLE_RATE,
    profiles_dir: Path | None = None,
) -> Budget:
    """Drive `workload` with wrk for `duration_s` against a running stack, wait until the queue
    drains, and return where the CPU went, per message stored meanwhile. With `profiles_dir`, the
    raw py-spy files stay there (`<workload>-<process>-<pid>.txt`, one frame stack a line)."""
    drain_wait(stack.url)
    watched = stack_processes(stack, database_url, redis_url)
    postmaster = psutil.Process(listener_pid(database_url))
    client = redis.Redis.from_url(redis_url)
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "load.lua"
        script.write_text(workload.lua)
        profilers = []
        for index, entry in enumerate(watched):
            if entry.kind:
                profiler = profiler_start(entry, Path(scratch) / f"{index}.txt", rate=sample_rate)
                profilers.append((profiler, psutil.Process(profiler.pid)))
        time.sleep(1.0)  # py-spy attaches
        rows_before = rows_count(database_url)
        commands_before = commandstats(client)
        postgres_before = postgres_cpu(postmaster)
        for entry in watched:
            entry.cpu, entry.threads = entry.snapshot()
        started = time.monotonic()
        load = wrk(f"{stack.url}{workload.path}", connections=workload.connections, duration_s=duration_s,
                   script=script)  # fmt: skip
        drain_wait(stack.url)
        seconds = time.monotonic() - started
        ends = [entry.snapshot() for entry in watched]
        postgres_after = postgres_cpu(postmaster)
        commands_after = commandstats(client)
        profiler_s = profilers_stop(profilers)
        messages = rows_count(database_url) - rows_before
        samples: list[dict[int, Counter[str]]] = []
        for index, entry in enumerate(watched):
            profile = Path(scratch) / f"{index}.txt"
            if entry.kind is None or not profile.exists():
                samples.append({})
                continue
            samples.append(thread_split(raw_parse(profile.read_text().splitlines()), entry.kind))
            if profiles_dir is not None:
                profiles_dir.mkdir(parents=True, exist_ok=True)
                name = f"{workload.path.strip('/').replace('/', '-')}-{entry.label.replace(' ', '-')}-{entry.process.pid}.txt"
                shutil.copyfile(profile, profiles_dir / name)
    client.close()
    if messages <= 0:
        raise RuntimeError(f"{workload.name}: no message was stored; see {stack.log_dir}")
    per_message = 1e6 / messages
    stages: defaultdict[str, float] = defaultdict(float)
    processes: defaultdict[str, float] = defaultdict(float)
    checks: dict[str, float] = {}
    for entry, (cpu_end, threads_end), split in zip(watched, ends, samples, strict=True):
        used = cpu_end - entry.cpu
        label = entry.label if not entry.label.startswith("web process") else "web processes"
        processes[label] += used * per_message
        if entry.kind is None:
            stages[GRANIAN if entry.label == "granian master" else
                   REDIS_SERVER if entry.label == "Redis server" else DEQUEUE] += used * per_message  # fmt: skip
            continue
        thread_used = {tid: end - entry.threads.get(tid, 0.0) for tid, end in threads_end.items()}
        for stage, cpu in cpu_apportion(thread_used, used, split, entry.kind).items():
            stages[stage] += cpu * per_message
        # The check leaves out frameless samples: a thread that never runs Python code (granian's
        # own) shows up runnable far more often than it runs.
        framed = {tid: sum(n for stage, n in split.get(tid, Counter()).items() if stage != NATIVE)
                  for tid in thread_used}  # fmt: skip
        sampled = sum(framed.values()) / sample_rate
        measured = sum(cpu for tid, cpu in thread_used.items() if framed[tid])
        checks[entry.label] = sampled / measured if measured else 0.0
    postgres = sum(cpu - postgres_before.get(pid, 0.0) for pid, cpu in postgres_after.items())
    stages[POSTGRES_SERVER] += postgres * per_message
    processes["PostgreSQL (postmaster and backends)"] = postgres * per_message
    wrk_s = load["cpu_percent"] * duration_s / 100.0
    stages[LOAD_GENERATOR] += wrk_s * per_message
    processes["wrk"] = wrk_s * per_message
    redis_commands = {
        name: ((calls - commands_before.get(name, (0, 0))[0]) / messages,
               (usec - commands_before.get(name, (0, 0))[1]) / messages)
        for name, (calls, usec) in commands_after.items()
        if calls > commands_before.get(name, (0, 0))[0]
    }  # fmt: skip
    return Budget(
        workload=workload.name,
        messages=messages,
        seconds=seconds,
        requests_per_s=load["requests_per_s"],
        non_2xx=load["non_2xx"],
        stages={stage: stages.get(stage, 0.0) for stage in STAGES},
        processes=dict(processes),
        redis_calls_per_message=sum(calls for calls, _ in redis_commands.values()),
        redis_usec_per_message=sum(usec for _, usec in redis_commands.values()),
        redis_commands=redis_commands,
        sampled_over_measured=checks,
        profiler_us=profiler_s * per_message,
    )


# --- several runs ----------------------------------------------------------------------------------


def _median(values: Iterable[float]) -> float:
    listed = list(values)
    return statistics.median(listed) if listed else 0.0


def budgets_median(budgets: Sequence[Budget]) -> Budget:
    """The median of each figure over the runs (so the stages need not add up to the total's median)."""
    first = budgets[0]

    def median_of(pick: Any, keys: Iterable[str]) -> dict[str, float]:
        return {key: _median(pick(budget).get(key, 0.0) for budget in budgets) for key in keys}

    commands = {name for budget in budgets for name in budget.redis_commands}
    return Budget(
        workload=first.workload,
        messages=round(_median(budget.messages for budget in budgets)),
        seconds=_median(budget.seconds for budget in budgets),
        requests_per_s=_median(budget.requests_per_s for budget in budgets),
        non_2xx=_median(budget.non_2xx for budget in budgets),
        stages=median_of(lambda budget: budget.stages, first.stages),
        processes=median_of(lambda budget: budget.processes, first.processes),
        redis_calls_per_message=_median(budget.redis_calls_per_message for budget in budgets),
        redis_usec_per_message=_median(budget.redis_usec_per_message for budget in budgets),
        redis_commands={
            name: (
                _median(budget.redis_commands.get(name, (0.0, 0.0))[0] for budget in budgets),
                _median(budget.redis_commands.get(name, (0.0, 0.0))[1] for budget in budgets),
            )
            for name in commands
        },  # fmt: skip
        sampled_over_measured=median_of(
            lambda budget: budget.sampled_over_measured, first.sampled_over_measured
        ),
        profiler_us=_median(budget.profiler_us for budget in budgets),
    )


def say(text: str) -> None:
    print(f"[bench-stages] {text}", file=sys.stderr, flush=True)


def workloads_run(
    names: Sequence[str], runs: int, duration_s: int, *, sample_rate: int, profiles_dir: Path | None
) -> dict[str, list[Budget]]:
    """Fresh services and stack; each workload `runs` times, from empty tables and Redis."""
    results: dict[str, list[Budget]] = {name: [] for name in names}
    with fresh_services(DATA_DIR) as (database_url, redis_url):
        subprocess.run(  # noqa: S603
            [sys.executable, str(BASE_DIR / "manage.py"), "migrate", "--noinput", "-v", "0"],
            check=True, cwd=BASE_DIR, env={**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url},
        )  # fmt: skip
        log_dir = DATA_DIR / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        stack = Stack(database_url=database_url, redis_url=redis_url, log_dir=log_dir)
        stack.start(workers=1)
        try:
            with tempfile.TemporaryDirectory() as scratch:  # warm-up: connections, compiled queries
                warm = Path(scratch) / "warm.lua"
                warm.write_text(POST_LUA)
                wrk(f"{stack.url}/messages", connections=16, duration_s=2, script=warm)
            # Runs take turns between the workloads, so a drift in the background load hits both.
            for index in range(runs):
                for name in names:
                    drain_wait(stack.url)
                    state_reset(database_url, redis_url)
                    budget = stage_budget(
                        stack, database_url, redis_url, WORKLOADS[name], duration_s=duration_s,
                        sample_rate=sample_rate, profiles_dir=profiles_dir / f"run-{index + 1}" if profiles_dir else None,
                    )  # fmt: skip
                    say(f"{name} run {index + 1}/{runs}: {budget.messages:,} messages, "
                        f"{budget.total:,.1f} µs CPU a message")  # fmt: skip
                    results[name].append(budget)
        finally:
            stack.stop()
    return results


# --- the report ------------------------------------------------------------------------------------


def _spread(values: Sequence[float], digits: int = 1) -> str:
    if len(values) < 2:
        return f"{_median(values):,.{digits}f}"
    return f"{_median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def section_render(results: dict[str, list[Budget]], *, duration_s: int, load: tuple[float, float]) -> str:
    """The Markdown section: one stage table with a column per workload, then the processes, Redis
    and the profile check."""
    medians = {name: budgets_median(budgets) for name, budgets in results.items() if budgets}
    runs = max((len(budgets) for budgets in results.values()), default=0)
    names = list(medians)
    header = " | ".join(WORKLOADS[name].name for name in names)
    lines = [
        SECTION_TITLE,
        "",
        f"`python scripts/bench_stages.py --runs {runs} --duration {duration_s}` on "
        f"{datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC (load average {load[0]:.1f} before, {load[1]:.1f} after, "
        f"on {len(os.sched_getaffinity(0))} cores): its own embedded PostgreSQL and Valkey, granian with 2 "
        "processes and one worker as `make run` starts them, wrk for the load. Each run counts the CPU "
        "(user + system) every process used from the start of the load until the queue had drained, "
        "divided by the rows the run stored; py-spy's samples split the web and worker processes' CPU "
        "into stages. Medians of the runs, min–max in brackets; µs of CPU per message.",
        "",
        f"| stage | {header} |",
        "|---|" + "---:|" * len(names),
    ]
    for stage in STAGES:
        cells = [_spread([budget.stages[stage] for budget in results[name]]) for name in names]
        lines.append(f"| {stage} | {' | '.join(cells)} |")
    totals = [_spread([budget.total for budget in results[name]]) for name in names]
    lines.append(f"| **total** | {' | '.join(f'**{cell}**' for cell in totals)} |")
    lines += [
        "",
        "| per process (µs a message) | " + header + " |",
        "|---|" + "---:|" * len(names),
    ]
    labels = list(dict.fromkeys(label for name in names for label in medians[name].processes))
    for label in labels:
        cells = [f"{medians[name].processes.get(label, 0.0):,.1f}" for name in names]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines.append(f"| py-spy (the profiler; in no line above) | {' | '.join(f'{medians[name].profiler_us:,.1f}' for name in names)} |")  # fmt: skip
    lines += ["", "| the runs | " + header + " |", "|---|" + "---:|" * len(names)]
    rows: dict[str, Callable[[Budget], str]] = {
        "messages stored a run": lambda budget: f"{budget.messages:,}",
        "requests/s (wrk)": lambda budget: f"{budget.requests_per_s:,.0f}",
        "non-2xx answers a run": lambda budget: f"{budget.non_2xx:,.0f}",
        "seconds, load + drain": lambda budget: f"{budget.seconds:,.1f}",
        "Redis commands a message": lambda budget: f"{budget.redis_calls_per_message:,.3f}",
        "Redis's own µs a message (commandstats)": lambda budget: f"{budget.redis_usec_per_message:,.2f}",
    }
    for title, cell in rows.items():
        lines.append(f"| {title} | {' | '.join(cell(medians[name]) for name in names)} |")
    for name in names:
        top = sorted(medians[name].redis_commands.items(), key=lambda item: -item[1][1])[:6]
        text = ", ".join(f"`{command}` {calls:.3f} calls / {usec:.2f} µs" for command, (calls, usec) in top)
        lines.append(f"| Redis's top commands a message, {WORKLOADS[name].name} | {text} |")
    checks = "; ".join(
        f"{WORKLOADS[name].name}: " + ", ".join(f"{label} {ratio:.2f}" for label, ratio in medians[name].sampled_over_measured.items())
        for name in names
    )  # fmt: skip
    lines += [
        "",
        "Kept py-spy samples as seconds, over the measured CPU of the same threads (sampled / "
        f"measured): {checks}. Above 1, runnable threads waited for a core (the machine was "
        "saturated); that inflation spreads over whatever code was running and leaves each thread's "
        "proportions as they are. The stage rules (`STAGE_RULES` in the script) name the innermost "
        "app or framework frame of each sample; Redis client work counts for the stage that called it.",
        "",
    ]
    return "\n".join(lines)


def section_write(path: Path, section: str) -> None:
    """Put `section` below OTHER_SCRIPTS_MARKER in `path`, replacing this script's earlier one."""
    text = path.read_text() if path.exists() else ""
    if OTHER_SCRIPTS_MARKER not in text:
        text = text.rstrip("\n") + f"\n\n{OTHER_SCRIPTS_MARKER}\n"
    start = text.find(SECTION_TITLE, text.find(OTHER_SCRIPTS_MARKER))
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        following = re.search(r"^## ", text[start + len(SECTION_TITLE) :], flags=re.MULTILINE)
        end = start + len(SECTION_TITLE) + following.start() if following else len(text)
        text = text[:start] + section.rstrip("\n") + "\n\n" + text[end:].lstrip("\n")
    path.write_text(text.rstrip("\n") + "\n")


def arguments_parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per workload; figures are medians (default 3)"
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of load a run (default 10)")
    parser.add_argument(
        "--workload", choices=[*WORKLOADS, "all"], default="all", help="which workload (default both)"
    )
    parser.add_argument(
        "--rate", type=int, default=SAMPLE_RATE, help=f"py-spy samples a second (default {SAMPLE_RATE})"
    )
    parser.add_argument("--profiles", type=Path, help="keep the raw py-spy files in this folder")
    parser.add_argument("--json", action="store_true", help="print every run's budget as JSON instead")
    parser.add_argument("--write", type=Path, help="also put the section into this file (BENCHMARKS.md)")
    return parser.parse_args(argv)


def main() -> int:
    args = arguments_parse()
    if wrk_missing():
        return 2
    if PY_SPY is None:
        say("py-spy is not installed (pip install '.[dev]')")
        return 2
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    load_before = os.getloadavg()[0]
    results = workloads_run(
        names, args.runs, args.duration, sample_rate=args.rate, profiles_dir=args.profiles
    )
    if args.json:
        json.dump(
            {name: {"runs": [asdict(budget) for budget in budgets],
                    "median": asdict(budgets_median(budgets))} for name, budgets in results.items()},
            sys.stdout, indent=2,
        )  # fmt: skip
        print()
    section = section_render(results, duration_s=args.duration, load=(load_before, os.getloadavg()[0]))
    if not args.json:
        print(section)
    if args.write:
        section_write(args.write, section)
        say(f"wrote the section into {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
