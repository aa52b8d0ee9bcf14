"""The rq worker class the `ingest` queue runs on."""

from __future__ import annotations

import logging
from typing import Any

from django.db import close_old_connections
from redis.client import Pipeline
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.scheduler import RQScheduler
from rq.utils import now

from messages_app.counters import counters_reconcile_when_due
from messages_app.partitions import partitions_maintain_when_due

# A worker killed mid-batch leaves its job in the started registry until its heartbeat lapses;
# rq's defaults (job timeout + 60 s, registries cleaned every 10 minutes) would hold those
# acknowledged messages for minutes. These bound the recovery to well under a minute
# (abandoned_requeue_bound_s below).
MAINTENANCE_INTERVAL_S = 5
HEARTBEAT_MARGIN_S = 5
WORKER_TTL_S = 30
# rq beats for the worker before and after each dequeue, three commands each, not pipelined; under
# a stream of small jobs that was 6 of the worker's ~34 Redis round trips a transaction. A beat
# keeps the worker's key for WORKER_TTL_S + 60 s (a job's preparation, pipelined, for the job's
# timeout + HEARTBEAT_MARGIN_S): one a second between jobs keeps it as well.
HEARTBEAT_EVERY_S = 1.0


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


class IngestWorker(SimpleWorker):
    """A no-fork worker (about 4x the jobs/s of rq's forking Worker) that reclaims abandoned jobs fast.

    Jobs run in the worker process itself, so Django's connection pool and the compiled insert
    survive from one batch to the next. A SIGTERM lets the current batch finish (rq's warm shutdown).
    Retries due from the scheduled registry go back on the queue on the worker's own maintenance
    tick (scheduled_enqueue), so no scheduler process is needed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL_S)
        super().__init__(*args, **kwargs)
        if not any(isinstance(existing, _PerJobChatterFilter) for existing in self.log.filters):
            self.log.addFilter(_PerJobChatterFilter())
        self._retry_scheduler: RQScheduler | None = None

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        last = self.last_heartbeat
        if (
            timeout is None
            and pipeline is None
            and last is not None
            and (now() - last).total_seconds() < HEARTBEAT_EVERY_S
        ):
            return
        super().heartbeat(timeout, pipeline)

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        # rq sets IDLE after each job and again before each dequeue: one round trip for nothing.
        if pipeline is None and state == self.get_state():
            return
        super().set_state(state, pipeline)

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
        # After rq's clean-up, which may just have scheduled the retry of an abandoned job.
        self.scheduled_enqueue()
        # The messages table's partitions, on the worker fleet's own tick: at start-up, then every
        # partitions.MAINTENANCE_EVERY_S by whichever worker claims it first; and the counters,
        # set from the tables at a quiet moment (messages_app/counters.py).
        try:
            partitions_maintain_when_due(redis=self.connection)
            counters_reconcile_when_due(redis=self.connection)
        finally:
            close_old_connections()

    def scheduled_enqueue(self) -> None:
        """Put the jobs whose retry time has come back on their queue, as rq's scheduler would.

        rq's scheduler is a process forked from the worker (as big as the worker itself) that does
        this every second. Here it runs on the maintenance tick instead: after each job and after
        each idle dequeue, at most every MAINTENANCE_INTERVAL_S, so a retry runs up to that much
        later than its Retry interval says. It is rq's own scheduler code, run in this process as
        rq runs it for a burst worker: take the queue's scheduler lock, move the due jobs, release
        the lock. Of several workers (or an rq scheduler someone started) one moves a job, the
        others find the lock taken and skip; the lock is held for the move alone, so a worker
        killed with kill -9 almost never leaves it behind (it would lapse after 61 s).
        """
        if self._retry_scheduler is None:
            # rq's scheduler logs each lock it takes at INFO: once per tick here.
            self._retry_scheduler = RQScheduler(
                self.queues, connection=self.connection, serializer=self.serializer,
                name=self.name, logging_level=logging.WARNING,
            )  # fmt: skip
        scheduler = self._retry_scheduler
        # rq leaves these three unannotated.
        if not scheduler.acquire_locks():  # type: ignore[no-untyped-call]
            return
        try:
            scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
        finally:
            scheduler.release_locks()  # type: ignore[no-untyped-call]

    def clean_registries(self) -> None:
        for queue in self.queues:
            self._abandoned_requeue(queue)
        super().clean_registries()  # type: ignore[no-untyped-call]  # rq leaves it unannotated

    def _abandoned_requeue(self, queue: Queue) -> None:
        """Put the jobs of dead workers back at the front of the queue, at once.

        rq's own clean-up retries an abandoned job through the scheduled registry, after the Retry
        interval: acknowledged messages would wait for it although the batch did not fail. It runs
        again now, spending one retry, so a batch that keeps killing its worker still ends in the
        failed registry.
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
