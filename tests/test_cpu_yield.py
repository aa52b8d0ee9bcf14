"""The web processes' CPU priority following the backlog (messages_app/cpu_yield.py), on a file
standing in for /proc/self/autogroup; tests/test_guarantees.py runs it on a real server's session."""

from __future__ import annotations

import errno
from pathlib import Path, PosixPath
from typing import Any

import pytest

from messages_app.cpu_yield import CpuYield


def written(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def test_the_session_steps_back_from_a_tenth_of_the_limit_and_comes_back_below_a_twentieth(
    tmp_path: Path,
) -> None:
    path = tmp_path / "autogroup"
    cpu = CpuYield(nice=10, max_backlog=1_000, path=path, eligible=True, rewrite_s=3600)
    # Not known at first (a replaced web process inherits its session as it was): set either way.
    cpu.follow(60)
    assert written(path) == "0"
    cpu.follow(99)
    assert written(path) == "0"
    cpu.follow(100)
    assert written(path) == "10"
    path.unlink()
    for backlog in (5_000, 100, 50):  # deep, then between the marks: left as it is
        cpu.follow(backlog)
    assert written(path) is None
    cpu.follow(49)
    assert written(path) == "0"
    assert cpu.current == 0


def test_between_the_marks_an_unknown_priority_is_set_to_normal(tmp_path: Path) -> None:
    path = tmp_path / "autogroup"
    CpuYield(nice=10, max_backlog=1_000, path=path, eligible=True).follow(70)
    assert written(path) == "0"


@pytest.mark.parametrize(("nice", "eligible"), [(0, True), (10, False)])
def test_off_or_not_the_servers_session_it_writes_nothing(tmp_path: Path, nice: int, eligible: bool) -> None:
    path = tmp_path / "autogroup"
    cpu = CpuYield(nice=nice, max_backlog=1_000, path=path, eligible=eligible)
    for backlog in (0, 5_000, 0):
        cpu.follow(backlog)
    assert written(path) is None
    assert not cpu.enabled


def test_without_autogroups_it_gives_up_quietly(tmp_path: Path) -> None:
    cpu = CpuYield(nice=10, max_backlog=1_000, path=tmp_path / "missing" / "autogroup", eligible=True)
    cpu.follow(5_000)
    assert not cpu.enabled
    assert cpu.current is None


class _Busy(PosixPath):
    """A path whose first write the kernel refuses as it does a second change within 100 ms."""

    refusals = 1

    def write_text(self, data: str, *args: Any, **kwargs: Any) -> int:
        if _Busy.refusals:
            _Busy.refusals -= 1
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return super().write_text(data)


def test_a_change_refused_for_now_is_tried_again_with_the_next_figure(tmp_path: Path) -> None:
    path = _Busy(tmp_path / "autogroup")
    cpu = CpuYield(nice=10, max_backlog=1_000, path=path, eligible=True)
    cpu.follow(5_000)
    assert cpu.enabled and cpu.current is None and written(path) is None
    cpu.follow(5_000)
    assert written(path) == "10"


def test_what_another_process_of_the_session_wrote_is_put_right_again(tmp_path: Path) -> None:
    path = tmp_path / "autogroup"
    cpu = CpuYield(nice=10, max_backlog=1_000, path=path, eligible=True, rewrite_s=0.0)
    cpu.follow(5_000)
    assert written(path) == "10"
    path.write_text("0")  # the other web process, whose last figure was a small backlog
    cpu.follow(5_000)
    assert written(path) == "10"
    assert cpu.current == 10
