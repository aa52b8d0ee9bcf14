"""The load generator (`scripts/load_test.py`, `manage.py loadtest`) against the real server and worker."""

from __future__ import annotations

import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ingestor_site.embedded import free_port
from loadgen.cli import build_parser, duration_parse, plan_from_options
from loadgen.engine import LoadPlan, Tally, load_run
from loadgen.histogram import LatencyHistogram, bucket_bounds, bucket_index
from loadgen.progress import ProgressRenderer, ProgressSnapshot
from loadgen.report import Thresholds, report_build
from loadgen.verify import verify_database
from messages_app.models import Message
from tests.conftest import subprocess_database_url
from tests.livestack import LiveStack, wait_until

BASE_DIR = Path(__file__).resolve().parent.parent
SCRIPT = str(BASE_DIR / "scripts" / "load_test.py")
MANAGE = str(BASE_DIR / "manage.py")


def _options(*argv: str) -> dict[str, Any]:
    return vars(build_parser().parse_args(list(argv)))


def _run(
    command: list[str], *args: str, timeout_s: float = 60
) -> tuple[int, dict[str, Any] | None, str, str]:
    """Run the generator as a user would; return exit code, parsed JSON (if any), stdout, stderr."""
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    completed = subprocess.run(  # noqa: S603
        [*command, *args], capture_output=True, text=True, timeout=timeout_s, cwd=BASE_DIR, env=env
    )
    try:
        report = json.loads(completed.stdout)
    except ValueError:
        report = None
    return completed.returncode, report, completed.stdout, completed.stderr


def _script(*args: str, timeout_s: float = 60) -> tuple[int, dict[str, Any] | None, str, str]:
    return _run([sys.executable, SCRIPT], *args, timeout_s=timeout_s)


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "messages", "concurrency"),
    [("--quick", 1_000, 50), ("--stress", 10_000, 200), ("--extreme", 50_000, 500)],
)
def test_presets_set_message_count_and_concurrency(flag: str, messages: int, concurrency: int) -> None:
    plan = plan_from_options(_options(flag))
    assert (plan.messages, plan.concurrency) == (messages, concurrency)
    assert plan.endpoint == "http://localhost:8000/messages"


def test_explicit_options_override_a_preset_and_defaults_match_the_reference() -> None:
    assert plan_from_options(_options("--stress", "--concurrent", "64")).concurrency == 64
    assert plan_from_options(_options("--stress", "--concurrent", "64")).messages == 10_000
    default = plan_from_options(_options())
    assert (default.messages, default.concurrency, default.url) == (1_000, 50, "http://localhost:8000")
    timed = plan_from_options(_options("--duration", "2m", "--rate", "300", "--batch-size", "100"))
    assert (timed.messages, timed.duration_s, timed.rate) == (None, 120.0, 300.0)
    assert timed.endpoint == "http://localhost:8000/messages/batch"


def test_presets_are_mutually_exclusive() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--quick", "--extreme"])


@pytest.mark.parametrize(
    ("text", "seconds"), [("60s", 60.0), ("2m", 120.0), ("500ms", 0.5), ("90", 90.0), ("1.5h", 5400.0)]
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert duration_parse(text) == seconds


def test_process_shares_add_up_to_the_plan() -> None:
    plan = LoadPlan(messages=1_001, concurrency=7, rate=300.0, processes=3)
    shares = [plan.share(index) for index in range(3)]
    assert sum(share.messages or 0 for share in shares) == 1_001
    assert sum(share.concurrency for share in shares) == 7
    assert sum(share.rate or 0 for share in shares) == pytest.approx(300.0)


# --- histogram -----------------------------------------------------------------------------------


def test_histogram_percentiles_of_a_known_distribution() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 10_001):  # 1 ms .. 10 s, uniformly
        histogram.record(ms / 1000)
    summary = histogram.summary_ms()
    assert summary["count"] == 10_000
    assert summary["avg"] == pytest.approx(5000.5, rel=1e-6)
    assert (summary["min"], summary["max"]) == (1.0, 10_000.0)
    for key, exact in (("p50", 5000), ("p90", 9000), ("p95", 9500), ("p99", 9900), ("p99_9", 9990)):
        assert summary[key] == pytest.approx(exact, rel=1 / 128), key
        assert summary[key] >= exact  # nearest rank, reported as the bucket's highest value


