"""Options and the run itself, shared by `scripts/load_test.py` and `manage.py loadtest`."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from loadgen.engine import LoadPlan, load_run
from loadgen.progress import ProgressRenderer, ProgressSnapshot
from loadgen.report import (
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    Thresholds,
    report_build,
    report_json,
    report_text,
)
from loadgen.server import ApiUnreachable, api_health, api_stats, queue_drain_wait

# name: (messages, concurrency), the presets of the load-testing guide users know from the FastAPI ingestor.
PRESETS: dict[str, tuple[int, int]] = {
    "quick": (1_000, 50),
    "stress": (10_000, 200),
    "extreme": (50_000, 500),
}
DEFAULT_MESSAGES = 1_000
DEFAULT_CONCURRENCY = 50
DEFAULT_URL = "http://localhost:8000"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration_parse(text: str) -> float:
    """'60s', '2m', '1.5h', '500ms' or plain seconds ('90') -> seconds."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 60s, 2m, 500ms)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The load generator's options, on the script's parser or the management command's."""
    presets = parser.add_mutually_exclusive_group()
    for name, (messages, concurrency) in PRESETS.items():
        presets.add_argument(f"--{name}", action="store_const", const=name, dest="preset",
                             help=f"preset: {messages:,} messages, {concurrency} concurrent")  # fmt: skip
    parser.add_argument(
        "--messages", type=_positive_int, help=f"messages to send (default {DEFAULT_MESSAGES:,})"
    )
    parser.add_argument("--concurrent", type=_positive_int,
                        help=f"requests in flight at most (default {DEFAULT_CONCURRENCY})")  # fmt: skip
    parser.add_argument("--url", default=DEFAULT_URL, help=f"base URL of the API (default {DEFAULT_URL})")
    parser.add_argument("--duration", type=duration_parse,
                        help="run for a time (60s, 2m) instead of a message count")  # fmt: skip
    parser.add_argument("--rate", type=_positive_float,
                        help="open model: send at this many messages/s whatever the server does, and "
                        "measure latency from each request's due time")  # fmt: skip
    parser.add_argument("--batch-size", type=_positive_int,
                        help="send this many messages per request to POST /messages/batch")  # fmt: skip
    parser.add_argument("--processes", type=_positive_int, default=1,
                        help="spread the load over this many processes (default 1)")  # fmt: skip
    parser.add_argument(
        "--timeout", type=_positive_float, default=30.0, help="seconds per request (default 30)"
    )
    parser.add_argument("--api-key", default=os.environ.get("INGEST_API_KEY"),
                        help="sent as X-API-Key (default $INGEST_API_KEY)")  # fmt: skip
    parser.add_argument("--json", action="store_true", dest="json_output",
                        help="print the results as JSON on stdout (progress stays on stderr)")  # fmt: skip
    parser.add_argument("--verify", action="store_true",
                        help="wait for the queue to drain, then check that every acknowledged message was "
                        "stored exactly once (by id with --database-url, else by the server's counters)")  # fmt: skip
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="PostgreSQL URL for --verify (default $DATABASE_URL, else that of this "
                        "checkout's `make run` when --url is its server)")  # fmt: skip
    parser.add_argument("--verify-timeout", type=duration_parse, default=120.0,
                        help="how long --verify waits for the queue to drain (default 120s)")  # fmt: skip
    parser.add_argument("--max-p99-ms", type=_positive_float, help="exit 1 if the client p99 is above this")
    parser.add_argument("--min-success-rate", type=float, help="exit 1 if fewer than this % succeed")
    parser.add_argument("--min-throughput", type=float, help="exit 1 below this many messages/s")
    parser.add_argument("--max-e2e-p99-ms", type=_positive_float,
                        help="exit 1 if the p99 receipt -> commit latency (--verify) is above this")  # fmt: skip
    parser.add_argument("--no-progress", action="store_false", dest="progress", help="no progress line")
    parser.add_argument("--path", help=argparse.SUPPRESS)  # GET a trivial endpoint: the generator's ceiling


def plan_from_options(options: Mapping[str, Any]) -> LoadPlan:
    """The LoadPlan the options describe: presets first, explicit values over them."""
    preset = options.get("preset")
    preset_messages, preset_concurrency = PRESETS[preset] if preset else (None, None)
    duration = options.get("duration")
    messages = options.get("messages")
    if messages is None and duration is None:
        messages = preset_messages or DEFAULT_MESSAGES
    return LoadPlan(
        url=options.get("url") or DEFAULT_URL,
        messages=messages,
        concurrency=options.get("concurrent") or preset_concurrency or DEFAULT_CONCURRENCY,
        duration_s=duration,
        rate=options.get("rate"),
        batch_size=options.get("batch_size"),
        timeout_s=options.get("timeout") or 30.0,
        processes=options.get("processes") or 1,
        api_key=options.get("api_key"),
        collect_ids=bool(options.get("verify")) and bool(options.get("database_url")),
        path=options.get("path"),
    )


