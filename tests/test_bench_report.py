"""BENCHMARKS.md's rendering (`scripts/bench.py`) on a small made-up result set: no benchmark run."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.scripts import script_module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """scripts/bench.py as a module (scripts/ is not a package)."""
    return script_module("bench")


def _load_report(*, throughput: float, persisted: float, p99: float, e2e_p99: float) -> dict[str, Any]:
    """What `scripts/load_test.py --json --verify` reports, reduced to the fields the report reads."""
    return {
        "throughput_msgs_per_s": throughput,
        "success_rate": 100.0,
        "latency_ms": {"p50": 10.0, "p95": 20.0, "p99": p99},
        "e2e_latency_ms": {"p50": 12.5, "p99": e2e_p99},
        "lost": 0,
        "duplicated": 0,
        "verify": {"persisted_throughput_msgs_per_s": persisted},
    }


def _report(bench: ModuleType, *, busy: list[str]) -> Any:
    def scenario(name: str, *reports: dict[str, Any]) -> Any:
        return bench.Scenario(name, runs=[bench.Run(report=report, client_cpu_s=1.0) for report in reports])

    scenarios = {
        "extreme": scenario(
            "extreme",
            _load_report(throughput=3_950.0, persisted=4_001.0, p99=242.7, e2e_p99=133.1),
            _load_report(throughput=3_960.0, persisted=4_010.0, p99=240.0, e2e_p99=130.0),
            _load_report(throughput=4_051.0, persisted=4_082.0, p99=250.0, e2e_p99=140.0),
        ),
        "batch, 1 worker": scenario(
            "batch, 1 worker",
            _load_report(throughput=111_369.0, persisted=54_835.0, p99=209.9, e2e_p99=2_865.0),
        ),
        "open model 1,900 msg/s (50%)": scenario(
            "open model 1,900 msg/s (50%)",
            _load_report(throughput=1_899.0, persisted=1_899.0, p99=38.7, e2e_p99=66.5),
        ),
    }
    ceiling = {
        "wrk GET /health/live": [
            {"requests_per_s": 15_050.0, "p50": 3.9, "p99": 8.3, "non_2xx": 0.0, "cpu_percent": 19.0},
            {"requests_per_s": 15_508.0, "p50": 3.9, "p99": 8.3, "non_2xx": 0.0, "cpu_percent": 19.0},
            {"requests_per_s": 16_814.0, "p50": 3.9, "p99": 8.3, "non_2xx": 0.0, "cpu_percent": 19.0},
        ]
    }
    return bench.Report(
        scenarios=scenarios,
        ceiling=ceiling,
        machine={
            "cpus": 2,
            "cpu_model": "Test CPU",
            "memory_gib": 23.5,
            "python": "3.11.7",
            "os": "Linux 6.1",
        },
        runs=3,
        minutes=7.31,
        neighbours=bench.Neighbours(mean_percent=42.0, busiest=busy, samples=26, every_s=15.0),
        load_before=0.23,
        load_after=4.36,
        generated_at=datetime(2026, 11, 27, 17, 3, tzinfo=UTC),
    )


def test_the_report_puts_the_measured_figures_into_the_prose(bench: ModuleType) -> None:
    text = bench.report_render(_report(bench, busy=[]))

    assert text.startswith("# Benchmarks\n")
    assert "on 2026-11-27 17:03 UTC, in 7.3 minutes" in text
    assert "the median of 3 runs" in text
    assert "- 2 CPUs (Test CPU), 23.5 GiB memory, Linux 6.1\n- Python 3.11.7\n" in text
    assert "- Load average before / after: 0.23 / 4.36 (1 min)\n" in text
    assert "in any of the 26 samples taken during the benchmark" in text
    assert "(granian, 2 processes," in text
    # Medians with the runs' spread, per scenario.
    assert "| extreme | 3,960 (3,950–4,051) | 100.00% | 10.0 / 20.0 / 242.7 | 0 / 0 | 12.5 / 133.1 |" in text
    assert "| batch, 1 worker | 111,369 (111,369–111,369) |" in text
    # The targets, answered from those figures.
    assert "| batch mode > 50,000 msg/s persisted | 54,835 msg/s persisted (best median) | yes |" in text
    assert (
        "| receipt → commit p99 < 100 ms at half capacity | 66.5 ms (open model 1,900 msg/s (50%)) | yes |"
        in text
    )
    assert "| wrk GET /health/live | 15,508 (15,050–16,814) | 3.9 / 8.3 | 19% | 0 |" in text
    assert "$" not in text, "every placeholder of the template is filled"
    assert text.endswith("where there are any.\n")


def test_the_report_names_the_busiest_other_processes_when_there_were_any(bench: ModuleType) -> None:
    busy = ["`postgres: checkpointer`: in 3 of 26 samples, up to 40%"]
    text = bench.report_render(_report(bench, busy=busy))

    assert "every 15 s, they used on average 42% of a core (of 200%)" in text
    assert "The busiest:\n  - `postgres: checkpointer`: in 3 of 26 samples, up to 40%\n" in text
    assert "No other process" not in text
    # Each table is whole: a header, a rule, then one row per line.
    for table in re.findall(r"(?:^\|.*\|\n)+", text, flags=re.MULTILINE):
        widths = {row.count(" | ") for row in table.splitlines() if not row.startswith("|---")}
        assert len(widths) == 1, table


def test_a_regeneration_keeps_the_sections_other_scripts_wrote(bench: ModuleType, tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    other = f"{bench.OTHER_SCRIPTS_MARKER}\n\n## Partitions\n\nfigures from another script\n"
    report.write_text("# old generated part\n\n" + other)
    assert bench.kept_sections(report) == "\n" + other
    assert bench.kept_sections(tmp_path / "missing.md") == ""
    report.write_text("# a report without other sections\n")
    assert bench.kept_sections(report) == ""


def test_the_goals_are_ratios_of_figures_from_the_same_run(bench: ModuleType) -> None:
    limits_module = sys.modules["bench_limits"]
    light = [
        limits_module.LightLoad(noop={"requests_per_s": 4_000.0, "p50": 0.25, "p99": 0.6},
                                post={"requests_per_s": 1_300.0, "p50": 0.70, "p99": 2.0}),
        limits_module.LightLoad(noop={"requests_per_s": 3_000.0, "p50": 0.20, "p99": 0.6},
                                post={"requests_per_s": 900.0, "p50": 0.80, "p99": 2.0}),
    ]  # fmt: skip
    pipeline = limits_module.Sustained(workers=1, stored=400_000, persisted_per_s=40_000.0,
                                       acknowledged_per_s=60_000.0,
                                       cpu_percent={"web": 90.0, "workers": 30.0, "PostgreSQL": 60.0,
                                                    "Redis": 2.0, "wrk": 1.0})  # fmt: skip
    report = _report(bench, busy=[])
    report.ceiling["wrk POST /messages"] = [
        {"requests_per_s": 8_000.0, "p50": 8.0, "p99": 20.0, "non_2xx": 0.0, "cpu_percent": 19.0},
        {"requests_per_s": 7_000.0, "p50": 8.0, "p99": 20.0, "non_2xx": 0.0, "cpu_percent": 19.0},
        {"requests_per_s": 9_000.0, "p50": 8.0, "p99": 20.0, "non_2xx": 0.0, "cpu_percent": 19.0},
    ]
    limits = bench.Limits(
        light=light,
        batch=[limits_module.BatchVsCopy(copy_rows_per_s=100_000.0, pipeline=pipeline)],
        workers=[pipeline],
    )
    text = bench.report_render(dataclasses.replace(report, limits=limits))

    # 0.70 / 0.25 = 2.8x and 0.80 / 0.20 = 4.0x: the worse run misses the goal.
    assert "| 3.4 (2.8–4.0)× (0.75 against 0.23 ms) | no |" in text
    # POST over the no-op, run by run: 8,000 / 15,050, 7,000 / 15,508, 9,000 / 16,814.
    assert "| 0.53 (0.45–0.54) | no |" in text
    assert (
        "| 0.40 (0.40–0.40) (40,000 against 100,000, COPY of as many rows as the load stored, 400,000) | no |"
        in text
    )
    assert "| 1 | 40,000 | 60,000 | 90% | 30% | 60% | 2% | 1% | 183% of 200% | web |" in text
    assert "$" not in text


def test_the_batch_load_counts_the_messages_refused_for_a_full_backlog_apart(bench: ModuleType) -> None:
    limits_module = sys.modules["bench_limits"]
    # 10 s at 100 requests/s of 1,000 messages, 400 of the 1,000 requests answered 503.
    acknowledged, refused = limits_module.messages_answered({"requests_per_s": 100.0, "non_2xx": 400.0})
    assert (acknowledged, refused) == (60_000.0, 40_000.0)
    assert limits_module.messages_answered({"requests_per_s": 100.0, "non_2xx": 0.0}) == (100_000.0, 0.0)
    run = limits_module.Sustained(workers=2, stored=600_000, persisted_per_s=50_000.0, acknowledged_per_s=acknowledged,
                                  refused_per_s=refused, cpu_percent={"web": 100.0, "PostgreSQL": 70.0})  # fmt: skip
    (row,) = limits_module.worker_rows([run], cores=2)
    assert row.startswith("| 2 | 50,000 | 60,000 (40,000 refused) | 100% |")


def test_the_goal_row_also_gives_the_ratio_against_the_small_copy_of_earlier_runs(bench: ModuleType) -> None:
    limits_module = sys.modules["bench_limits"]
    pipeline = limits_module.Sustained(workers=1, stored=2_000_000, persisted_per_s=120_000.0,
                                       acknowledged_per_s=190_000.0, cpu_percent={})  # fmt: skip
    runs = [
        limits_module.BatchVsCopy(
            copy_rows_per_s=150_000.0, pipeline=pipeline, copy_small_rows_per_s=240_000.0
        ),
        limits_module.BatchVsCopy(
            copy_rows_per_s=200_000.0, pipeline=pipeline, copy_small_rows_per_s=300_000.0
        ),
    ]
    (row,) = limits_module.goal_rows(light=[], ceiling={}, batch=runs, memory_rss_mb=None)
    # 120,000 / 150,000 = 0.80 and 120,000 / 200,000 = 0.60: the worse run misses the goal.
    assert (
        "| 0.70 (0.60–0.80) (120,000 against 175,000, COPY of as many rows as the load stored, 2,000,000)"
        in row
    )
    assert "; against 300,000 rows into the empty table 0.45 (0.40–0.50) | no |" in row


def test_the_copy_reference_made_a_chunk_at_a_time_continues_one_sequence(bench: ModuleType) -> None:
    limits_module = sys.modules["bench_limits"]
    whole = limits_module.load_like_rows(3_000)
    second = limits_module.load_like_rows(2_000, first=1_000)
    # The same users and channels, item for item, as the rows they stand in for.
    assert [row[1:4] for row in second] == [row[1:4] for row in whole[1_000:]]
    receipts = [row[4] for row in second]
    assert receipts[0] == receipts[999] < receipts[1_000], "one receipt time per request of 1,000"
    assert (
        inspect.signature(limits_module.copy_rate).parameters["rows"].default == limits_module.COPY_SMALL_ROWS
    )


def test_the_copy_reference_stores_the_rows_the_batch_load_stores(bench: ModuleType) -> None:
    """The indexes' cost depends on the values: the reference must be the load's own rows."""
    limits_module = sys.modules["bench_limits"]
    rows = limits_module.load_like_rows(3_000)
    assert len({row[0] for row in rows}) == 3_000, "an id of its own each"
    # One receipt time per request of 1,000, later for each request.
    receipts = [row[4] for row in rows]
    assert receipts[0] == receipts[999] < receipts[1_000] == receipts[1_999] < receipts[2_000]
    # Users and channels as the load's bodies draw them (10,000 users, 100 channels), not in sequence.
    assert all(1 <= row[1] <= 10_000 and 1 <= row[2] <= 100 for row in rows)
    assert [row[1] for row in rows[:5]] != list(range(1, 6))
    assert len({row[1] for row in rows[:1_000]}) > 900


def test_copys_reference_commits_as_often_as_a_worker_at_most_does(bench: ModuleType) -> None:
    from messages_app import jobs

    limits_module = sys.modules["bench_limits"]
    assert limits_module.WORKER_MAX_TRANSACTION_ROWS == jobs.ABSORB_MAX_ROWS
    assert inspect.signature(limits_module.copy_rate).parameters["chunk"].default == jobs.ABSORB_MAX_ROWS


def test_the_single_path_goal_takes_the_post_against_the_no_ops_before_and_after_it(
    bench: ModuleType,
) -> None:
    limits_module = sys.modules["bench_limits"]

    def wrk(rate: float) -> dict[str, float]:
        return {"requests_per_s": rate, "p50": 1.0, "p99": 2.0, "non_2xx": 0.0, "cpu_percent": 10.0}

    ceiling = {
        "wrk GET /health/live": [wrk(8_000.0), wrk(11_000.0)],
        "wrk POST /messages": [wrk(5_000.0), wrk(5_000.0)],
        limits_module.NOOP_AFTER: [wrk(12_000.0), wrk(9_000.0)],
    }
    (row,) = limits_module.goal_rows(light=[], ceiling=ceiling, batch=[], memory_rss_mb=None)
    # 5,000 / mean(8,000, 12,000) = 0.50 and 5,000 / mean(11,000, 9,000) = 0.50: both meet it.
    assert "| 0.50 (0.50–0.50) | yes |" in row
    # A report of runs without the second no-op takes the one before alone.
    del ceiling[limits_module.NOOP_AFTER]
    (row,) = limits_module.goal_rows(light=[], ceiling=ceiling, batch=[], memory_rss_mb=None)
    assert "| 0.54 (0.45–0.62) | no |" in row
