#!/usr/bin/env python
"""A TCP proxy that delays every chunk by a fixed time each way: network latency without netem.

    python scripts/delay_proxy.py --listen 10.250.0.21:6379 --to 127.0.0.1:6380 --delay-ms 0.5

Each direction of each connection has a reader that stamps what it receives and a writer that
sends it once the stamp plus the delay has passed, in order; so a request and its answer each
wait `delay` (a round trip gains 2 x delay) while a stream keeps its throughput. With
--delay-ms 0 it forwards at once (the same proxy hop, for a fair comparison). Threads rather than
asyncio: the event loop's timers have millisecond granularity, too coarse for 0.5 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import signal
import socket
import sys
import threading
import time

CHUNK = 65536


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _reader(source: socket.socket, stamped: queue.SimpleQueue[tuple[float, bytes] | None]) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(CHUNK):
            stamped.put((time.monotonic(), data))
    stamped.put(None)


def _writer(
    target: socket.socket, stamped: queue.SimpleQueue[tuple[float, bytes] | None], delay_s: float
) -> None:
    try:
        while (item := stamped.get()) is not None:
            received_at, data = item
            wait = received_at + delay_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _direct(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(CHUNK):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)


def _serve(client: socket.socket, upstream_address: tuple[str, int], delay_s: float) -> None:
    try:
        upstream = socket.create_connection(upstream_address, timeout=5)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threads = []
    for source, target in ((client, upstream), (upstream, client)):
        if delay_s > 0:
            stamped: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()
            threads.append(threading.Thread(target=_reader, args=(source, stamped), daemon=True))
            threads.append(threading.Thread(target=_writer, args=(target, stamped, delay_s), daemon=True))
        else:
            threads.append(threading.Thread(target=_direct, args=(source, target), daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    upstream.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept connections on")
    parser.add_argument("--to", required=True, help="HOST:PORT to forward them to")
    parser.add_argument("--delay-ms", type=float, default=0.5, help="one-way delay in each direction")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    upstream = _address(args.to)
    delay_s = args.delay_ms / 1000
    server = socket.create_server(_address(args.listen), backlog=1024, reuse_port=False)
    while True:
        client, _ = server.accept()
        threading.Thread(target=_serve, args=(client, upstream, delay_s), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
