"""The rq worker class the `ingest` queue runs on."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from django.db import close_old_connections
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus

from messages_app.counters import counters_reconcile_when_due
from messages_app.partitions import partitions_maintain_when_due

# A worker killed mid-batch leaves its job in the started registry until its heartbeat lapses;
# rq's defaults (job timeout + 60 s, registries cleaned every 10 minutes) would hold those
# acknowledged messages for minutes. These bound the recovery to well under a minute
# (abandoned_requeue_bound_s below).
MAINTENANCE_INTERVAL_S = 5
HEARTBEAT_MARGIN_S = 5
WORKER_TTL_S = 30


def abandoned_requeue_bound_s(job_timeout: int) -> int:
    """The longest a killed worker's batch waits before a live worker puts it back on the queue.

    Its started-registry entry lapses job_timeout + HEARTBEAT_MARGIN_S after the batch started,
    so at most that long after the kill. A live worker runs its clean-up once more than
    MAINTENANCE_INTERVAL_S has passed, checked after each job and after each blocking dequeue
    (which lasts MAINTENANCE_INTERVAL_S): at most two intervals apart. With the defaults
    (INGEST_JOB_TIMEOUT 20 s) that is 35 s, about 26 s on average.
    """
    return job_timeout + HEARTBEAT_MARGIN_S + 2 * MAINTENANCE_INTERVAL_S


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
# The pid of the worker process whose forks must die with it; set when a worker starts working.
_forking_worker_pid: int | None = None
_fork_hook_registered = False


def _child_dies_with_worker() -> None:
    """In a child forked from a worker (rq's scheduler): exit as soon as the worker is gone.

    The child holds copies of the worker's sockets. If it outlived a worker killed with kill -9,
    the worker's Redis connection would stay open, and the blocking dequeue pending on it would
    keep taking jobs for a client that is gone: they would sit in rq's intermediate queue until
    its one-minute clean-up failed them.
    """
    global _forking_worker_pid
    parent_pid = _forking_worker_pid
    if parent_pid is None:
        return
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        # No parent-death signal: notice the orphaning within a second.
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the worker died before the lines above took effect
        os._exit(0)
    _forking_worker_pid = None  # the child's own children, if any, are not the worker's


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(0)


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

    def work(self, *args: Any, **kwargs: Any) -> bool:
        # rq forks its scheduler from this process (a multiprocessing "fork" Process; jobs run
        # here, unforked), so an at-fork hook reaches the scheduler child before rq's code runs
        # in it: the child dies with this worker without any of rq's scheduler code replaced.
        # Both rq's and django-rq's commands pass with_scheduler by keyword.
        global _forking_worker_pid, _fork_hook_registered
        if kwargs.get("with_scheduler"):
            _forking_worker_pid = os.getpid()
            if not _fork_hook_registered:
                os.register_at_fork(after_in_child=_child_dies_with_worker)
                _fork_hook_registered = True
        return bool(super().work(*args, **kwargs))

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
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]  # rq leaves it unannotated
        # The messages table's partitions, on the worker fleet's own tick: at start-up, then every
        # partitions.MAINTENANCE_EVERY_S by whichever worker claims it first; and the counters,
        # set from the tables at a quiet moment (messages_app/counters.py).
        try:
            partitions_maintain_when_due(redis=self.connection)
            counters_reconcile_when_due(redis=self.connection)
        finally:
            close_old_connections()

    def clean_registries(self) -> None:
        for queue in self.queues:
            self._abandoned_requeue(queue)
        super().clean_registries()  # type: ignore[no-untyped-call]  # rq leaves it unannotated

    def _abandoned_requeue(self, queue: Queue) -> None:
        """Put the jobs of dead workers back at the front of the queue, at once.

        rq's own clean-up retries an abandoned job through the scheduler after the Retry interval,
        but a worker killed with kill -9 takes its scheduler child along, whose lock then blocks
        every other worker's scheduler for 60 s more: acknowledged messages would wait over a
        minute. An abandoned batch did not fail; it runs again now, spending one retry, so a
        batch that keeps killing its worker still ends in the failed registry.
        """
        registry = queue.started_job_registry
        expired = set(registry.get_expired_job_ids())
        if not expired:
            return
        connection = queue.connection
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            if job_id not in expired:
                continue
            job = queue.fetch_job(job_id)
            if job is None or job.get_status() != JobStatus.STARTED or not job.retries_left:
                continue  # finished meanwhile, or out of retries: rq's clean-up handles it
            execution = Execution(id=execution_id, job_id=job_id, connection=connection)
            # Removing the entry is the claim: of several workers cleaning up, one requeues it.
            # (rq's remove_execution() does the same ZREM but does not say whether it removed.)
            if not connection.zrem(registry.key, execution.composite_key):
                continue
            job.retries_left -= 1
            try:
                with connection.pipeline() as pipe:
                    queue.enqueue_job(job, pipeline=pipe, at_front=True)
                    # Forget the dead execution too: its hash expires a minute before the job's
                    # execution-registry entry, and rq would fail the rerun's success bookkeeping
                    # on the missing hash (then run the batch a third time).
                    execution.delete(job=job, pipeline=pipe)
                    pipe.execute()
            except Exception:
                # Give the claim back, already expired, so the next clean-up (ours or rq's) sees it.
                with connection.pipeline() as pipe:
                    registry.add_execution(execution, pipeline=pipe, ttl=0)
                    pipe.execute()
                self.log.exception("Worker %s: could not requeue abandoned job %s", self.name, job.id)
                continue
            self.log.warning(
                "Worker %s: job %s was abandoned by a dead worker; requeued, %d retries left",
                self.name,
                job.id,
                job.retries_left,
            )
