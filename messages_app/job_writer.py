"""A persist job, and the counters of its messages, written to Redis in one command.

rq's own enqueue (`Queue.enqueue_call` on a transactional pipeline) cost the API ~200 µs of CPU
a batch here, most of it redis-py packing the ~40 arguments of the job's hash and parsing eleven
replies, and a message that arrives alone waits for all of it. The job written here is the one
rq writes, field for field, so rq workers run it unchanged:
- every field that is the same for every persist job comes from a job rq itself builds, once per
  process (`Job.to_dict()`), and is baked into a Lua script registered once;
- only the fields that differ per job (its times, its data, its description and meta) travel
  with each call, as rq would make them, except that the data is compressed at zlib's fastest
  level (rq decompresses any zlib stream): 0.6 ms for a batch of 1,000 rows instead of 1.9;
  and a small job's data not at all (rq takes data that is not a zlib stream as it is).
tests/test_job_writer.py compares the two hashes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import hiredis
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import AbstractConnection as AsyncConnection
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.utils import now, utcformat

from telemetry import metrics
from telemetry.connection import replicated_pipeline

# The fields write() sets per job; every other field of the hash is the template's.
PER_JOB_FIELDS = ("created_at", "enqueued_at", "data", "description", "meta")
# The set of queue keys rq's workers and dashboards list (rq.registry / Queue.all()).
QUEUES_KEY = Queue.redis_queues_keys
# zlib's fastest level: a third of the CPU of rq's default for a batch of 1,000 rows, 8% larger.
DATA_COMPRESSION_LEVEL = 1
# Data shorter than this is written as it is. Starting a zlib stream costs tens of microseconds
# whatever the size (it sets up a 256 KiB state), as much as the rest of a lone message's job,
# and saves nothing on a few rows. The data is JSON, whose first byte ('[') no zlib stream has.
DATA_COMPRESSED_FROM_BYTES = 2048


class Written(NamedTuple):
    job_id: str
    backlog: int  # messages accepted and not yet persisted, this job's included
    jobs_waiting: int  # jobs in the queue, this one included


def _lua_string(value: Any) -> str:
    """`value` as a Lua string literal, byte for byte (decimal escapes: any byte is safe)."""
    # As redis-py encodes a value: a str (or a str enum, such as rq's JobStatus) by its text.
    raw = (
        value
        if isinstance(value, bytes)
        else value.encode()
        if isinstance(value, str)
        else str(value).encode()
    )
    return "'" + "".join(f"\\{byte}" for byte in raw) + "'"


# KEYS: the job's hash, the queue, rq's set of queues, queue_length, total_accepted, this second's
# hash. ARGV: the job id, its row count, the second hash's TTL, then the per-job fields' values
# in PER_JOB_FIELDS order (created_at also serves as enqueued_at). The counters are the ones
# metrics.accepted_record writes. Returns the backlog and the queue's length.
_SCRIPT = """
redis.call('HSET', KEYS[1], 'created_at', ARGV[4], 'enqueued_at', ARGV[4], 'data', ARGV[5],
           'description', ARGV[6], 'meta', ARGV[7], {static})
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], KEYS[2])
local backlog = redis.call('INCRBY', KEYS[4], ARGV[2])
redis.call('INCRBY', KEYS[5], ARGV[2])
redis.call('HINCRBY', KEYS[6], 'accepted', ARGV[2])
redis.call('EXPIRE', KEYS[6], ARGV[3])
return {{backlog, redis.call('LLEN', KEYS[2])}}
"""


class JobWriter:
    """Writes jobs calling `func_name` with one argument, with the options given, to `queue`."""

    def __init__(
        self,
        queue: Queue,
        func_name: str,
        *,
        timeout: int,
        result_ttl: int,
        failure_ttl: int,
        retry: Retry,
    ) -> None:
        self.queue = queue
        self.func_name = func_name
        self.template = self._rq_job(args=([],), meta={"rows": 0}, timeout=timeout, result_ttl=result_ttl,
                                     failure_ttl=failure_ttl, retry=retry, description="")  # fmt: skip
        self._options = {
            "timeout": timeout,
            "result_ttl": result_ttl,
            "failure_ttl": failure_ttl,
            "retry": retry,
        }
        static = {k: v for k, v in self.template.to_dict().items() if k not in PER_JOB_FIELDS}
        pairs = ", ".join(f"{_lua_string(key)}, {_lua_string(value)}" for key, value in static.items())
        self.script: Script = queue.connection.register_script(_SCRIPT.format(static=pairs))

    def _rq_job(
        self, *, args: tuple[Any, ...], meta: dict[str, Any], description: str, **options: Any
    ) -> Job:
        """The job rq's own enqueue would write (Queue.create_job, then what enqueueing sets)."""
        job = self.queue.create_job(self.func_name, args=args, meta=meta, description=description, **options)
        job.origin = self.queue.name
        job.enqueued_at = job.created_at
        job._status = JobStatus.QUEUED  # as Queue._prepare_for_queue sets it, without a write
        return job

    def rq_equivalent(self, argument: Any, *, meta: dict[str, Any], description: str) -> Job:
        """For tests: the job rq would build for the same call."""
        return self._rq_job(args=(argument,), meta=meta, description=description, **self._options)

    def fields(self, argument: Any, *, meta: dict[str, Any], description: str, at: str) -> list[Any]:
        """The per-job fields' values, in PER_JOB_FIELDS order without enqueued_at (= created_at)."""
        serializer = self.queue.serializer
        data = serializer.dumps((self.func_name, None, (argument,), {}))
        if len(data) >= DATA_COMPRESSED_FROM_BYTES:
            data = zlib.compress(data, DATA_COMPRESSION_LEVEL)
        return [at, data, description, serializer.dumps(meta)]

    def _call(
        self, argument: Sequence[Any], *, meta: dict[str, Any], description: str, counted: int
    ) -> tuple[str, list[Any], list[Any]]:
        """A new job's id, and the script's keys and arguments that write it."""
        job_id = str(uuid.uuid4())
        second = int(time.time())
        keys = [Job.key_for(job_id), self.queue.key, QUEUES_KEY, metrics.QUEUE_LENGTH, metrics.TOTAL_ACCEPTED,
                metrics.second_key(second)]  # fmt: skip
        args = [job_id, counted, metrics.SECOND_TTL_S,
                *self.fields(argument, meta=meta, description=description, at=utcformat(now()))]  # fmt: skip
        return job_id, keys, args

    def write(
        self,
        connection: Redis,
        argument: Sequence[Any],
        *,
        meta: dict[str, Any],
        description: str,
        counted: int,
        min_replicas: int = 0,
        replica_timeout_ms: int = 0,
    ) -> Written:
        """Enqueue one job on `connection` (the queue's Redis, or one standing in for it) and count
        `counted` messages accepted, atomically; with `min_replicas`, wait until that many replicas
        have it (telemetry.connection.replicated_pipeline)."""
        job_id, keys, args = self._call(argument, meta=meta, description=description, counted=counted)
        if min_replicas <= 0:
            backlog, waiting = self.script(keys=keys, args=args, client=connection)
        else:
            with replicated_pipeline(
                connection, min_replicas=min_replicas, timeout_ms=replica_timeout_ms
            ) as pipe:
                self.script(keys=keys, args=args, client=pipe)
                ((backlog, waiting),) = pipe.execute()
        return Written(job_id=job_id, backlog=int(backlog), jobs_waiting=int(waiting))

    async def write_async(
        self,
        client: AsyncRedis,
        argument: Sequence[Any],
        *,
        meta: dict[str, Any],
        description: str,
        counted: int,
        reply_spin_s: float = 0.0,
    ) -> Written:
        """`write` on an asyncio client of the same Redis, for an event loop: the same job and
        counters in the same one command, with no thread to wake and wait for. No `min_replicas`:
        WAIT must follow on the very connection the write used (replicated_pipeline), which
        redis-py's asyncio pool does not lend; callers that need it use `write` in a thread.

        With `reply_spin_s`, the loop polls for the reply that long before it sleeps on it
        (`_reply_wait_spinning`): for a caller with nothing else to do meanwhile."""
        job_id, keys, args = self._call(argument, meta=meta, description=description, counted=counted)
        # By its sha, as Script does (redis-py's AsyncScript would keep its first client, and so
        # that client's event loop, alive for as long as this process-wide writer).
        command = hiredis.pack_command(("EVALSHA", self.script.sha, len(keys), *keys, *args))
        try:
            backlog, waiting = await _command_on_kept_connection(client, command, reply_spin_s)
        except NoScriptError:  # a Redis restarted without its scripts, or after SCRIPT FLUSH
            await client.script_load(self.script.script)
            backlog, waiting = await _command_on_kept_connection(client, command, reply_spin_s)
        return Written(job_id=job_id, backlog=int(backlog), jobs_waiting=int(waiting))


