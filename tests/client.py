"""A room-protocol client for tests: real WebSocket, real aiortc peer connections on loopback."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.peers import FrameCollector, answer_offer, apply_answer, client_pc, make_offer


class RoomClient:
    def __init__(self, base_ws: str, room: str, token: str):
        self.url = f"{base_ws}/ws/rooms/{room}"
        self.token = token
        self.session: aiohttp.ClientSession | None = None
        self.ws = None
        self.events: list[dict] = []
        self.waiters: list[tuple] = []
        self.pub = None
        self.sub = client_pc()
        self.collectors: list[FrameCollector] = []
        self.track_info: dict[str, dict] = {}
        self.sub.on("track", self._on_track)
        self.data_messages: list[dict] = []
        self.data_channel = None
        self.sub.on("datachannel", self._on_datachannel)
        self._reader = None
        self.joined: dict | None = None

    def _on_track(self, track) -> None:
        self.collectors.append(FrameCollector(track))

    def _on_datachannel(self, channel) -> None:
        self.data_channel = channel
        channel.on("message", lambda m: self.data_messages.append(json.loads(m)))

    async def connect(self, join: bool = True) -> "RoomClient":
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.url)
        self._reader = asyncio.ensure_future(self._read())
        if join:
            await self.send({"type": "join", "token": self.token})
            self.joined = await self.wait_for("joined", "error")
        return self

    async def send(self, message) -> None:
        if isinstance(message, (bytes, str)):
            await self.ws.send_str(message if isinstance(message, str) else message.decode())
        else:
            await self.ws.send_str(json.dumps(message))

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            self.events.append(event)
            if event["type"] == "offer":
                asyncio.ensure_future(self._answer(event))
            for waiter in list(self.waiters):
                types, fut = waiter
                if event["type"] in types and not fut.done():
                    fut.set_result(event)
                    self.waiters.remove(waiter)

    async def _answer(self, event) -> None:
        for t in event.get("tracks", []):
            self.track_info[t["mid"]] = t
        sdp = await answer_offer(self.sub, event["sdp"])
        await self.send({"type": "answer", "sdp": sdp})

    async def wait_for(self, *types: str, timeout: float = 10.0) -> dict:
        fut = asyncio.get_event_loop().create_future()
        self.waiters.append((types, fut))
        return await asyncio.wait_for(fut, timeout)

    async def expect(self, *types: str, timeout: float = 10.0) -> dict:
        """The first event of these types, already received or still to come."""
        for event in self.events:
            if event["type"] in types:
                return event
        return await self.wait_for(*types, timeout=timeout)

    async def request(self, message: dict, *types: str, timeout: float = 10.0) -> dict:
        waiter = asyncio.ensure_future(self.wait_for(*types, timeout=timeout))
        await asyncio.sleep(0)
        await self.send(message)
        return await waiter

    async def publish(self, *tracks, sources: list[str] | None = None) -> dict:
        self.pub = client_pc()
        transceivers = [self.pub.addTransceiver(t, direction="sendonly") for t in tracks]
        offer = await make_offer(self.pub)
        described = [{"mid": tr.mid, "source": s} for tr, s in zip(transceivers, sources or [])]
        reply = await self.request({"type": "publish", "sdp": offer, "tracks": described}, "answer", "error")
        if reply["type"] == "answer":
            await apply_answer(self.pub, reply["sdp"])
        return reply

    async def resubscribe(self) -> None:
        """Replace the subscriber connection, as the room page does when its ICE fails."""
        for c in self.collectors:
            c.stop()
        self.collectors, self.data_channel = [], None
        await self.sub.close()
        self.sub = client_pc()
        self.sub.on("track", self._on_track)
        self.sub.on("datachannel", self._on_datachannel)
        await self.request({"type": "resubscribe"}, "resubscribed")

    def video(self) -> FrameCollector | None:
        return next((c for c in self.collectors if c.kind == "video"), None)

    def audio(self) -> FrameCollector | None:
        return next((c for c in self.collectors if c.kind == "audio"), None)

    async def wait_track(self, kind: str, timeout: float = 10.0) -> FrameCollector:
        async def poll():
            while True:
                c = next((c for c in self.collectors if c.kind == kind), None)
                if c is not None:
                    return c
                await asyncio.sleep(0.02)
        return await asyncio.wait_for(poll(), timeout)

    async def close(self) -> None:
        for c in self.collectors:
            c.stop()
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.pub is not None:
            await self.pub.close()
        await self.sub.close()
        if self.session is not None:
            await self.session.close()
