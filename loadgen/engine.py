"""Sending: a fixed pool of worker tasks sharing one aiohttp session, in one or several processes.

Closed model (the default): `concurrency` workers each send a request, wait for its answer and
send the next. Open model (`rate`): request n is due at start + n / rate whatever happened to
the ones before it, and its latency is measured from that due time, so a server that stalls
cannot make the generator slow down and hide the stall (coordinated omission). The pool never
grows past `concurrency` tasks and connections; a due request that finds every worker busy
starts late, and that lateness is part of its latency.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import queue
import random
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from loadgen.histogram import LatencyHistogram

SINGLE_PATH = "/messages"
BATCH_PATH = "/messages/batch"
USER_IDS = 10_000
CHANNEL_IDS = 100
SAMPLE_TEXTS = (
    "Hello everyone",
    "Anyone up for a game tonight?",
    "The build is green again",
    "Lunch at noon?",
    "Deploying the new release now",
    "Can someone review my pull request",
    "Great job on the demo",
    "Coffee machine is broken again",
    "Meeting moved to 3pm",
    "Load test in progress, watch the dashboard",
)
# How often a child process publishes its counts for the parent's progress line.
PUBLISH_INTERVAL_S = 0.1


@dataclass(frozen=True)
class LoadPlan:
    """What to send, where, and how hard."""

    url: str = "http://localhost:8000"
    messages: int | None = 1000
    concurrency: int = 50
    duration_s: float | None = None
    rate: float | None = None  # messages per second (open model); None = closed model
    batch_size: int | None = None  # messages per POST /messages/batch; None = POST /messages
    timeout_s: float = 30.0
    processes: int = 1
    api_key: str | None = None
    collect_ids: bool = False
    # Marks every message of this run (content "... #<tag>-<seq>"), so verify can find them.
    run_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    # GET this path instead of posting messages, any 2xx a success: the generator's own ceiling
    # against a trivial endpoint (as wrk measures it).
    path: str | None = None

    @property
    def endpoint(self) -> str:
        path = self.path or (BATCH_PATH if self.batch_size else SINGLE_PATH)
        return self.url.rstrip("/") + path

    @property
    def messages_per_request(self) -> int:
        return self.batch_size or 1

    def share(self, index: int) -> LoadPlan:
        """The part of this plan that process `index` of `processes` runs."""
        count = self.processes

        def split(total: int) -> int:
            return total // count + (1 if index < total % count else 0)

        return replace(
            self,
            processes=1,
            messages=split(self.messages) if self.messages is not None else None,
            concurrency=max(1, split(self.concurrency)),
            rate=self.rate / count if self.rate else None,
        )


@dataclass
class Tally:
    """What happened to the messages sent so far; merged across processes at the end."""

    succeeded: int = 0
    failed: int = 0
    requests_succeeded: int = 0
    requests_failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    ids: bytearray = field(default_factory=bytearray)  # 16 bytes per acknowledged message id
    started_at: float = 0.0  # epoch seconds
    finished_at: float = 0.0
    max_start_lag_s: float = 0.0  # open model: how late the latest request started
    late_starts: int = 0  # open model: requests that started more than LATE_START_S after due
    interrupted: bool = False

    @property
    def sent(self) -> int:
        return self.succeeded + self.failed

    @property
    def elapsed_s(self) -> float:
        return max(self.finished_at - self.started_at, 0.0)

    def fail(self, cause: str, messages: int) -> None:
        self.failed += messages
        self.failures[cause] = self.failures.get(cause, 0) + messages

    def merge(self, other: Tally) -> None:
        first = self.started_at == 0.0
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.requests_succeeded += other.requests_succeeded
        self.requests_failed += other.requests_failed
        for cause, count in other.failures.items():
            self.failures[cause] = self.failures.get(cause, 0) + count
        self.latency.merge(other.latency)
        self.ids.extend(other.ids)
        self.started_at = other.started_at if first else min(self.started_at, other.started_at)
        self.finished_at = max(self.finished_at, other.finished_at)
        self.max_start_lag_s = max(self.max_start_lag_s, other.max_start_lag_s)
        self.late_starts += other.late_starts
        self.interrupted = self.interrupted or other.interrupted

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["latency"] = self.latency.to_dict()
        data["ids"] = bytes(self.ids)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        tally = cls(**{**data, "latency": LatencyHistogram.from_dict(data["latency"])})
        tally.ids = bytearray(data["ids"])
        return tally


LATE_START_S = 0.010


class Sender:
    """Runs one plan in the current event loop; stop() and abort() may be called from signal handlers."""

    def __init__(self, plan: LoadPlan, *, seq_offset: int = 0, seq_stride: int = 1) -> None:
        self.plan = plan
        self.tally = Tally()
        self.stopping = False
        self._seq_offset = seq_offset
        self._seq_stride = seq_stride
        per_request = plan.messages_per_request
        self._requests_total = math.ceil(plan.messages / per_request) if plan.messages is not None else None
        self._interval = per_request / plan.rate if plan.rate else None
        if self._interval is not None and plan.duration_s:
            # Open model: the schedule fixes how many requests fall due within the duration.
            due = math.ceil(plan.duration_s / self._interval)
            self._requests_total = due if self._requests_total is None else min(due, self._requests_total)
        self._next = 0
        self._t0 = 0.0
        self._deadline: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sleeping: set[asyncio.Task[Any]] = set()
        self._random = random.Random()  # noqa: S311 - test data, not secrets
        headers = {"Content-Type": "application/json"}
        if plan.api_key:
            headers["X-API-Key"] = plan.api_key
        self._headers = headers

    def stop(self) -> None:
        """Send nothing more; requests in flight finish (or time out) and are counted."""
        self.stopping = True
        for task in list(self._sleeping):
            task.cancel()

    def abort(self) -> None:
        """Stop now: requests in flight are abandoned and counted as cancelled."""
        self.stop()
        for task in self._tasks:
            task.cancel()

    async def run(self) -> Tally:
        plan = self.plan
        connector = aiohttp.TCPConnector(limit=plan.concurrency, limit_per_host=0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=plan.timeout_s)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            raise_for_status=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # no cookies to keep: skip the jar's work per response
        ) as session:
            self._session = session
            self._t0 = time.monotonic()
            self._deadline = self._t0 + plan.duration_s if plan.duration_s else None
            self.tally.started_at = time.time()
            self._tasks = [asyncio.create_task(self._worker()) for _ in range(plan.concurrency)]
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.tally.finished_at = time.time()
        return self.tally

    def _claim(self) -> int | None:
        """The number of the next request to send, or None when the plan is done."""
        if self.stopping:
            return None
        number = self._next
        if self._requests_total is not None and number >= self._requests_total:
            return None
        self._next = number + 1
        return number

    async def _worker(self) -> None:
        monotonic = time.monotonic
        interval = self._interval
        while True:
            number = self._claim()
            if number is None:
                return
            if interval is not None:
                due = self._t0 + number * interval
                delay = due - monotonic()
                if delay > 0:
                    task = asyncio.current_task()
                    assert task is not None
                    self._sleeping.add(task)
                    try:
                        await asyncio.sleep(delay)
                    except asyncio.CancelledError:
                        return  # stop(): a request not yet due is simply not sent
                    finally:
                        self._sleeping.discard(task)
                    if self.stopping:
                        return
                else:
                    lag = -delay
                    if lag > self.tally.max_start_lag_s:
                        self.tally.max_start_lag_s = lag
                    if lag > LATE_START_S:
                        self.tally.late_starts += 1
                start = due
            else:
                start = monotonic()
                if self._deadline is not None and start >= self._deadline:
                    return
            count = self._request_size(number)
            try:
                await self._send(self._body(number, count), count, start)
            except asyncio.CancelledError:
                self.tally.requests_failed += 1
                self.tally.fail("cancelled (in flight at Ctrl-C)", count)
                return

    def _request_size(self, number: int) -> int:
        per_request = self.plan.messages_per_request
        if self.plan.messages is None:
            return per_request
        return min(per_request, self.plan.messages - number * per_request)

    def _message(self, seq: int) -> str:
        rnd = self._random.random
        text = SAMPLE_TEXTS[int(rnd() * len(SAMPLE_TEXTS))]
        return '{"user_id":%d,"channel_id":%d,"content":"%s #%s-%d"}' % (  # noqa: UP031 - hot path
            int(rnd() * USER_IDS) + 1,
            int(rnd() * CHANNEL_IDS) + 1,
            text,
            self.plan.run_tag,
            seq * self._seq_stride + self._seq_offset,
        )

    def _body(self, number: int, count: int) -> bytes:
        if not self.plan.batch_size:
            return self._message(number).encode()
        first = number * self.plan.batch_size
        items = ",".join([self._message(seq) for seq in range(first, first + count)])
        return ('{"messages":[' + items + "]}").encode()

    async def _send(self, body: bytes, count: int, start: float) -> None:
        tally = self.tally
        try:
            if self.plan.path:
                request = self._session.get(self.plan.endpoint)
            else:
                request = self._session.post(self.plan.endpoint, data=body, headers=self._headers)
            async with request as response:
                payload = await response.read()
                status = response.status
        except TimeoutError:
            cause = "timeout"
        except aiohttp.ServerDisconnectedError:
            cause = "connection error (server disconnected)"
        except aiohttp.ClientConnectorError:
            cause = "connection error (cannot connect)"
        except (aiohttp.ClientError, OSError) as exc:
            cause = f"connection error ({type(exc).__name__})"
        else:
            finished = time.monotonic()
            if status == 201 or (self.plan.path and 200 <= status < 300):
                accepted = self._accepted(payload, count)
                if accepted is not None:
                    tally.requests_succeeded += 1
                    tally.succeeded += accepted
                    if accepted < count:
                        tally.fail("rejected item (422 in a batch)", count - accepted)
                    tally.latency.record(finished - start)
                    return
                cause = f"HTTP {status} with an unreadable body"
            else:
                cause = f"HTTP {status}"
        tally.requests_failed += 1
        tally.fail(cause, count)

    def _accepted(self, payload: bytes, count: int) -> int | None:
        """How many messages a 201 acknowledged (recording their ids); None if it cannot be read."""
        if self.plan.path:
            return count
        if not self.plan.collect_ids and not self.plan.batch_size:
            return 1
        try:
            answer = json.loads(payload)
            if self.plan.batch_size:
                ids = answer["message_ids"]
                accepted = int(answer["accepted"])
            else:
                ids = [answer["message_id"]]
                accepted = 1
            if self.plan.collect_ids:
                for message_id in ids:
                    self.tally.ids.extend(bytes.fromhex(message_id.replace("-", "")))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return accepted


def _signals_install(loop: asyncio.AbstractEventLoop, sender: Sender) -> Callable[[], None]:
    """First Ctrl-C (or SIGTERM): stop sending and let in-flight requests finish; second: abort."""
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        sender.tally.interrupted = True
        if interrupts == 1:
            sender.stop()
        else:
            sender.abort()

    installed: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_interrupt)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            pass

    def remove() -> None:
        for signum in installed:
            loop.remove_signal_handler(signum)

    return remove


ProgressCallback = Callable[[int, int, float], None]  # succeeded, failed, elapsed_s


async def _run_single(plan: LoadPlan, on_progress: ProgressCallback | None, tick_s: float) -> Tally:
    sender = Sender(plan)
    loop = asyncio.get_running_loop()
    remove_signals = _signals_install(loop, sender)

    async def report() -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(tick_s)
            if on_progress is not None:
                on_progress(sender.tally.succeeded, sender.tally.failed, time.monotonic() - started)

    reporter = asyncio.create_task(report())
    try:
        return await sender.run()
    finally:
        reporter.cancel()
        remove_signals()


def _child_main(
    plan: LoadPlan,
    index: int,
    stride: int,
    counters: Any,
    ready: Any,
    stop: Any,
    abort: Any,
    results: Any,
) -> None:
    """One process of a multi-process run: send its share, publish counts, hand back its tally."""
    # Until the event loop installs its handlers, a Ctrl-C must not kill this process mid-start.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def main() -> Tally:
        sender = Sender(plan, seq_offset=index, seq_stride=stride)
        loop = asyncio.get_running_loop()
        # The terminal's Ctrl-C reaches every process of the group; the parent's events cover the rest.
        remove_signals = _signals_install(loop, sender)

        async def watch() -> None:
            while True:
                counters[2 * index] = sender.tally.succeeded
                counters[2 * index + 1] = sender.tally.failed
                if abort.is_set():
                    sender.tally.interrupted = True
                    sender.abort()
                elif stop.is_set() and not sender.stopping:
                    sender.tally.interrupted = True
                    sender.stop()
                await asyncio.sleep(PUBLISH_INTERVAL_S)

        watcher = asyncio.create_task(watch())
        try:
            tally = await sender.run()
        finally:
            watcher.cancel()
            remove_signals()
        counters[2 * index] = tally.succeeded
        counters[2 * index + 1] = tally.failed
        return tally

    try:
        ready.wait(timeout=120)
    except Exception:  # noqa: BLE001 - a broken barrier means the parent gave up: send nothing
        results.put((index, Tally(interrupted=True).to_dict()))
        return
    results.put((index, asyncio.run(main()).to_dict()))


def _run_multi(plan: LoadPlan, on_progress: ProgressCallback | None, tick_s: float) -> Tally:
    # spawn, not fork: a fresh interpreter per process, no inherited event loop or sockets.
    context = multiprocessing.get_context("spawn")
    count = plan.processes
    counters = context.Array("q", 2 * count, lock=False)
    ready = context.Barrier(count + 1)
    stop = context.Event()
    abort = context.Event()
    results = context.Queue()
    children = [
        context.Process(
            target=_child_main,
            args=(plan.share(index), index, count, counters, ready, stop, abort, results),
            name=f"loadgen-{index + 1}",
            daemon=True,
        )
        for index in range(count)
    ]
    interrupts = 0

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        (stop if interrupts == 1 else abort).set()

    previous = {signum: signal.signal(signum, on_interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    tally = Tally()
    try:
        for child in children:
            child.start()
        ready.wait(timeout=120)
        started = time.monotonic()
        collected: dict[int, Tally] = {}
        while len(collected) < count:
            try:
                index, data = results.get(timeout=tick_s)
                collected[index] = Tally.from_dict(data)
            except queue.Empty:
                dead = [
                    child for child in children if not child.is_alive() and child.exitcode not in (0, None)
                ]
                if dead:
                    abort.set()
                    raise RuntimeError(
                        f"load generator process {dead[0].name} exited with code {dead[0].exitcode}"
                    ) from None
            if on_progress is not None:
                succeeded = sum(counters[2 * i] for i in range(count))
                failed = sum(counters[2 * i + 1] for i in range(count))
                on_progress(succeeded, failed, time.monotonic() - started)
        for child in children:
            child.join(timeout=10)
        for index in sorted(collected):
            tally.merge(collected[index])
        tally.interrupted = tally.interrupted or interrupts > 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for child in children:
            if child.is_alive():
                child.terminate()
    return tally


def load_run(plan: LoadPlan, *, on_progress: ProgressCallback | None = None, tick_s: float = 0.1) -> Tally:
    """Send `plan` and return what happened; Ctrl-C stops sending and returns the partial tally."""
    if plan.processes > 1:
        return _run_multi(plan, on_progress, tick_s)
    return asyncio.run(_run_single(plan, on_progress, tick_s))


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