# Per asyncio client: connections taken from its pool once and kept for the next write.
_kept_connections: weakref.WeakKeyDictionary[AsyncRedis, list[AsyncConnection]] = weakref.WeakKeyDictionary()


async def _reply_wait_spinning(connection: AsyncConnection, limit_s: float) -> bool:
    """Wait for the reply to the command `connection` just sent by turning the event loop over
    without sleeping, until the reply is in (True) or `limit_s` has passed (False).

    On a virtual machine, a process that sleeps until Redis answers is woken ~0.1 ms after the
    reply arrives (its core idled meanwhile), more than Redis takes to run the command and
    answer: polling through the round trip takes over a third off a lone message's time to its
    201 here (README, Benchmarks). Each turn of the loop looks at its sockets without blocking
    and runs whatever else is ready, so nothing waits behind the poll; `limit_s` bounds the CPU
    it costs when Redis is slow."""
    deadline = time.perf_counter() + limit_s
    while not await connection.can_read():
        if time.perf_counter() >= deadline:
            return False
        await asyncio.sleep(0)
    return True


async def _command_on_kept_connection(client: AsyncRedis, command: bytes, reply_spin_s: float = 0.0) -> Any:
    """Send one packed command and return its reply, as `client.execute_command` would (retried
    by the client's Retry on a lost connection, which it reopens), on a connection this module
    keeps between calls.

    A lone message waits for this call. Through execute_command and the pool's get_connection
    and release, redis-py 8 packs the command in Python and records each call, and each lease,
    for its observability hooks: ~155 us of CPU a call here, against ~70 us this way (command
    packed by hiredis). Concurrent calls each take a connection of their own; one that fails
    goes back to the pool closed, as execute_command leaves it.
    """
    kept = _kept_connections.setdefault(client, [])
    pool = client.connection_pool
    if kept:
        connection = kept.pop()
        # One Redis closed meanwhile (a restart, its timeout, CLIENT KILL) is reopened rather than
        # failing the write: it reads as readable (its end of file). redis-py's pool skips this
        # check while its maintenance notifications are on ("auto", the default).
        try:
            if await connection.can_read():
                await connection.disconnect()
        except RedisConnectionError:
            pass  # can_read closed it
    else:
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]

    async def send_and_read() -> Any:
        await connection.send_packed_command(command, check_health=False)
        if reply_spin_s > 0:
            await _reply_wait_spinning(connection, reply_spin_s)
        return await connection.read_response()

    async def reopen(error: Exception) -> None:
        await connection.disconnect()

    try:
        reply = await connection.retry.call_with_retry(send_and_read, reopen)
    except ResponseError:  # an error reply (NOSCRIPT): the connection is sound
        kept.append(connection)
        raise
    except BaseException:  # lost, timed out or cancelled: where it stands is unknown
        await connection.disconnect()
        await pool.release(connection)
        raise
    kept.append(connection)
    return reply
