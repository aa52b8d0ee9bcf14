"""WS /ws/stats with channels' WebsocketCommunicator, against the real Redis channel layer.

Batches go through the real pipeline (enqueue, then rq's SimpleWorker in burst mode), so the
frames carry what a worker actually recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis as redis_lib
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from messages_app import services
from messages_app.worker import IngestWorker
from metrics_app import broadcaster as broadcaster_module
from metrics_app.broadcaster import broadcaster_for_loop
from metrics_app.consumers import OUTBOX_FRAMES, StatsConsumer
from metrics_app.routing import websocket_urlpatterns

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1")
_opened: list[WebsocketCommunicator] = []


@pytest.fixture(autouse=True)
async def fresh_layer(redis_client: redis_lib.Redis) -> AsyncIterator[None]:
    """A channel layer and a broadcaster of this test's own event loop, stopped afterwards."""
    channel_layers.backends = {}
    yield
    while _opened:
        # A failed test leaves its sockets open; close them before the loop and layer go away.
        await _opened.pop().disconnect()
    await broadcaster_for_loop().stop()
    for layer in channel_layers.backends.values():
        await layer.close_pools()
    channel_layers.backends = {}


# An interval that keeps the broadcaster asleep after its first frame, whatever the time of day:
# it sleeps to the next multiple of the interval (plus its phase), which an hour-long interval
# reaches within seconds just before the top of an hour (a CI run at 07:59:55 got a second frame).
BROADCASTER_ASLEEP_S = 1e12


def _communicator(
    application: Any = None, headers: list[tuple[bytes, bytes]] | None = None
) -> WebsocketCommunicator:
    app = application if application is not None else URLRouter(websocket_urlpatterns)
    communicator = WebsocketCommunicator(
        app, "/ws/stats", headers=headers if headers is not None else [ORIGIN]
    )
    _opened.append(communicator)
    return communicator


async def _frame(communicator: WebsocketCommunicator, timeout: float = 5) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await communicator.receive_from(timeout=timeout))
    return frame


async def _frame_of(
    communicator: WebsocketCommunicator, kind: str, *, until: Any = None, timeout: float = 15
) -> dict[str, Any]:
    """The first frame of type `kind` (for which `until(frame)` holds, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = await _frame(communicator, timeout=max(deadline - time.monotonic(), 0.1))
        if frame["type"] == kind and (until is None or until(frame)):
            return frame
    raise AssertionError(f"no {kind} frame within {timeout}s")


class ThreadedWorker(IngestWorker):
    """The project's worker, runnable off the main thread (where Python allows no signal handlers)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


