"""The launcher's stop is bounded and says when it had to kill: real processes, no servers; and
`make run`'s web process is configured as the web command is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import psutil

from ingestor_site.processes import spawn, stop, web_command
from ingestor_site.web import web_server
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


# Options of granian's server that only its master uses (make run's web processes have none), and
# the HTTP/2 settings, unused with `--http 1`.
UNUSED_IN_WEB_PROCESS = {
    "respawn_failed_workers",
    "respawn_interval",
    "workers_kill_timeout",
    "http2_settings",
}


def test_make_runs_web_process_serves_with_the_options_of_the_web_command(monkeypatch: Any) -> None:
    """ingestor_site/web.py builds granian's server itself; the tests, the benchmarks and the
    Docker image run web_command through granian's CLI. Both must configure the same server."""
    import granian.cli
    from granian.server.mp import MPServer

    built: list[MPServer] = []

    class Recorder(MPServer):
        def serve(self, *args: Any, **kwargs: Any) -> None:
            built.append(self)

    monkeypatch.setattr(granian.cli, "Server", Recorder)
    command = web_command(host="127.0.0.1", port=8123, processes=1, connections=77)
    granian.cli.cli.main(command[command.index("granian") + 1 :], standalone_mode=False)
    (theirs,) = built
    ours = web_server(host="127.0.0.1", port=8123, connections=77)
    # Its options, not its working parts (events, metrics, loaders: private names).
    options = {name for name in vars(theirs) if not name.startswith("_") and name != "main_loop_interrupt"}
    differing = {
        name for name in options - UNUSED_IN_WEB_PROCESS if getattr(ours, name) != getattr(theirs, name)
    }
    assert differing == set(), {name: (getattr(ours, name), getattr(theirs, name)) for name in differing}
    assert not ours.respawn_failed_workers  # the supervisor restarts a web process, not granian
