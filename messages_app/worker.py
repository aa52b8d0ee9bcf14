"""The rq worker class the `ingest` queue runs on."""

from __future__ import annotations

import logging
from typing import Any

from rq import SimpleWorker
from rq.job import Job

# A worker killed mid-batch leaves its job in the started registry until its heartbeat lapses;
# rq's defaults (job timeout + 60 s, registries cleaned every 10 minutes) would hold those
# acknowledged messages for minutes. These bound the recovery to well under a minute.
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

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # SimpleWorker sends no heartbeat while a job runs: the TTL must cover the whole job.
        timeout = job.timeout if job.timeout and job.timeout > 0 else 60
        return int(timeout) + HEARTBEAT_MARGIN_S