def test_histogram_buckets_tile_the_range_within_one_percent() -> None:
    previous_high = -1
    for index in range(3_000):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1
        assert (high - low) <= max(low, 1) / 128
        assert bucket_index(low) == bucket_index(high) == index
        previous_high = high


def test_histogram_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    samples = [rng.expovariate(1 / 0.05) for _ in range(5_000)]
    whole, first, second = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for index, sample in enumerate(samples):
        whole.record(sample)
        (first if index % 3 else second).record(sample)
    first.merge(second)
    assert first.summary_ms() == whole.summary_ms()
    assert (
        LatencyHistogram.from_dict(json.loads(json.dumps(whole.to_dict()))).summary_ms() == whole.summary_ms()
    )
    assert LatencyHistogram().summary_ms()["p99"] == 0.0


# --- progress line -------------------------------------------------------------------------------


class FakeStream(io.StringIO):
    def __init__(self, *, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_redraws_one_line_in_place_on_a_terminal() -> None:
    stream = FakeStream(tty=True)
    progress = ProgressRenderer(stream, total=10_000)
    assert progress.update(ProgressSnapshot(2_499, 1, 2.0), now=100.0)
    assert not progress.update(ProgressSnapshot(2_600, 1, 2.05), now=100.05)  # within the interval
    assert progress.update(ProgressSnapshot(4_999, 1, 4.0), now=100.3)
    progress.finish(ProgressSnapshot(9_998, 2, 8.0))
    output = stream.getvalue()
    assert output.count("\r") == 3 and output.count("\n") == 1 and output.endswith("\n")
    assert "\x1b[K" in output
    assert "2,500/10,000 (25.0%) | Rate: 1,250 msg/s | Success: 2,499 | Failed: 1 | ETA: 6s" in output
    assert "[" + "█" * 8 + "░" * 24 + "]" in output
    assert "10,000/10,000 (100.0%)" in output


def test_progress_prints_a_line_every_few_seconds_when_not_a_terminal() -> None:
    stream = FakeStream(tty=False)
    progress = ProgressRenderer(stream, total=1_000)
    assert progress.interval_s >= 1.0
    drawn = [progress.update(ProgressSnapshot(n, 0, n / 100), now=n / 100) for n in range(0, 1_000, 10)]
    progress.finish(ProgressSnapshot(1_000, 0, 10.0))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert len(lines) == sum(drawn) + 1 == math.ceil(10.0 / progress.interval_s) + 1
    assert lines[-1].startswith("[" + "█" * 32 + "] 1,000/1,000 (100.0%)")


def test_progress_of_a_timed_run_counts_seconds() -> None:
    stream = FakeStream(tty=False)
    ProgressRenderer(stream, duration_s=60).finish(ProgressSnapshot(3_000, 0, 15.0))
    assert "15s/1m00s (25.0%) | Sent: 3,000 | Rate: 200 msg/s" in stream.getvalue()
    assert "ETA: 45s" in stream.getvalue()


# --- thresholds ----------------------------------------------------------------------------------


def _tally(latencies_ms: list[float], *, failed: int = 0) -> Tally:
    tally = Tally(
        succeeded=len(latencies_ms), requests_succeeded=len(latencies_ms), started_at=0.0, finished_at=2.0
    )
    for ms in latencies_ms:
        tally.latency.record(ms / 1000)
    if failed:
        tally.requests_failed = failed
        tally.fail("HTTP 503", failed)
    return tally


def test_thresholds_decide_the_exit_code() -> None:
    tally = _tally([10.0] * 98 + [500.0] * 2, failed=1)  # 100 of 101 succeeded, p99 = 500 ms
    plan = LoadPlan(messages=101)

    def exit_code(**limits: float) -> int:
        report = report_build(plan=plan, tally=tally, thresholds=Thresholds(**limits), server_before=None,
                              server_after=None, verify=None)  # fmt: skip
        return int(report["exit_code"])

    assert exit_code() == 0
    assert exit_code(max_p99_ms=600) == 0
    assert exit_code(max_p99_ms=100) == 1
    assert exit_code(min_success_rate=99.0) == 0
    assert exit_code(min_success_rate=99.5) == 1
    assert exit_code(min_throughput=50) == 0  # 100 messages in 2 s
    assert exit_code(min_throughput=51) == 1
    assert exit_code(max_e2e_p99_ms=100) == 1  # asked for, but no --verify figure to meet it
    tally.interrupted = True
    assert exit_code() == 130


# --- against the real server and worker ------------------------------------------------------------


def test_unreachable_api_is_a_clear_error_and_exit_2() -> None:
    code, report, stdout, stderr = _script("--url", f"http://127.0.0.1:{free_port()}", "--quick", "--json")
    assert code == 2
    assert "cannot reach the ingestor API" in stderr and "make run" in stderr
    assert report is None and "LOAD TEST RESULTS" not in stdout


@pytest.mark.integration
def test_run_reports_json_and_verifies_every_acknowledged_message(live_stack: LiveStack) -> None:
    code, report, _, stderr = _script(
        "--url", live_stack.url, "--messages", "600", "--concurrent", "30", "--json", "--verify",
        "--database-url", subprocess_database_url(),
    )  # fmt: skip
    assert code == 0, (stderr, json.dumps(report)[-1500:])
    assert report is not None
    assert report["sent"] == report["succeeded"] == 600 and report["failed"] == 0
    assert report["success_rate"] == 100.0 and report["failures"] == {}
    assert report["throughput_msgs_per_s"] > 0
    assert set(report["latency_ms"]) >= {"avg", "p50", "p90", "p95", "p99", "p99_9", "max"}
    assert report["latency_ms"]["count"] == 600
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert report["verify"]["method"] == "database" and report["verify"]["persisted"] == 600
    assert report["e2e_latency_ms"]["count"] == 600 and report["e2e_latency_ms"]["p99"] > 0
    before, after = report["server"]["before"], report["server"]["after"]
    assert after["total_messages"] - before["total_messages"] == 600
    # An independent look at the table: exactly the rows the generator says it got acknowledged.
    assert Message.objects.count() == 600
    assert Message.objects.filter(content__contains=f"#{report['config']['run_tag']}-").count() == 600


@pytest.mark.integration
def test_thresholds_set_the_exit_code_of_a_real_run(live_stack: LiveStack) -> None:
    common = ("--url", live_stack.url, "--messages", "200", "--concurrent", "20", "--json")
    code, report, _, stderr = _script(*common, "--max-p99-ms", "0.001", "--min-throughput", "1e9")
    assert code == 1, stderr
    assert report is not None and report["passed"] is False
    assert report["thresholds"]["max_p99_ms"]["passed"] is False
    assert report["thresholds"]["min_throughput"]["passed"] is False
    code, report, _, stderr = _script(*common, "--max-p99-ms", "60000", "--min-success-rate", "100",
                                      "--min-throughput", "1")  # fmt: skip
    assert code == 0, stderr
    assert report is not None and report["passed"] is True and len(report["thresholds"]) == 3


@pytest.mark.integration
def test_batch_mode_over_two_processes_loses_and_duplicates_nothing(live_stack: LiveStack) -> None:
    code, report, _, stderr = _script(
        "--url", live_stack.url, "--messages", "2000", "--batch-size", "50", "--concurrent", "4",
        "--processes", "2", "--json", "--verify", "--database-url", subprocess_database_url(),
    )  # fmt: skip
    assert code == 0, stderr
    assert report is not None
    assert report["requests"]["sent"] == 40 and report["succeeded"] == 2000
    assert report["config"]["endpoint"].endswith("/messages/batch")
    assert report["verify"]["acknowledged"] == report["verify"]["persisted"] == 2000
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert Message.objects.count() == 2000


@pytest.mark.integration
def test_open_model_sends_what_the_schedule_says(live_stack: LiveStack) -> None:
    code, report, _, stderr = _script(
        "--url", live_stack.url, "--rate", "250", "--duration", "1s", "--concurrent", "10", "--json"
    )
    assert code == 0, stderr
    assert report is not None and report["config"]["mode"] == "open"
    assert report["sent"] == report["succeeded"] == 250
    assert report["open_model"]["rate"] == 250.0


@pytest.mark.integration
def test_verify_finds_lost_and_duplicated_messages(live_stack: LiveStack) -> None:
    plan = LoadPlan(url=live_stack.url, messages=300, concurrency=10, collect_ids=True)
    tally = load_run(plan)
    assert tally.succeeded == 300 and len(tally.ids) == 300 * 16
    wait_until(lambda: Message.objects.count() == 300, timeout_s=30, what="300 rows")
    doomed = list(Message.objects.values_list("id", flat=True)[:7])
    Message.objects.filter(id__in=doomed).delete()
    copy = Message.objects.first()
    assert copy is not None
    copy.pk = None
    Message.objects.create(id="00000000-0000-7000-8000-000000000001", user_id=copy.user_id,
                           channel_id=copy.channel_id, content=copy.content, created_at=copy.created_at,
                           inserted_at=copy.inserted_at)  # fmt: skip
    result = verify_database(
        database_url=subprocess_database_url(), ids=bytes(tally.ids), run_tag=plan.run_tag
    )
    assert (result["acknowledged"], result["persisted"], result["lost"]) == (300, 293, 7)
    assert result["duplicated"] == 1
    assert result["e2e_latency_ms"]["count"] == 293


@pytest.mark.integration
def test_ctrl_c_stops_sending_and_prints_the_results_so_far(live_stack: LiveStack, output_dir: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    err_path = output_dir / "stderr.txt"
    with err_path.open("w") as err:
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, SCRIPT, "--url", live_stack.url, "--duration", "60s", "--concurrent", "10", "--json"],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=BASE_DIR, env=env,
        )  # fmt: skip
        wait_until(lambda: Message.objects.exists(), timeout_s=30, what="the first stored message")
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 130, err_path.read_text()
    report = json.loads(stdout)
    assert report["interrupted"] is True
    assert report["sent"] > 0 and report["sent"] == report["succeeded"] + report["failed"]
    # In-flight requests were waited for, not abandoned.
    assert not any(cause.startswith("cancelled") for cause in report["failures"])
    assert report["elapsed_s"] < 30


@pytest.mark.integration
def test_management_command_runs_the_same_generator(live_stack: LiveStack) -> None:
    started = time.monotonic()
    code, report, _, stderr = _run(
        [sys.executable, MANAGE, "loadtest"], "--quick", "--url", live_stack.url, "--json", "--verify",
        "--database-url", subprocess_database_url(), "--min-success-rate", "100",
    )  # fmt: skip
    assert code == 0, stderr
    assert report is not None
    assert (report["config"]["messages"], report["config"]["concurrency"]) == (1_000, 50)
    assert report["succeeded"] == 1_000 and report["lost"] == 0 and report["duplicated"] == 0
    assert "1,000/1,000 (100.0%)" in stderr  # the progress line, on stderr beside the JSON
    assert time.monotonic() - started < 60
