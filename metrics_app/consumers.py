"""WS /ws/stats: a thin door onto this process's dashboard broadcaster."""

from __future__ import annotations

import asyncio
import contextlib

from channels.generic.websocket import AsyncWebsocketConsumer

from metrics_app.broadcaster import StatsBroadcaster, broadcaster_for_loop

# Not a configured channel layer: channels then gives the consumer none (no channel, no Redis
# receive); the broadcaster hands it the frames in memory instead.
NO_CHANNEL_LAYER = "dashboard-in-process"
# Close codes (RFC 6455): this process holds DASHBOARD_MAX_SOCKETS already; or the client reads so
# slowly that OUTBOX_FRAMES frames piled up. Either way the page reconnects and gets a snapshot.
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOO_SLOW = 4008
# Frames a socket may have waiting to be sent: a few ticks' worth (at most two frames a tick).
OUTBOX_FRAMES = 16


# channels ships no type hints: its base class is Any to mypy.
class StatsConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """Sends a snapshot on connect, then the broadcaster's frames: stats_update, batch_persisted.

    The socket reads nothing from Redis itself: the process's one broadcaster does, once per
    frame, and puts the same frame in every socket's outbox (see metrics_app/broadcaster.py).
    Each socket sends from its own outbox, so a client that reads slowly delays only itself.
    """

    channel_layer_alias = NO_CHANNEL_LAYER
    broadcaster: StatsBroadcaster | None = None
    outbox: asyncio.Queue[str] | None = None
    sender: asyncio.Task[None] | None = None
    closing: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        broadcaster = broadcaster_for_loop()
        await self.accept()
        if not broadcaster.has_room():
            # Accepted first so the client sees the code and the reason, not a bare refusal.
            await self.close(code=CLOSE_TRY_AGAIN_LATER, reason="dashboard socket limit of this server")
            return
        self.outbox = asyncio.Queue(maxsize=OUTBOX_FRAMES)
        self.broadcaster = broadcaster
        # Subscribed before the snapshot is taken, so no frame falls between the two; frames of
        # ticks meanwhile wait in the outbox and are sent after the snapshot.
        snapshot = await broadcaster.subscribe(self)
        await self.send(text_data=snapshot)
        self.sender = asyncio.get_running_loop().create_task(self._frames_send(self.outbox))

    def frame_deliver(self, frame: str) -> None:
        """Queue a frame of the broadcaster's; a socket too far behind is closed instead."""
        if self.outbox is None:
            return
        try:
            self.outbox.put_nowait(frame)
        except asyncio.QueueFull:
            self._leave()
            self.closing = asyncio.get_running_loop().create_task(
                self.close(code=CLOSE_TOO_SLOW, reason="frames unread for too long")
            )

    async def _frames_send(self, outbox: asyncio.Queue[str]) -> None:
        while True:
            frame = await outbox.get()
            try:
                await self.send(text_data=frame)
            except Exception:  # whatever the server raises for a closed socket
                # The client is gone; its disconnect event follows and ends this socket.
                return

    def _leave(self) -> None:
        if self.broadcaster is not None:
            self.broadcaster.unsubscribe(self)
            self.broadcaster = None
        self.outbox = None
        if self.sender is not None:
            self.sender.cancel()
            self.sender = None

    async def disconnect(self, code: int) -> None:
        sender = self.sender
        self._leave()
        if sender is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """The stream is one-way; whatever a client sends is ignored."""
