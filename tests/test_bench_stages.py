"""scripts/bench_stages.py's reading of py-spy samples and its report file handling: no server."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import script_module

ROOT_WEB = (
    "thread (101): MainThread;_run_module_as_main (<frozen runpy>:198);"
    "MPServer._spawn_asgi_worker (granian/server/mp.py:177);"
    "BaseEventLoop.run_forever (asyncio/base_events.py:607);BaseEventLoop._run_once (asyncio/base_events.py:1922)"
)
REQUEST = (
    ";Handle._run (asyncio/events.py:80);_future_watcher_wrapper.<locals>.future_watcher (granian/_futures.py:15)"
    ";http_application (ingestor_site/asgi.py:31);ApiASGIHandler.__call__ (ingestor_site/handlers.py:193)"
    ";BaseHandler._get_response_async (django/core/handlers/base.py:253)"
    ";csrf_exempt.<locals>._view_wrapper (django/views/decorators/csrf.py:60);messages (messages_app/views.py:221)"
)
ROOT_WORKER = (
    "thread (202): MainThread;<module> (manage.py:60);IngestWorker.work (messages_app/worker.py:119)"
    ";BaseWorker.work (rq/worker/base.py:673);SimpleWorker.execute_job (rq/worker/worker_classes.py:290)"
    ";BaseWorker.perform_job (rq/worker/base.py:1671);Job.perform (rq/job.py:1300)"
)
JOB = ";persist_batch (messages_app/jobs.py:33)"


@pytest.fixture(scope="module")
def stages() -> ModuleType:
    """scripts/bench_stages.py as a module (scripts/ is not a package)."""
    return script_module("bench_stages")


def _stage(stages: ModuleType, line: str, kind: str) -> str:
    (sample,) = stages.raw_parse([f"{line} 1"])
    return str(stages.stage_of(sample.frames, kind))


@pytest.mark.parametrize(
    ("leaf", "stage"),
    [
        (";_json_body (messages_app/views.py:87);loads (json/__init__.py:346)", "JSON_DECODE"),
        (";_json_body (messages_app/views.py:79);HttpRequest.body (django/http/request.py:340)", "DJANGO"),
        (";message_validate (messages_app/validation.py:80);_storable_content (messages_app/validation.py:44)", "VALIDATION"),
        (";_row (messages_app/views.py:202);uuid7 (uuid6/__init__.py:150)", "VALIDATION"),
        (";_submit (messages_app/views.py:94);Batcher.submit (messages_app/batcher.py:99)", "BATCHER"),
        (";JsonResponse.__init__ (django/http/response.py:763);JSONEncoder.encode (json/encoder.py:200)", "DJANGO"),
    ],
)  # fmt: skip
def test_web_samples_go_to_the_innermost_stage_that_claims_them(
    stages: ModuleType, leaf: str, stage: str
) -> None:
    assert _stage(stages, ROOT_WEB + REQUEST + leaf, "web") == getattr(stages, stage)


def test_the_event_loop_and_the_body_read_count_for_the_server(stages: ModuleType) -> None:
    loop = ROOT_WEB + ";BaseSelectorEventLoop._process_events (asyncio/selector_events.py:600)"
    body = ROOT_WEB + REQUEST.split(";BaseHandler")[0] + ";body_read_capped (ingestor_site/handlers.py:102)"
    assert _stage(stages, loop, "web") == stages.GRANIAN
    assert _stage(stages, body, "web") == stages.GRANIAN


def test_redis_calls_count_for_the_code_that_made_them(stages: ModuleType) -> None:
    redis_send = ";Pipeline.execute (redis/client.py:1600);AbstractConnection.send_packed_command (redis/connection.py:1349)"
    enqueue = (
        "thread (103): batcher_0;_worker (concurrent/futures/thread.py:83);_WorkItem.run (concurrent/futures/thread.py:58)"
        ";batch_enqueue (messages_app/services.py:97);Queue.enqueue_call (rq/queue.py:815)"
    )
    accepted = ";batch_enqueue (messages_app/services.py:110);accepted_record (telemetry/metrics.py:75)"
    assert _stage(stages, enqueue + redis_send, "web") == stages.ENQUEUE
    assert _stage(stages, enqueue.split(";Queue")[0] + accepted + redis_send, "web") == stages.WEB_METRICS
    # The asyncio enqueue runs in a task of the loop: the job's fields, then the call to Redis.
    enqueue_async = (
        ROOT_WEB + ";Batcher._flush_rows (messages_app/batcher.py:154)"
        ";batch_enqueue_async (messages_app/services.py:120);JobWriter.write_async (messages_app/job_writer.py:170)"
    )
    fields = (
        ";JobWriter._call (messages_app/job_writer.py:130);JobWriter.fields (messages_app/job_writer.py:121)"
    )
    async_send = ";AsyncScript.__call__ (redis/commands/core.py:10960);Redis.execute_command (redis/asyncio/client.py:700)"
    assert _stage(stages, enqueue_async + fields, "web") == stages.ENQUEUE
    assert _stage(stages, enqueue_async + async_send, "web") == stages.ENQUEUE
    job_metrics = ROOT_WORKER + JOB + ";_metrics_record (messages_app/jobs.py:60)"
    assert _stage(stages, job_metrics + redis_send, "worker") == stages.WORKER_METRICS
    heartbeat = ROOT_WORKER.split(";SimpleWorker")[0] + ";BaseWorker.heartbeat (rq/worker/base.py:1232)"
    assert _stage(stages, heartbeat + redis_send, "worker") == stages.DEQUEUE


@pytest.mark.parametrize(
    ("leaf", "stage"),
    [
        (";Job.args (rq/job.py:580);Job._deserialize_data (rq/job.py:610);JSONSerializer.loads (rq/serializers.py:34)", "JOB_DECODE"),
        (JOB + ";rows_decode (messages_app/services.py:59)", "JOB_DECODE"),
        (JOB + ";messages_persist (messages_app/services.py:166);_rows_insert (messages_app/services.py:135)"
         ";Cursor.execute (psycopg/cursor.py:97)", "INSERT"),
        (JOB + ";close_old_connections (django/db/__init__.py:60)", "INSERT"),
        (";Job.save (rq/job.py:1150);Job.to_dict (rq/job.py:1100)", "DEQUEUE"),
    ],
)  # fmt: skip
def test_worker_samples_go_to_their_stage(stages: ModuleType, leaf: str, stage: str) -> None:
    assert _stage(stages, ROOT_WORKER + leaf, "worker") == getattr(stages, stage)


def test_waiting_samples_are_dropped_and_frameless_ones_go_to_the_process(stages: ModuleType) -> None:
    lines = [
        ROOT_WEB + ";EpollSelector.select (selectors.py:468) 50",
        ROOT_WEB + REQUEST + ";messages (messages_app/views.py:230) 3",
        ROOT_WEB + REQUEST + ";_json_body (messages_app/views.py:87);loads (json/__init__.py:346) 1",
        "thread (104) 6",
        "thread (105): batcher_1;Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:81) 40",
    ]
    split = stages.thread_split(stages.raw_parse(lines), "web")
    assert split == {
        101: Counter({stages.DJANGO: 3, stages.JSON_DECODE: 1}),
        104: Counter({stages.NATIVE: 6}),
    }
    seconds = stages.cpu_apportion({101: 0.8, 104: 0.1, 105: 0.05}, 1.0, split, "web")
    assert seconds[stages.DJANGO] == pytest.approx(0.6)
    assert seconds[stages.JSON_DECODE] == pytest.approx(0.2)
    # Thread 104's frameless samples, thread 105 (idle samples only) and the 0.05 s of threads
    # that ended during the run all count for the web server itself.
    assert seconds[stages.GRANIAN] == pytest.approx(0.2)


def test_section_replaces_its_earlier_self_and_keeps_the_others(stages: ModuleType, tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    marker = stages.OTHER_SCRIPTS_MARKER
    report.write_text(f"# Benchmarks\n\nmain part\n\n{marker}\n\n## Partitions\n\nkept\n")
    stages.section_write(report, f"{stages.SECTION_TITLE}\n\nfirst\n")
    stages.section_write(report, f"{stages.SECTION_TITLE}\n\nsecond\n")
    text = report.read_text()
    assert text.count(stages.SECTION_TITLE) == 1
    assert "second" in text and "first" not in text
    assert text.index(marker) < text.index("## Partitions") < text.index(stages.SECTION_TITLE)
    report.write_text(text.replace("## Partitions", f"{stages.SECTION_TITLE}\n\nold\n\n## Partitions"))
    stages.section_write(report, f"{stages.SECTION_TITLE}\n\nthird\n")
    text = report.read_text()
    assert "old" not in text and "third" in text and "kept" in text
