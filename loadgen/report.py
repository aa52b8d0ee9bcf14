"""The results of a run: one JSON-able dict, rendered as text for people or as JSON for CI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loadgen.engine import LoadPlan, Tally

RULE = "=" * 80
SERVER_METRICS = (
    "total_accepted",
    "total_messages",
    "total_batches",
    "total_dead_letters",
    "queue_length",
    "current_rps",
    "avg_latency_ms",
    "p50_latency_ms",
    "p95_latency_ms",
    "p99_latency_ms",
)
LATENCY_COLUMNS = (("avg", "avg"), ("p50", "p50"), ("p90", "p90"), ("p95", "p95"), ("p99", "p99"),
                   ("p99.9", "p99_9"), ("max", "max"))  # fmt: skip

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_UNREACHABLE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Thresholds:
    max_p99_ms: float | None = None
    min_success_rate: float | None = None  # percent
    min_throughput: float | None = None  # messages per second
    max_e2e_p99_ms: float | None = None


def _check(limit: float | None, actual: float | None, *, at_most: bool) -> dict[str, Any] | None:
    if limit is None:
        return None
    passed = actual is not None and (actual <= limit if at_most else actual >= limit)
    return {"limit": limit, "actual": actual, "passed": passed}


def report_build(
    *,
    plan: LoadPlan,
    tally: Tally,
    thresholds: Thresholds,
    server_before: dict[str, Any] | None,
    server_after: dict[str, Any] | None,
    verify: dict[str, Any] | None,
) -> dict[str, Any]:
    """Everything a run found, with thresholds evaluated and the exit code decided."""
    elapsed = tally.elapsed_s
    sent = tally.sent
    success_rate = 100.0 * tally.succeeded / sent if sent else 0.0
    latency = tally.latency.summary_ms()
    report: dict[str, Any] = {
        "config": {
            "url": plan.url,
            "endpoint": plan.endpoint,
            "mode": "open" if plan.rate else "closed",
            "messages": plan.messages,
            "concurrency": plan.concurrency,
            "duration_s": plan.duration_s,
            "rate": plan.rate,
            "batch_size": plan.batch_size,
            "processes": plan.processes,
            "run_tag": plan.run_tag,
        },
        "interrupted": tally.interrupted,
        "sent": sent,
        "succeeded": tally.succeeded,
        "failed": tally.failed,
        "success_rate": round(success_rate, 3),
        "failures": dict(sorted(tally.failures.items(), key=lambda item: -item[1])),
        "requests": {
            "sent": tally.requests_succeeded + tally.requests_failed,
            "succeeded": tally.requests_succeeded,
            "failed": tally.requests_failed,
            "per_s": round((tally.requests_succeeded + tally.requests_failed) / elapsed, 1)
            if elapsed
            else 0.0,
        },
        "elapsed_s": round(elapsed, 3),
        "throughput_msgs_per_s": round(tally.succeeded / elapsed, 1) if elapsed else 0.0,
        "latency_ms": latency,
        "server": {"before": server_before, "after": server_after},
    }
    if plan.rate:
        report["open_model"] = {
            "rate": plan.rate,
            "late_starts": tally.late_starts,
            "max_start_lag_ms": round(tally.max_start_lag_s * 1000, 3),
        }
    if verify is not None:
        report["verify"] = verify
        report["lost"] = verify.get("lost")
        report["duplicated"] = verify.get("duplicated")
        report["e2e_latency_ms"] = verify.get("e2e_latency_ms")
    e2e = (verify or {}).get("e2e_latency_ms") or {}
    checks = {
        "max_p99_ms": _check(
            thresholds.max_p99_ms, latency["p99"] if latency["count"] else None, at_most=True
        ),
        "min_success_rate": _check(thresholds.min_success_rate, report["success_rate"], at_most=False),
        "min_throughput": _check(thresholds.min_throughput, report["throughput_msgs_per_s"], at_most=False),
        "max_e2e_p99_ms": _check(thresholds.max_e2e_p99_ms, e2e.get("p99"), at_most=True),
    }
    if verify is not None and verify.get("lost") is not None:
        nothing_lost = not verify.get("lost") and not verify.get("duplicated")
        checks["verify"] = {"limit": 0, "actual": (verify.get("lost") or 0) + (verify.get("duplicated") or 0),
                            "passed": nothing_lost}  # fmt: skip
    report["thresholds"] = {name: check for name, check in checks.items() if check is not None}
    report["passed"] = all(check["passed"] for check in report["thresholds"].values())
    if tally.interrupted:
        report["exit_code"] = EXIT_INTERRUPTED
    else:
        report["exit_code"] = EXIT_OK if report["passed"] else EXIT_FAILED_CHECK
    return report


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)


def _number(value: Any, decimals: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return f"{value:,.{decimals}f}"
    return str(value)


def _latency_line(latency: dict[str, Any]) -> str:
    return " | ".join(f"{label} {_number(latency.get(key), 1)}" for label, key in LATENCY_COLUMNS)


def report_text(report: dict[str, Any]) -> str:
    """The human-readable results, in the layout of the load-testing guide's own tool (and then some)."""
    config = report["config"]
    lines = [
        RULE,
        "LOAD TEST RESULTS" + ("  (interrupted: partial results)" if report["interrupted"] else ""),
        RULE,
    ]
    how = f"{config['concurrency']} concurrent, {config['processes']} process(es)"
    if config["rate"]:
        how = f"open model at {config['rate']:,.0f} msg/s, up to " + how
    lines.append(f"Target:               POST {config['endpoint']} ({how})")
    lines.append(f"Total Messages:       {report['sent']:,}")
    lines.append(f"Successful Requests:  {report['succeeded']:,} ({report['success_rate']:.2f}%)")
    lines.append(f"Failed Requests:      {report['failed']:,}")
    for cause, count in report["failures"].items():
        lines.append(f"  {cause + ':':<38}{count:,}")
    lines.append(f"Total Time Elapsed:   {report['elapsed_s']:.2f}s")
    requests = report["requests"]
    per_request = f" ({_number(requests['per_s'], 1)} requests/s)" if config["batch_size"] else ""
    lines.append(
        f"Actual Throughput:    {_number(report['throughput_msgs_per_s'], 2)} messages/second{per_request}"
    )
    latency = report["latency_ms"]
    lines.append(f"Response Time (ms):   {_latency_line(latency)}")
    if "open_model" in report:
        model = report["open_model"]
        lines.append(
            f"Open model:           latency from each request's due time; {model['late_starts']:,} started "
            f"late (max {_number(model['max_start_lag_ms'], 1)} ms)"
        )
    before, after = report["server"]["before"], report["server"]["after"]
    if before or after:
        lines.append("")
        lines.append(f"Server metrics (GET /stats)     {'before':>14} {'after':>14} {'change':>14}")
        for name in SERVER_METRICS:
            old = (before or {}).get(name)
            new = (after or {}).get(name)
            change = new - old if isinstance(old, int | float) and isinstance(new, int | float) else None
            decimals = 1 if name.endswith(("_ms", "_rps")) else 0
            lines.append(f"  {name:<30}{_number(old, decimals):>14} {_number(new, decimals):>14} "
                         f"{_number(change, decimals):>14}")  # fmt: skip
    verify = report.get("verify")
    if verify:
        lines.append("")
        lines.append(f"Verification ({verify['method']}):")
        if verify.get("drained") is False:
            lines.append(
                f"  Queue not drained after {verify.get('drain_s', 0):.1f}s (backlog {verify.get('backlog')})"
            )
        for label, key in (("Acknowledged", "acknowledged"), ("Persisted", "persisted"), ("Lost", "lost"),
                           ("Duplicated", "duplicated"), ("Stored, not acknowledged", "stored_without_acknowledgement")):  # fmt: skip
            if key in verify:
                lines.append(f"  {label + ':':<28}{_number(verify[key])}")
        e2e = verify.get("e2e_latency_ms")
        if e2e:
            lines.append(f"  Receipt -> commit (ms):     {_latency_line(e2e)}")
        if verify.get("persisted_throughput_msgs_per_s"):
            lines.append(f"  Persisted throughput:       {_number(verify['persisted_throughput_msgs_per_s'], 1)} msg/s "
                         "(first receipt to last commit)")  # fmt: skip
        if verify.get("note"):
            lines.append(f"  Note: {verify['note']}")
    if report["thresholds"]:
        lines.append("")
        lines.append("Thresholds:")
        for name, check in report["thresholds"].items():
            verdict = "PASS" if check["passed"] else "FAIL"
            lines.append(
                f"  {verdict}  {name}: actual {_number(check['actual'], 2)}, limit {_number(check['limit'], 2)}"
            )
    lines.append(RULE)
    return "\n".join(lines) + "\n"
