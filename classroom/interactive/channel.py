"""ChannelMember: a room member over a message channel (an aiortc RTCDataChannel, or anything with
`send(str)`, `readyState` and `on("message", fn)`).

Inbound frames go through a bounded queue into `room.handle` one at a time, so one member's messages are
handled in the order sent; outbound messages are JSON text.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

from classroom.interactive.envelope import PROTOCOL_VERSION, Decoded, encode, error_message

log = logging.getLogger("stoa.interactive")

MAX_BUFFERED_BYTES = 4 * 1024 * 1024  # a receiver this far behind is too slow: its sends fail


class ChannelMember:
    def __init__(self, room: Any, channel: Any, *, identity: str, name: str = "", role: str = "student",
                 can_publish_data: bool = True, inbound_limit: int = 256):
        self.room = room
        self.channel = channel
        self.identity = identity
        self.name = name or identity
        self.role = role
        self.can_publish_data = can_publish_data
        self._inbound: asyncio.Queue = asyncio.Queue(inbound_limit)
        self._reader: asyncio.Task | None = None

    async def send(self, message: dict) -> None:
        """The writer task's path: the channel if it can take the message now, else `fallback`."""
        if not self.send_now(message):
            await self.fallback(message)

    def send_now(self, message: dict) -> bool:
        """Send synchronously if the channel can take it now; False leaves the message to `send`. The one
        check of the channel's state: open, and not too far behind."""
        channel = self.channel
        if (channel is None or getattr(channel, "readyState", "open") != "open"
                or getattr(channel, "bufferedAmount", 0) > MAX_BUFFERED_BYTES):
            return False
        self.write(message)
        return True

    async def fallback(self, message: dict) -> None:
        """Deliver a message the channel cannot take. A member with no other transport fails the send
        (the room counts it); the classroom bridge's members use the room WebSocket."""
        state = getattr(self.channel, "readyState", "missing")
        raise ConnectionError(f"channel to {self.identity} is {state}" if state != "open" else
                              f"channel to {self.identity} is {self.channel.bufferedAmount} bytes behind")

    def write(self, message: dict) -> None:
        """Put one message on the open channel (a transport may substitute a faster writer)."""
        self.channel.send(encode(message))

    async def start(self) -> dict:
        """Join the room (the state goes out first) and start reading the channel."""
        if self.channel is not None:  # a member may get its channel later (see use_channel)
            self.channel.on("message", self.feed)
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"stoa-inbound-{self.identity}",
                                                              context=contextvars.Context())
        return await self.room.join(self)

    def use_channel(self, channel: Any) -> None:
        """Attach (or replace) the channel this member reads from and writes to."""
        self.channel = channel
        channel.on("message", self.feed)

    def feed(self, raw: str | bytes | Decoded) -> None:
        try:
            self._inbound.put_nowait(raw)
        except asyncio.QueueFull:
            self.room.send_to(self, {**error_message("rate_limited", "too many messages queued; slow down"),
                                     "v": PROTOCOL_VERSION})

    async def _read(self) -> None:
        while True:
            raw = await self._inbound.get()
            await self.room.handle(self, raw)  # never raises

    async def stop(self) -> None:
        self.room.detach(self)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
