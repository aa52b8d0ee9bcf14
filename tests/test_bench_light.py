"""scripts/bench_light.py: another commit's checkout comes and goes, and a real run of both
stacks reports a figure for each."""

from __future__ import annotations

import shutil
import subprocess
from types import ModuleType

import pytest

from tests.scripts import script_module


@pytest.fixture(scope="module")
def light_bench() -> ModuleType:
    """The script as a module (scripts/ is not a package)."""
    return script_module("bench_light")


def _worktrees(module: ModuleType) -> str:
    return subprocess.run(
        ["git", "worktree", "list"], check=True, cwd=module.BASE_DIR, capture_output=True, text=True
    ).stdout


def test_the_other_commit_is_checked_out_beside_this_one_and_removed_after(light_bench: ModuleType) -> None:
    with light_bench.worktree("HEAD") as checkout:
        assert (checkout / "manage.py").is_file()
        assert (checkout / "ingestor_site" / "asgi.py").is_file()
        assert str(checkout) in _worktrees(light_bench)
    assert not checkout.exists()
    assert str(checkout) not in _worktrees(light_bench)


def test_the_report_gives_each_codes_medians_and_every_rounds_ratio(light_bench: ModuleType) -> None:
    code = light_bench.Code(label="a", stack=None)
    code.noop_p50_ms = [0.2, 0.3, 0.25]
    code.post_p50_ms = [0.8, 0.6, 1.0]
    code.post_per_s = [900.0, 1000.0, 1100.0]
    (line,) = light_bench.report_lines([code])
    assert line.startswith("a: no-op p50 250 µs, POST p50 800 µs, ratio 4.00 (2.00–4.00), POST 1,000 req/s")
    assert line.endswith("rounds: 4.00, 2.00, 4.00")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_short_run_measures_both_stacks(
    light_bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both stacks start (this checkout's and HEAD's), answer the rounds, and stop."""
    assert light_bench.main(["--against", "HEAD", "--rounds", "1", "--seconds", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "1 rounds of 1 s each, 1 connection(s):"
    assert [line.split(" (")[0] for line in lines[1:]] == ["this checkout", "HEAD"]
    for line in lines[1:]:
        assert " POST p50 " in line and " ratio " in line
