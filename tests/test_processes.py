"""The launcher's stop is bounded and says when it had to kill: real processes, no servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil

from ingestor_site.processes import spawn, stop
from tests.livestack import wait_until

# A leader that ignores SIGTERM, with a child in its process group that ignores it too, as the
# granian worker that once kept the port after its master was told to stop.
STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print("ready", flush=True)
    time.sleep(600)
""")
# A leader that exits on SIGTERM but leaves a child behind in its group.
DESERTER = textwrap.dedent("""
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print("ready", flush=True)
    time.sleep(600)
""")


def _started(script: str) -> tuple[subprocess.Popen[bytes], list[psutil.Process]]:
    process = spawn([sys.executable, "-c", script], env=dict(os.environ), stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"ready"
    children = wait_until(lambda: psutil.Process(process.pid).children(), timeout_s=10, what="the child")
    return process, [psutil.Process(process.pid), *children]


def test_stop_kills_the_group_of_a_process_that_ignores_sigterm_and_says_so() -> None:
    process, members = _started(STUBBORN)
    said: list[str] = []
    try:
        stop([process], label="web server", grace_s=1, announce=said.append)
        _, alive = psutil.wait_procs(members, timeout=10)
        assert alive == []
        assert process.returncode == -signal.SIGKILL
        assert said == [f"web server (pid {process.pid}) did not stop within 1s of SIGTERM; killing it"]
    finally:
        for member in members:
            if member.is_running():
                member.kill()


def test_stop_kills_what_a_stopped_process_left_in_its_group_and_says_so() -> None:
    process, members = _started(DESERTER)
    said: list[str] = []
    try:
        stop([process], label="worker", grace_s=10, announce=said.append)
        _, alive = psutil.wait_procs(members, timeout=10)
        assert alive == []
        assert process.returncode == -signal.SIGTERM
        assert said == [f"worker (pid {process.pid}) left processes of its group running; killing them"]
    finally:
        for member in members:
            if member.is_running():
                member.kill()
