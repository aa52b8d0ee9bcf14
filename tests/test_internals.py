"""Every undocumented Django, rq, redis-py and granian name the project relies on
(ingestor_site/internals.py) is still there, in the shape we use it: an upgrade that moves or
renames one fails here, by name."""

from __future__ import annotations

import importlib
import inspect
import uuid
from typing import Any

import pytest
import redis as redis_lib
from django.core.handlers.base import BaseHandler
from django.core.signals import request_finished
from django.db.utils import ConnectionHandler
from rq import Queue
from rq.executions import Execution
from rq.serializers import JSONSerializer

from ingestor_site import internals
from ingestor_site.handlers import ApiASGIHandler
from ingestor_site.internals import RELIANCES, Reliance
from messages_app import worker


def _resolve(target: str) -> Any:
    """The object `module:Attribute.chain` names; fails the test naming the first missing part."""
    module_name, _, chain = target.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        pytest.fail(f"{target}: module {module_name} is gone ({exc})")
    path = module_name
    for part in chain.split("."):
        path = f"{path}.{part}" if path != module_name else f"{module_name}:{part}"
        if part in getattr(found, "__dict__", {}):
            found = found.__dict__[part]  # unbound: a property stays a property
        elif hasattr(found, part) or part in getattr(found, "__annotations__", {}):
            found = getattr(found, part, None)
        else:
            pytest.fail(f"{target}: {path} is gone")
    return found


def _set_in_init(target: str) -> bool:
    """Whether the class in `target` (or a base of it) sets the attribute on its instances."""
    module_name, _, chain = target.partition(":")
    owner_path, _, attribute = chain.rpartition(".")
    owner: Any = importlib.import_module(module_name)
    for part in owner_path.split("."):
        owner = getattr(owner, part)
    for cls in inspect.getmro(owner):
        if cls is object:
            continue
        source = inspect.getsource(cls)
        if f"self.{attribute} =" in source or f"self.{attribute}:" in source:
            return True
    return False


def _parameters(function: Any) -> list[str]:
    if isinstance(function, staticmethod | classmethod):
        function = function.__func__
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("reliance", RELIANCES, ids=[reliance.target for reliance in RELIANCES])
def test_each_undocumented_name_is_still_there_as_used(reliance: Reliance) -> None:
    module_name, _, chain = reliance.target.partition(":")
    owner_path, _, attribute = chain.rpartition(".")
    owner: Any = importlib.import_module(module_name)
    for part in owner_path.split(".") if owner_path else []:
        owner = getattr(owner, part, None)
        assert owner is not None, f"{reliance.target}: {module_name}:{owner_path} is gone"
    present = (
        hasattr(owner, attribute)
        or attribute in getattr(owner, "__annotations__", {})
        or (inspect.isclass(owner) and _set_in_init(reliance.target))
    )
    assert present, f"{reliance.target} is gone (used by {reliance.used_by})"
    found = inspect.getattr_static(owner, attribute, None)
    if not (reliance.parameters or reliance.keywords):
        return
    assert callable(found) or isinstance(found, staticmethod | classmethod), (
        f"{reliance.target} is not callable"
    )
    parameters = _parameters(found)
    leading = parameters[: len(reliance.parameters)]
    assert leading == list(reliance.parameters), (
        f"{reliance.target} now takes {parameters}; {reliance.used_by} passes {list(reliance.parameters)} first"
    )
    missing = [name for name in reliance.keywords if name not in parameters]
    assert not missing, f"{reliance.target} no longer takes {missing} (used by {reliance.used_by})"


OVERRIDES = [reliance for reliance in RELIANCES if reliance.override]


@pytest.mark.parametrize("reliance", OVERRIDES, ids=[reliance.target for reliance in OVERRIDES])
def test_each_override_keeps_the_signature_of_what_it_overrides(reliance: Reliance) -> None:
    assert reliance.override is not None
    theirs = inspect.signature(_resolve(reliance.target))
    ours = inspect.signature(_resolve(reliance.override))
    assert [(p.name, p.kind) for p in ours.parameters.values()] == [
        (p.name, p.kind) for p in theirs.parameters.values()
    ], f"{reliance.target} is now {theirs}; {reliance.override} overrides it as {ours}"


def test_the_api_handler_sets_every_attribute_djangos_load_middleware_sets() -> None:
    djangos = BaseHandler()
    djangos.load_middleware(is_async=True)
    ours = ApiASGIHandler()
    missing = set(vars(djangos)) - set(vars(ours))
    assert not missing, (
        f"BaseHandler.load_middleware now also sets {sorted(missing)}: set them in ApiASGIHandler"
    )


def test_request_finished_has_only_the_receivers_the_api_handler_may_run_on_the_event_loop() -> None:
    sync_receivers, async_receivers = request_finished._live_receivers(ApiASGIHandler)
    names = {f"{receiver.__module__}.{receiver.__qualname__}" for receiver in sync_receivers}
    unknown = names - internals.REQUEST_FINISHED_RECEIVERS
    assert not unknown, (
        f"request_finished has new receivers {sorted(unknown)}: can they run on the event loop?"
    )
    assert not async_receivers, (
        f"request_finished has async receivers {async_receivers}: HttpResponse.close() cannot run them on the loop"
    )


def test_database_connections_are_still_per_thread() -> None:
    assert ConnectionHandler.thread_critical is True, (
        "django.db.utils.ConnectionHandler.thread_critical is no longer True: database connections "
        "would follow the request's context onto the event loop, where ApiASGIHandler runs "
        "request_finished's close_old_connections"
    )


def test_rq_still_logs_the_per_job_lines_the_worker_filters_out() -> None:
    source = inspect.getsource(importlib.import_module(internals.RQ_WORKER_LOG_MODULE))
    gone = [prefix for prefix in worker._PER_JOB_CHATTER if f"'{prefix}" not in source]
    assert not gone, f"rq no longer logs lines starting {gone}: update _PER_JOB_CHATTER"


def test_the_started_registry_holds_executions_by_their_composite_key(redis_client: redis_lib.Redis) -> None:
    queue = Queue("internals-check", connection=redis_client, serializer=JSONSerializer)
    registry = queue.started_job_registry
    execution = Execution(id=uuid.uuid4().hex, job_id=uuid.uuid4().hex, connection=redis_client)
    with redis_client.pipeline() as pipe:
        registry.add_execution(execution, pipeline=pipe, ttl=60)
        pipe.execute()
    try:
        assert redis_client.zscore(registry.key, execution.composite_key) is not None, (
            "StartedJobRegistry no longer keys its entries by Execution.composite_key: "
            "IngestWorker._abandoned_requeue's claim (a ZREM of it) would never succeed"
        )
        assert registry.get_job_and_execution_ids(cleanup=False) == [(execution.job_id, execution.id)]
    finally:
        redis_client.delete(registry.key)