async def _frames_until(
    communicator: WebsocketCommunicator, done: Any, timeout: float = 20
) -> list[dict[str, Any]]:
    """Frames received until `done(frames)` holds for the list so far."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not done(frames):
        assert time.monotonic() < deadline, f"condition not met within {timeout}s; last: {frames[-1:]}"
        frames.append(await _frame(communicator, timeout=max(deadline - time.monotonic(), 0.1)))
    return frames


def _pipeline_run(count: int) -> None:
    """Enqueue `count` messages as one batch and let a real (in-process) rq worker persist them."""
    received = time.time()
    batch = [[str(uuid.uuid4()), 1 + i, 7, f"frame test {i}", received] for i in range(count)]
    services.batch_enqueue(batch=batch)
    queue = services.ingest_queue()
    ThreadedWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True)


async def test_sends_a_snapshot_on_connect_then_stats_updates() -> None:
    communicator = _communicator()
    connected, _ = await communicator.connect()
    assert connected
    snapshot = await _frame(communicator)
    assert snapshot["type"] == "snapshot"
    assert snapshot["stats"]["total_messages"] == 0
    assert snapshot["series"] == []
    assert 'id="cards"' in snapshot["html"] and 'hx-swap-oob="true"' in snapshot["html"]
    assert 'id="batches-table"' in snapshot["html"] and 'id="messages-table"' in snapshot["html"]

    update = await _frame_of(communicator, "stats_update")
    assert set(update) >= {"stats", "points", "html"}
    assert update["stats"]["queue_length"] == 0
    assert 'id="cards"' in update["html"]
    await communicator.disconnect()


async def test_persisted_batches_reach_the_socket_as_counts_and_aggregated_events() -> None:
    communicator = _communicator()
    await communicator.connect()
    assert (await _frame(communicator))["type"] == "snapshot"

    await sync_to_async(_pipeline_run)(30)
    await sync_to_async(_pipeline_run)(12)

    def both_batches_shown(frames: list[dict[str, Any]]) -> bool:
        # Counters show at once; latency once the seconds holding the batches are complete.
        latency_complete = [
            f for f in frames if f["type"] == "stats_update" and f["stats"]["latency_samples"]
        ]
        announced = sum(f["count"] for f in frames if f["type"] == "batch_persisted")
        return (
            bool(latency_complete)
            and latency_complete[-1]["stats"]["latency_samples"] == 42
            and announced >= 2
        )

    frames = await _frames_until(communicator, both_batches_shown)
    update = [frame for frame in frames if frame["type"] == "stats_update"][-1]
    assert update["stats"]["total_messages"] == 42
    assert update["stats"]["total_batches"] == 2
    assert update["stats"]["avg_batch_size"] == 21.0
    assert update["stats"]["queue_length"] == 0
    assert '<data class="value" value="42">42</data>' in update["html"]

    # One event per frame that saw new batches (not one per batch), newest batch first.
    events = [frame for frame in frames if frame["type"] == "batch_persisted"]
    assert sum(event["count"] for event in events) == 2
    sizes = [batch["size"] for event in reversed(events) for batch in event["batches"]]
    assert sizes == [12, 30]
    assert "frame test" in events[-1]["html"]
    assert ">12<" in events[-1]["html"] and ">30<" in events[-1]["html"]
    await communicator.disconnect()


async def test_points_follow_each_completed_second() -> None:
    communicator = _communicator()
    await communicator.connect()
    await _frame(communicator)
    await sync_to_async(_pipeline_run)(5)
    busy: list[dict[str, Any]] = []
    points: list[int] = []
    deadline = time.monotonic() + 10
    while not busy and time.monotonic() < deadline:
        frame = await _frame_of(communicator, "stats_update")
        points += [point["t"] for point in frame["points"]]
        busy += [point for point in frame["points"] if point["out"]]
    assert busy, "no point showed the persisted batch"
    assert busy[0]["in"] == 5 and busy[0]["out"] == 5
    assert busy[0]["p50"] is not None and busy[0]["p99"] >= busy[0]["p50"]
    assert points == list(range(points[0], points[0] + len(points))), "one point per second, in order"

    # A socket that connects now gets those seconds as its starting series.
    late = _communicator()
    await late.connect()
    snapshot = await _frame(late)
    assert snapshot["type"] == "snapshot"
    assert any(point["out"] == 5 for point in snapshot["series"])
    await late.disconnect()
    await communicator.disconnect()


async def test_many_sockets_share_one_redis_read_per_frame() -> None:
    broadcaster = broadcaster_for_loop()
    sockets = [_communicator() for _ in range(10)]
    for communicator in sockets:
        assert (await communicator.connect())[0]
        assert (await _frame(communicator))["type"] == "snapshot"
    all_joined = time.time()
    reads_before = broadcaster.reads

    async def frames_after_join(communicator: WebsocketCommunicator) -> list[float]:
        stamps: list[float] = []
        while not stamps or stamps[-1] < all_joined + 1.6:
            frame = await _frame_of(communicator, "stats_update")
            stamps.append(frame["stats"]["timestamp"])
        return [stamp for stamp in stamps if stamp >= all_joined]

    seen = await asyncio.gather(*(frames_after_join(c) for c in sockets))
    shortest = min(len(stamps) for stamps in seen)
    assert shortest >= 3
    # Every frame since all joined reached every socket: the same frames, in the same order.
    assert all(stamps[:shortest] == seen[0][:shortest] for stamps in seen)
    # One Redis read per frame, whatever the number of sockets (a read per socket: 10 a frame).
    frames_sent = len(set().union(*seen))
    assert broadcaster.reads - reads_before <= frames_sent + 1
    assert broadcaster.subscribers == 10
    for communicator in sockets:
        await communicator.disconnect()
    assert broadcaster.subscribers == 0


async def test_an_idle_socket_stays_open_and_still_gets_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Redis read sits under the socket (once, channels-redis dropped sockets idle ~5 s, #422)."""
    # One frame at start, then the broadcaster sleeps: nothing moves on the socket.
    monkeypatch.setattr(broadcaster_module, "FRAME_INTERVAL_S", BROADCASTER_ASLEEP_S)
    communicator = _communicator()
    await communicator.connect()
    assert (await _frame(communicator))["type"] == "snapshot"
    assert (await _frame(communicator))["type"] == "stats_update"
    assert await communicator.receive_nothing(timeout=7.5)
    probe = '{"type":"stats_update","probe":true}'
    broadcaster_for_loop()._fan_out(probe)
    assert await communicator.receive_from(timeout=5) == probe
    await communicator.disconnect()