def thresholds_from_options(options: Mapping[str, Any]) -> Thresholds:
    return Thresholds(
        max_p99_ms=options.get("max_p99_ms"),
        min_success_rate=options.get("min_success_rate"),
        min_throughput=options.get("min_throughput"),
        max_e2e_p99_ms=options.get("max_e2e_p99_ms"),
    )


def _say(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def load_test_run(
    options: Mapping[str, Any],
    *,
    stdout: TextIO,
    stderr: TextIO,
    database_for: Callable[[str], str | None] | None = None,
) -> int:
    """Health check, send, (verify), report; return the exit code.

    `database_for(api_url)` names the database behind an API URL when the caller knows it (the
    script asks its checkout's running `make run`), so --verify checks by id with no URL given.
    """
    if options.get("verify") and not options.get("database_url") and database_for is not None:
        options = {**options, "database_url": database_for(options.get("url") or DEFAULT_URL)}
    plan = plan_from_options(options)
    thresholds = thresholds_from_options(options)
    try:
        api_health(plan.url, api_key=plan.api_key)
    except ApiUnreachable as exc:
        _say(stderr, f"error: {exc}")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    before = api_stats(plan.url, api_key=plan.api_key)
    what = f"{plan.messages:,} messages" if plan.messages is not None else "messages"
    if plan.duration_s:
        what += f" for {plan.duration_s:g}s"
    mode = f" at {plan.rate:,.0f} msg/s (open model)" if plan.rate else ""
    batches = f" in batches of {plan.batch_size}" if plan.batch_size else ""
    _say(stderr, f"Sending {what}{batches} to {plan.endpoint}{mode}, {plan.concurrency} concurrent, "
                 f"{plan.processes} process(es). Ctrl-C stops and prints the results so far.")  # fmt: skip

    renderer = ProgressRenderer(
        stderr,
        total=plan.messages,
        duration_s=plan.duration_s if plan.messages is None else None,
        enabled=bool(options.get("progress", True)),
    )

    def on_progress(succeeded: int, failed: int, elapsed_s: float) -> None:
        renderer.update(ProgressSnapshot(succeeded, failed, elapsed_s), now=time.monotonic())

    try:
        tally = load_run(plan, on_progress=on_progress)
    except KeyboardInterrupt:  # before the run's own handlers were in place: nothing to report
        _say(stderr, "\ninterrupted before sending started")
        return EXIT_INTERRUPTED
    except RuntimeError as exc:  # a sending process died: its share of the results is gone
        _say(stderr, f"error: {exc}")
        return EXIT_UNREACHABLE
    renderer.finish(ProgressSnapshot(tally.succeeded, tally.failed, tally.elapsed_s))

    verify: dict[str, Any] | None = None
    if options.get("verify") and tally.succeeded:
        verify = _verify(plan, tally, options, before, stderr)
    after = (verify or {}).pop("_stats_after", None) or api_stats(plan.url, api_key=plan.api_key)
    report = report_build(plan=plan, tally=tally, thresholds=thresholds, server_before=before,
                          server_after=after, verify=verify)  # fmt: skip
    stdout.write(report_json(report) + "\n" if options.get("json_output") else report_text(report))
    stdout.flush()
    exit_code: int = report["exit_code"]
    return exit_code


def _verify(
    plan: LoadPlan, tally: Any, options: Mapping[str, Any], before: dict[str, Any] | None, stderr: TextIO
) -> dict[str, Any]:
    from loadgen.verify import verify_database, verify_stats

    _say(stderr, "Verifying: waiting for the queue to drain...")
    try:
        drain = queue_drain_wait(
            plan.url, timeout_s=options.get("verify_timeout") or 120.0, api_key=plan.api_key
        )
        after = api_stats(plan.url, api_key=plan.api_key)
        database_url = options.get("database_url")
        if database_url:
            result = verify_database(database_url=database_url, ids=bytes(tally.ids), run_tag=plan.run_tag)
        else:
            _say(
                stderr,
                "note: no --database-url (or $DATABASE_URL, or `make run` of this checkout at --url): checking counts through GET /stats only",
            )
            result = verify_stats(acknowledged=tally.succeeded, before=before, after=after)
    except KeyboardInterrupt:
        return {"method": "interrupted", "lost": None, "duplicated": None, "e2e_latency_ms": None}
    except Exception as exc:  # noqa: BLE001 - a failed check is reported, not a traceback
        return {"method": "failed", "error": f"{type(exc).__name__}: {exc}", "lost": None, "duplicated": None,
                "e2e_latency_ms": None}  # fmt: skip
    result.update(drained=drain.drained, drain_s=round(drain.waited_s, 3), backlog=drain.backlog)
    result["_stats_after"] = after
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="load_test.py",
        description="Load generator for the ingestor: send messages, report throughput and latency, "
        "optionally verify that every acknowledged message was stored exactly once.",
    )
    add_arguments(parser)
    return parser


def main(
    argv: Sequence[str] | None = None, *, database_for: Callable[[str], str | None] | None = None
) -> int:
    options = vars(build_parser().parse_args(argv))
    return load_test_run(options, stdout=sys.stdout, stderr=sys.stderr, database_for=database_for)
