#!/usr/bin/env python
"""One connection's `POST /messages` against the no-op, for this code and another commit, side by side.

The light-load goal is a ratio of two p50s (README, Benchmarks), on a 2-core machine whose noise
moves a single run by more than most changes being judged. This starts both stacks at once, the
other commit's from a temporary git worktree, each as `make run` starts it (granian with 2
processes, one rq worker) on one embedded PostgreSQL and Redis (a Redis database each), then
alternates short wrk rounds between them (the order swapped every round) and prints, per code,
the medians of the rounds and each round's ratio.

    python scripts/bench_light.py --against 072cded [--rounds 10] [--seconds 2] [--connections 1]

The other commit must read the same tables: the schema is migrated by this checkout's code.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench  # noqa: E402

from ingestor_site.embedded import fresh_services, redis_url_database  # noqa: E402
from ingestor_site.processes import BASE_DIR  # noqa: E402

DATA_DIR = BASE_DIR / ".data" / "bench-light"


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """A checkout of `ref` in a temporary directory, removed (from git's list too) after."""
    with tempfile.TemporaryDirectory(prefix="bench-light-") as parent:
        path = Path(parent) / "code"
        subprocess.run(  # noqa: S603
            ["git", "worktree", "add", "--detach", "--quiet", str(path), ref],  # noqa: S607
            check=True, cwd=BASE_DIR,
        )  # fmt: skip
        try:
            yield path
        finally:
            subprocess.run(  # noqa: S603
                ["git", "worktree", "remove", "--force", str(path)],  # noqa: S607
                check=False, cwd=BASE_DIR,
            )  # fmt: skip


def revision(ref: str = "HEAD") -> str:
    """`ref`'s short commit id."""
    return subprocess.run(  # noqa: S603
        ["git", "rev-parse", "--short", ref],  # noqa: S607
        check=True, cwd=BASE_DIR, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@dataclass
class Code:
    """One of the two stacks, and what its rounds measured."""

    label: str
    stack: bench.Stack
    noop_p50_ms: list[float] = field(default_factory=list)
    post_p50_ms: list[float] = field(default_factory=list)
    post_per_s: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [post / noop for noop, post in zip(self.noop_p50_ms, self.post_p50_ms, strict=True)]


def report_lines(codes: list[Code]) -> list[str]:
    """Per code: the medians of its rounds (p50s in µs), and every round's ratio."""
    lines = []
    for code in codes:
        ratios = code.ratios
        lines.append(
            f"{code.label}: no-op p50 {statistics.median(code.noop_p50_ms) * 1000:,.0f} µs, "
            f"POST p50 {statistics.median(code.post_p50_ms) * 1000:,.0f} µs, "
            f"ratio {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}), "
            f"POST {statistics.median(code.post_per_s):,.0f} req/s; "
            f"rounds: {', '.join(f'{ratio:.2f}' for ratio in ratios)}"
        )
    return lines


def rounds_run(codes: list[Code], *, rounds: int, seconds: int, connections: int, post_lua: Path) -> None:
    for index in range(rounds):
        for code in codes if index % 2 == 0 else codes[::-1]:
            url = code.stack.url
            noop = bench.wrk(f"{url}/health/live", connections=connections, duration_s=seconds)
            post = bench.wrk(f"{url}/messages", connections=connections, duration_s=seconds, script=post_lua)
            if post["non_2xx"]:
                raise RuntimeError(f"{code.label}: {post['non_2xx']:.0f} POSTs were refused")
            code.noop_p50_ms.append(noop["p50"])
            code.post_p50_ms.append(post["p50"])
            code.post_per_s.append(post["requests_per_s"])


def arguments_parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", required=True, help="the commit (or any git revision) to compare with")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per code (default 10)")
    parser.add_argument("--seconds", type=int, default=2, help="wrk's duration per request kind (default 2)")
    parser.add_argument("--connections", type=int, default=1, help="wrk connections (default 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = arguments_parse(argv)
    if bench.wrk_missing():
        return 1
    with (
        worktree(arguments.against) as other_dir,
        fresh_services(DATA_DIR) as (database_url, redis_url),
        tempfile.TemporaryDirectory() as scratch,
    ):
        bench.schema_migrate(database_url, redis_url)
        post_lua = Path(scratch) / "post.lua"
        post_lua.write_text(bench.POST_LUA)
        codes: list[Code] = []
        try:
            variants = [(f"this checkout ({revision()})", BASE_DIR),
                        (f"{arguments.against} ({revision(arguments.against)})", other_dir)]  # fmt: skip
            for index, (label, code_dir) in enumerate(variants, 1):
                log_dir = Path(scratch) / f"code-{index}"
                log_dir.mkdir()
                stack = bench.Stack(database_url=database_url, redis_url=redis_url_database(redis_url, index),
                                    log_dir=log_dir, code_dir=code_dir)  # fmt: skip
                codes.append(Code(label=label, stack=stack))  # stopped below even if it fails to start
                stack.start(workers=1)
            rounds_run(codes, rounds=arguments.rounds, seconds=arguments.seconds,
                       connections=arguments.connections, post_lua=post_lua)  # fmt: skip
        finally:
            for code in codes:
                code.stack.stop()
    print(f"{arguments.rounds} rounds of {arguments.seconds} s each, {arguments.connections} connection(s):")
    for line in report_lines(codes):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