async def test_past_the_socket_limit_a_socket_is_closed_with_try_again_later(
    settings: Any,
) -> None:
    settings.DASHBOARD_MAX_SOCKETS = 2
    sockets = [_communicator() for _ in range(2)]
    for communicator in sockets:
        assert (await communicator.connect())[0]
        assert (await _frame(communicator))["type"] == "snapshot"
    extra = _communicator()
    assert (await extra.connect())[0]
    closed = await extra.receive_output(timeout=5)
    assert closed == {
        "type": "websocket.close",
        "code": 1013,
        "reason": "dashboard socket limit of this server",
    }
    assert broadcaster_for_loop().subscribers == 2
    # A place freed is a place taken.
    await sockets[0].disconnect()
    again = _communicator()
    assert (await again.connect())[0]
    assert (await _frame(again))["type"] == "snapshot"
    for communicator in (sockets[1], again):
        await communicator.disconnect()


async def test_a_socket_whose_frames_pile_up_unsent_is_closed_and_the_others_are_fed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(broadcaster_module, "FRAME_INTERVAL_S", BROADCASTER_ASLEEP_S)
    broadcaster = broadcaster_for_loop()
    slow, fast = _communicator(), _communicator()
    await slow.connect()
    (slow_consumer,) = broadcaster.sinks
    await fast.connect()
    for communicator in (slow, fast):
        assert (await _frame(communicator))["type"] == "snapshot"
        assert (await _frame(communicator))["type"] == "stats_update"
    assert isinstance(slow_consumer, StatsConsumer) and slow_consumer.sender is not None
    slow_consumer.sender.cancel()  # this client stops reading: nothing leaves its outbox
    for index in range(OUTBOX_FRAMES + 1):
        broadcaster._fan_out(f'{{"type":"stats_update","n":{index}}}')
        await asyncio.sleep(0.01)
    assert slow_consumer not in broadcaster.sinks
    assert broadcaster.subscribers == 1
    assert (await slow.receive_output(timeout=5))["code"] == 4008
    received = [json.loads(await fast.receive_from(timeout=5))["n"] for _ in range(OUTBOX_FRAMES + 1)]
    assert received == list(range(OUTBOX_FRAMES + 1))
    await fast.disconnect()


async def test_refuses_a_socket_opened_from_another_site() -> None:
    from ingestor_site.asgi import application

    foreign = _communicator(application, headers=[(b"origin", b"http://evil.example")])
    connected, _ = await foreign.connect()
    assert not connected
    own = _communicator(application, headers=[(b"origin", b"http://localhost:8000"), (b"host", b"localhost")])
    connected, _ = await own.connect()
    assert connected
    assert (await _frame(own))["type"] == "snapshot"
    await own.disconnect()
