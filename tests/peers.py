"""Client-side helpers: real aiortc peers on loopback, and frame collection."""

from __future__ import annotations

import asyncio
import logging

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from sfu.aiortc_seam import allow_large_rtp, read_in_batches, rebundle_orphans, restrict_ice_gathering
from sfu.peer import follow_ice_restart, ice_restart_in
from tests.media import read_counter

LOOPBACK = ["127.0.0.1"]
logger = logging.getLogger(__name__)


def client_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def set_local(pc: RTCPeerConnection, description) -> str:
    restrict_ice_gathering(pc, LOOPBACK)
    allow_large_rtp(pc)  # like a browser: takes and sends SRTP up to 2048 bytes
    read_in_batches(pc, rcvbuf=1 << 20)  # like a browser: drains its socket per wakeup (the loop also runs the server)
    await pc.setLocalDescription(description)
    return pc.localDescription.sdp


async def make_offer(pc: RTCPeerConnection) -> str:
    return await set_local(pc, await pc.createOffer())


async def set_remote(pc: RTCPeerConnection, sdp: str, kind: str) -> None:
    """Like a browser, an ICE restart in the other side's description is followed (the server's way), and
    every section ends up on the BUNDLE transport: an offer adding two sections of a kind the connection had
    none of leaves the second on a transport aiortc stopped, whose receiver never starts, and its packets,
    routed by payload type, land in the first one's jitter buffer (VP8 "Invalid data")."""
    parsed = SessionDescription.parse(sdp)
    restart = ice_restart_in(pc, parsed, kind)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
    rebundle_orphans(pc)
    if restart:
        await follow_ice_restart(pc, parsed, kind)


async def answer_offer(pc: RTCPeerConnection, sdp: str) -> str:
    await set_remote(pc, sdp, "offer")
    return await set_local(pc, await pc.createAnswer())


async def apply_answer(pc: RTCPeerConnection, sdp: str) -> None:
    await set_remote(pc, sdp, "answer")


class FrameCollector:
    """Consumes a remote track; for video records the counter read back from each frame."""

    def __init__(self, track):
        self.track = track
        self.kind = track.kind
        self.counters: list[int] = []
        self.frames = 0
        self.first_frame_at: float | None = None
        self.sizes: set[tuple[int, int]] = set()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_event_loop()
        try:
            while True:
                frame = await self.track.recv()
                if self.first_frame_at is None:
                    self.first_frame_at = loop.time()
                self.frames += 1
                if self.kind == "video":
                    self.sizes.add((frame.width, frame.height))
                    self.counters.append(read_counter(frame))
        except (MediaStreamError, asyncio.CancelledError):
            pass

    async def wait_frames(self, n: int, timeout: float = 10.0) -> None:
        async def poll():
            while self.frames < n:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(poll(), timeout)

    def stop(self) -> None:
        self.task.cancel()
