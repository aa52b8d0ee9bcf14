"""Every undocumented name of Django, rq, redis-py and granian the project relies on, in one list.

The middleware-free API handler (ingestor_site/handlers.py), the rq worker
(messages_app/worker.py) and the master-less web process (ingestor_site/web.py) override or call
pieces of those libraries that their documentation does not promise to keep. tests/test_internals.py checks each entry below: that the name exists,
that it still takes the parameters we pass, and that what we override still has the signature
of our override. An upgrade that moves or renames one then fails there, naming it, instead of
somewhere downstream or not at all. A new reliance on an undocumented name goes here first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reliance:
    """One undocumented name, as `module:Attribute.chain`, and what we need of it."""

    target: str
    used_by: str
    # The leading parameters, in order, we call it with (positionally or not).
    parameters: tuple[str, ...] = ()
    # Further parameters we pass by keyword.
    keywords: tuple[str, ...] = ()
    # Our override of it (`module:Attribute.chain`): both must keep the same parameters.
    override: str | None = None


_ASGI = "django.core.handlers.asgi:ASGIHandler"
_API_HANDLER = "ingestor_site.handlers:ApiASGIHandler"
_WORKER = "messages_app.worker:IngestWorker"
_REQUEUE = "IngestWorker._abandoned_requeue"
_SCHEDULED = "IngestWorker.scheduled_enqueue"

DJANGO = (
    # ApiASGIHandler replaces ASGIHandler.__call__() and handle() with a leaner request cycle
    # built from the same parts.
    Reliance(f"{_ASGI}.create_request", "ApiASGIHandler", ("self", "scope", "body_file")),
    Reliance(f"{_ASGI}.run_get_response", "ApiASGIHandler", ("self", "request")),
    Reliance(f"{_ASGI}.send_response", "ApiASGIHandler", ("self", "response", "send")),
    Reliance("django.core.handlers.asgi:get_script_prefix", "ApiASGIHandler", ("scope",)),
    # ApiASGIHandler.load_middleware sets the attributes BaseHandler.load_middleware sets, with
    # no middleware; test_internals also compares the attributes each one sets.
    Reliance(
        "django.core.handlers.base:BaseHandler.load_middleware",
        "ApiASGIHandler",
        ("self", "is_async"),
        override=f"{_API_HANDLER}.load_middleware",
    ),
    Reliance(
        "django.core.handlers.base:BaseHandler._get_response_async", "ApiASGIHandler", ("self", "request")
    ),
    Reliance("django.core.handlers.base:BaseHandler._get_response", "ApiASGIHandler", ("self", "request")),
    Reliance(
        "django.core.handlers.exception:convert_exception_to_response", "ApiASGIHandler", ("get_response",)
    ),
    # run_get_response() stores the handler class on the response, and HttpResponse.close()
    # sends request_finished with it as the sender.
    Reliance("django.http.response:HttpResponseBase._handler_class", "ApiASGIHandler"),
    # Whether a request left a database connection open (request_finished's receivers then run
    # in a thread, as Django runs them, rather than on the event loop).
    Reliance(
        "django.utils.connection:BaseConnectionHandler.all", "ApiASGIHandler", ("self", "initialized_only")
    ),
    Reliance("django.db.backends.base.base:BaseDatabaseWrapper.connection", "ApiASGIHandler"),
    # How tests/test_internals.py lists request_finished's receivers (see below).
    Reliance(
        "django.dispatch.dispatcher:Signal._live_receivers", "tests/test_internals.py", ("self", "sender")
    ),
)

RQ = (
    Reliance(
        "rq.worker:SimpleWorker.get_heartbeat_ttl",
        "IngestWorker: the started-registry entry of a job lapses soon after its timeout",
        ("self", "job", "working_time"),
        override=f"{_WORKER}.get_heartbeat_ttl",
    ),
    Reliance("rq.worker:BaseWorker.dequeue_timeout", "IngestWorker: looks for abandoned jobs often"),
    Reliance(
        "rq.worker:BaseWorker.clean_registries",
        "IngestWorker: requeues abandoned jobs first",
        ("self",),
        override=f"{_WORKER}.clean_registries",
    ),
    Reliance(
        "rq.worker:BaseWorker.run_maintenance_tasks",
        "IngestWorker: partition maintenance on the worker's own tick",
        ("self",),
        override=f"{_WORKER}.run_maintenance_tasks",
    ),
    Reliance("rq.worker:BaseWorker.__init__", "IngestWorker", ("self", "queues"), ("maintenance_interval",)),
    # IngestWorker.scheduled_enqueue runs rq's scheduler in the worker process, as rq's
    # BaseWorker._start_scheduler does for a burst worker (none of it is documented).
    Reliance(
        "rq.scheduler:RQScheduler.__init__",
        _SCHEDULED,
        ("self", "queues", "connection"),
        ("serializer", "name", "logging_level"),
    ),
    Reliance("rq.scheduler:RQScheduler.acquire_locks", _SCHEDULED, ("self",)),
    Reliance("rq.scheduler:RQScheduler.enqueue_scheduled_jobs", _SCHEDULED, ("self",)),
    Reliance("rq.scheduler:RQScheduler.release_locks", _SCHEDULED, ("self",)),
    # The requeue of a dead worker's job.
    Reliance("rq.registry:StartedJobRegistry.get_expired_job_ids", _REQUEUE, ("self",)),
    Reliance("rq.registry:StartedJobRegistry.get_job_and_execution_ids", _REQUEUE, ("self",), ("cleanup",)),
    Reliance(
        "rq.registry:StartedJobRegistry.add_execution", _REQUEUE, ("self", "execution"), ("pipeline", "ttl")
    ),
    Reliance("rq.registry:StartedJobRegistry.key", _REQUEUE),
    Reliance("rq.executions:Execution.__init__", _REQUEUE, ("self",), ("id", "job_id", "connection")),
    Reliance("rq.executions:Execution.composite_key", _REQUEUE),
    Reliance("rq.executions:Execution.delete", _REQUEUE, ("self",), ("job", "pipeline")),
    Reliance("rq.queue:Queue.enqueue_job", _REQUEUE, ("self", "job"), ("pipeline", "at_front")),
    Reliance("rq.job:Job.retries_left", _REQUEUE),
)

REDIS = (
    # replicated_pipeline builds a transaction pipeline over one leased connection, so that WAIT
    # follows the transaction on the very connection it ran on.
    Reliance(
        "redis.client:Pipeline.__init__",
        "telemetry.connection.replicated_pipeline",
        ("self", "connection_pool", "response_callbacks", "transaction", "shard_hint"),
    ),
)

_WEB = "ingestor_site.web:SingleProcessGranian"

GRANIAN = (
    # SingleProcessGranian serves in its own process what granian's master would fork a worker
    # for: it replaces the server's serve loop and calls the two steps of its start-up it needs.
    Reliance(
        "granian.server.common:AbstractServer._serve",
        _WEB,
        ("self", "spawn_target", "target_loader"),
        override=f"{_WEB}._serve",
    ),
    Reliance("granian.server.common:AbstractServer._init_shared_socket", _WEB, ("self",)),
    Reliance("granian.server.mp:MPServer._spawn_worker", _WEB, ("self", "idx", "target", "callback_loader")),
    # The worker's multiprocessing.Process, never started: its run() serves in this process.
    Reliance("granian.server.mp:WorkerProcess.inner", _WEB),
)

RELIANCES = DJANGO + RQ + REDIS + GRANIAN

# The started registry is a sorted set whose members are Execution.composite_key:
# IngestWorker._abandoned_requeue claims an abandoned entry by removing that member (rq's own
# remove_execution() removes it too, but does not say whether it did).

# The receivers of request_finished, which ApiASGIHandler runs on the event loop: each is sync
# and touches only memory and the connections of its own thread. A new receiver (from an app,
# or a Django upgrade) fails test_internals by name, to be checked before it joins this list.
REQUEST_FINISHED_RECEIVERS = frozenset(
    {
        "django.db.close_old_connections",
        "django.core.cache.close_caches",
        "django.core.handlers.base.reset_urlconf",
    }
)

# Where rq logs the per-job lines IngestWorker filters out (messages_app.worker._PER_JOB_CHATTER):
# a reworded line would only come back into the log, and test_internals says which.
RQ_WORKER_LOG_MODULE = "rq.worker.base"
