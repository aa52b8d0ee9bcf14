"""WS /ws/stats: a thin door onto this process's dashboard broadcaster."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from metrics_app.broadcaster import StatsBroadcaster, broadcaster_for_loop


# channels ships no type hints: its base class is Any to mypy.
class StatsConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """Sends a snapshot on connect, then the broadcaster's frames: stats_update, batch_persisted.

    The socket reads nothing from Redis itself: the process's one broadcaster does, once per
    frame, for every socket in its group (see metrics_app/broadcaster.py).
    """

    broadcaster: StatsBroadcaster | None = None

    async def connect(self) -> None:
        broadcaster = broadcaster_for_loop()
        await self.accept()
        # Join before taking the snapshot so that no frame falls between the two; frames queue
        # behind this handler and arrive after the snapshot.
        await self.channel_layer.group_add(broadcaster.group, self.channel_name)
        self.broadcaster = broadcaster
        await self.send(text_data=await broadcaster.subscribe())

    async def disconnect(self, code: int) -> None:
        if self.broadcaster is not None:
            self.broadcaster.unsubscribe()
            await self.channel_layer.group_discard(self.broadcaster.group, self.channel_name)
            self.broadcaster = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """The stream is one-way; whatever a client sends is ignored."""

    async def snapshot(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["frame"])

    async def stats_update(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["frame"])

    async def batch_persisted(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["frame"])
