"""The rq worker class the `ingest` queue runs on."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from multiprocessing import get_context
from typing import Any, cast

from django.db import close_old_connections
from rq import Queue, SimpleWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.scheduler import RQScheduler, run
from rq.utils import as_text, current_timestamp

from messages_app.partitions import partitions_maintain_when_due

_ForkProcess = get_context("fork").Process

# A worker killed mid-batch leaves its job in the started registry until its heartbeat lapses;
# rq's defaults (job timeout + 60 s, registries cleaned every 10 minutes) would hold those
# acknowledged messages for minutes. These bound the recovery to well under a minute: the entry
# lapses job timeout + HEARTBEAT_MARGIN_S after the batch started, and an idle worker looks every
# MAINTENANCE_INTERVAL_S (IngestWorker.dequeue_timeout) and puts it straight back on the queue.
MAINTENANCE_INTERVAL_S = 5
HEARTBEAT_MARGIN_S = 5
WORKER_TTL_S = 30


# rq logs four INFO lines per job and one per registry clean-up (every few seconds here); at
# hundreds of batches a second that drowns the one line per batch the job itself logs.
_PER_JOB_CHATTER = (
    "Worker %s: %s: %s",
    "Successfully completed",
    "Worker %s: job %s result",
    "Worker %s: cleaning",
)


class _PerJobChatterFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO
            and isinstance(record.msg, str)
            and record.msg.startswith(_PER_JOB_CHATTER)
        )


_PR_SET_PDEATHSIG = 1


def _scheduler_run(scheduler: IngestScheduler, parent_pid: int) -> None:
    """rq's scheduler loop, in a child that dies with its worker.

    The child is forked from the worker and so holds copies of the worker's sockets. If it
    outlived a worker killed with kill -9, the worker's Redis connection would stay open, and the
    blocking dequeue pending on it would keep taking jobs for a client that is gone: they sat in
    rq's intermediate queue until its one-minute clean-up failed them.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the worker died before the line above took effect
        os._exit(0)
    scheduler.parent_pid = parent_pid
    run(scheduler)


class IngestScheduler(RQScheduler):
    """rq's scheduler (it re-enqueues jobs whose retry interval has passed), tied to its worker."""

    parent_pid: int | None = None

    def start(self) -> Any:
        self._status = self.Status.STARTED
        self._connection = None  # a Redis connection cannot cross the fork; the child opens its own
        process = _ForkProcess(target=_scheduler_run, args=(self, os.getpid()), name="Scheduler")
        self._process = cast(Any, process)
        process.start()
        return process

    def heartbeat(self) -> None:
        # Where there is no parent-death signal (not Linux), notice the orphaning within a second.
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self._stop_requested = True
        super().heartbeat()


class IngestWorker(SimpleWorker):
    """A no-fork worker (about 4x the jobs/s of rq's forking Worker) that reclaims abandoned jobs fast.

    Jobs run in the worker process itself, so Django's connection pool and the compiled insert
    survive from one batch to the next. A SIGTERM lets the current batch finish (rq's warm shutdown).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL_S)
        super().__init__(*args, **kwargs)
        if not any(isinstance(existing, _PerJobChatterFilter) for existing in self.log.filters):
            self.log.addFilter(_PerJobChatterFilter())

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        # rq's own method with IngestScheduler in place of RQScheduler.
        self.scheduler = IngestScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return
        if burst:
            try:
                self.scheduler.register_birth()
                self.scheduler.enqueue_scheduled_jobs()
            finally:
                self.scheduler.release_locks()
                self.scheduler.register_death()
        else:
            self.scheduler.start()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # SimpleWorker sends no heartbeat while a job runs: the TTL must cover the whole job.
        timeout = job.timeout if job.timeout and job.timeout > 0 else 60
        return int(timeout) + HEARTBEAT_MARGIN_S

    @property
    def dequeue_timeout(self) -> int:
        # rq runs maintenance only between two blocking dequeues, which last worker_ttl - 15 s:
        # an idle worker would look for abandoned jobs that much less often than intended.
        return MAINTENANCE_INTERVAL_S

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        # The messages table's partitions, on the worker fleet's own tick: at start-up, then every
        # partitions.MAINTENANCE_EVERY_S by whichever worker claims it first.
        try:
            partitions_maintain_when_due(redis=self.connection)
        finally:
            close_old_connections()

    def clean_registries(self) -> None:
        for queue in self.queues:
            self._abandoned_requeue(queue)
        super().clean_registries()

    def _abandoned_requeue(self, queue: Queue) -> None:
        """Put the jobs of dead workers back at the front of the queue, at once.

        rq's own clean-up retries an abandoned job through the scheduler after the Retry interval,
        but a worker killed with kill -9 takes its scheduler child along, whose lock then blocks
        every other worker's scheduler for 60 s more: acknowledged messages would wait over a
        minute. An abandoned batch did not fail; it runs again now, spending one retry, so a
        batch that keeps killing its worker still ends in the failed registry.
        """
        registry = queue.started_job_registry
        connection = queue.connection
        # Without scores asked, the members come back as plain bytes.
        entries = cast("list[bytes]", connection.zrangebyscore(registry.key, 0, current_timestamp()))
        for entry in entries:
            job = queue.fetch_job(registry.parse_job_id(entry))
            if job is None or job.get_status() != JobStatus.STARTED or not job.retries_left:
                continue  # finished meanwhile, or out of retries: rq's clean-up handles it
            # Removing the entry is the claim: of several workers cleaning up, one requeues it.
            if not connection.zrem(registry.key, entry):
                continue
            job.retries_left -= 1
            try:
                with connection.pipeline() as pipe:
                    queue.enqueue_job(job, pipeline=pipe, at_front=True)
                    # Forget the dead execution too: its hash expires a minute before the job's
                    # execution-registry entry, and rq would fail the rerun's success bookkeeping
                    # on the missing hash (then run the batch a third time).
                    execution = Execution.from_composite_key(as_text(entry), connection=connection)
                    execution.delete(job=job, pipeline=pipe)
                    pipe.execute()
            except Exception:
                # Give the claim back, so the next clean-up (ours or rq's) sees the job again.
                connection.zadd(registry.key, {entry: 0})
                self.log.exception("Worker %s: could not requeue abandoned job %s", self.name, job.id)
                continue
            self.log.warning(
                "Worker %s: job %s was abandoned by a dead worker; requeued, %d retries left",
                self.name,
                job.id,
                job.retries_left,
            )
