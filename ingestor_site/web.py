"""One web process of `make run`: a granian worker serving the site, without granian's master.

    python -m ingestor_site.web --host 127.0.0.1 --port 8000 [--connections 4096]

`make run` starts WEB_PROCESSES of these on one port and restarts any that dies, as it does its
rq workers. Each binds the port itself with SO_REUSEPORT, as granian's own workers do on Linux,
and the kernel spreads the connections among them. granian's master process would do both, at
the cost of a Python process (~30 MB RSS) that serves no request. The worker is granian's own,
with the options of `web_command` (ingestor_site/processes.py); the Docker image runs that
command, master included, as a container has no supervisor of ours to restart a dead worker.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.mp import MPServer

from ingestor_site.processes import (
    STATIC_ROOT,
    WEB_BACKLOG,
    WEB_CONNECTIONS_PER_PROCESS,
    WEB_HEADER_TIMEOUT_MS,
)


class SingleProcessGranian(MPServer):
    """granian's server with its one worker run in this process instead of a forked child.

    `serve()` checks the options and resolves the defaults as for the command line, then calls
    `_serve`, which here builds the worker as the master would and runs it in place. The private
    names used are listed in ingestor_site/internals.py."""

    def _serve(self, spawn_target: Callable[..., None], target_loader: Callable[..., Any]) -> None:
        self._init_shared_socket()  # type: ignore[no-untyped-call]
        worker = self._spawn_worker(idx=0, target=spawn_target, callback_loader=target_loader)
        worker.inner.run()


def web_server(
    *, host: str, port: int, connections: int = WEB_CONNECTIONS_PER_PROCESS
) -> SingleProcessGranian:
    """The server `web_command` describes, for one process: the same interface, HTTP/1 only, header
    timeout, connection limit, backlog and static files."""
    static: dict[str, Any] = {}
    if (STATIC_ROOT / "staticfiles.json").exists():
        static = {"static_path_route": ["/static"], "static_path_mount": [STATIC_ROOT]}
    return SingleProcessGranian(
        "ingestor_site.asgi:application",
        address=host,
        port=port,
        interface=Interfaces.ASGINL,
        workers=1,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=WEB_HEADER_TIMEOUT_MS),
        backpressure=connections,
        backlog=WEB_BACKLOG,
        log_level=LogLevels.warning,
        **static,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ingestor_site.web", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (shared with the others)")
    parser.add_argument("--connections", type=int, default=WEB_CONNECTIONS_PER_PROCESS,
                        help="open connections past which this process stops accepting")  # fmt: skip
    args = parser.parse_args(argv)
    web_server(host=args.host, port=args.port, connections=args.connections).serve()


if __name__ == "__main__":
    main()
