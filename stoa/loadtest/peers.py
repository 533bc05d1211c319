"""The load-test peers: a WHIP publisher of synthetic media, and WHEP viewers that count RTP.

A viewer never decodes. A *cheap* viewer (`cheap=True`) does real ICE and DTLS, so the server does all
its real work (SRTP included), but takes each SRTP media datagram at the ICE socket and reads only its
clear RTP header (sfu.aiortc_seam.tap_incoming_rtp): no decryption, no RTCP feedback from it. With an
RtpDrain, the process reads all its viewers' sockets in batches from one 10 ms timer instead of one loop
wake-up per datagram, and drops the server's RTCP unread. A full
viewer lets aiortc decrypt, NACK and send receiver reports, and counts after the RTX unwrap
(sfu.aiortc_seam.tap_receiver), at a few times the client CPU. A video frame counts as complete when its
marker-bit packet arrives and no sequence number was missing since the previous marker.
"""

from __future__ import annotations

import asyncio
import struct
import time

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from sfu.aiortc_seam import RtpDrain, harden_consent, restrict_ice_gathering, tap_incoming_rtp, tap_receiver
from sfu.peer import negotiated_codecs

LOOPBACK = ["127.0.0.1"]


class Refused(Exception):
    """The server answered the POST with 503 (at capacity, room full)."""


def client_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def local_offer(pc: RTCPeerConnection, addresses: list[str] | None = None) -> str:
    restrict_ice_gathering(pc, addresses or LOOPBACK)
    harden_consent(pc)  # the load client's own loop lag must not end its sessions
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def post_sdp(http: aiohttp.ClientSession, url: str, token: str, sdp: str) -> tuple[str, str]:
    async with http.post(url, data=sdp, headers={"Content-Type": "application/sdp",
                                                 "Authorization": f"Bearer {token}"}) as resp:
        body = await resp.text()
        if resp.status == 503:
            raise Refused(body.strip())
        if resp.status != 201:
            raise RuntimeError(f"POST {url} answered {resp.status}: {body.strip()}")
        return body, resp.headers["Location"]


async def delete_session(http: aiohttp.ClientSession, session_url: str, token: str) -> None:
    """End a WHIP/WHEP session (its URL takes the creator's token); a server already gone is fine."""
    try:
        async with http.delete(session_url, timeout=aiohttp.ClientTimeout(total=5),
                               headers={"Authorization": f"Bearer {token}"}):
            pass
    except Exception:
        pass


class StreamStats:
    """One received RTP stream, counted from header fields only."""

    __slots__ = ("packets", "octets", "frames", "timestamps", "first_at", "_base", "_ext", "_cycles",
                 "_last_seq", "_last_ts", "_gap")

    def __init__(self) -> None:
        self.packets = self.octets = self.frames = self.timestamps = 0
        self.first_at: float | None = None
        self._base: int | None = None   # first extended sequence number
        self._ext = 0                   # highest extended sequence number
        self._cycles = 0
        self._last_seq: int | None = None
        self._last_ts: int | None = None
        self._gap = False

    def on_packet(self, seq: int, timestamp: int, marker: bool, size: int) -> None:
        self.packets += 1
        self.octets += size
        if self.first_at is None:
            self.first_at = time.monotonic()
        if timestamp != self._last_ts:
            self.timestamps += 1  # frames with at least one packet, complete or not
            self._last_ts = timestamp
        last = self._last_seq
        if last is None:
            self._base = self._ext = seq
            self._last_seq = seq
        elif ((seq - last) & 0xFFFF) < 0x8000:  # newer
            if seq < last:
                self._cycles += 0x10000
            if seq != (last + 1) & 0xFFFF:
                self._gap = True
            self._last_seq = seq
            self._ext = self._cycles + seq
        if marker:
            if not self._gap:
                self.frames += 1
            self._gap = False

    @property
    def expected(self) -> int:
        return 0 if self._base is None else self._ext - self._base + 1

    def snap(self) -> list:
        return [self.packets, self.octets, self.frames, self.expected]


class Viewer:
    """One WHEP viewer: POST an offer for one video and one audio section, count what arrives."""

    def __init__(self, http: aiohttp.ClientSession, url: str, room: str, token: str, *, cheap: bool = True,
                 drain: RtpDrain | None = None):
        self.http, self.url, self.room, self.token, self.cheap = http, url.rstrip("/"), room, token, cheap
        self.drain = drain  # a cheap viewer's sockets are read in batches by this process's RtpDrain
        self.pc: RTCPeerConnection | None = None
        self.video, self.audio, self.rtx = StreamStats(), StreamStats(), StreamStats()
        self.location: str | None = None
        self.posted_at: float | None = None
        self.state = "waiting"   # waiting, joining, joined, refused, failed, left
        self.error = ""
        self._kinds: dict[int, StreamStats] = {}

    @property
    def join_time(self) -> float | None:
        """WHEP POST to the first media packet."""
        first = [s.first_at for s in (self.video, self.audio) if s.first_at is not None]
        return min(first) - self.posted_at if first and self.posted_at is not None else None

    @property
    def video_join_time(self) -> float | None:
        """WHEP POST to the first video packet: a leg starts on a keyframe, so this is when a picture can show."""
        if self.video.first_at is None or self.posted_at is None:
            return None
        return self.video.first_at - self.posted_at

    async def join(self) -> None:
        self.state = "joining"
        pc = self.pc = client_pc()
        video = pc.addTransceiver("video", direction="recvonly")
        audio = pc.addTransceiver("audio", direction="recvonly")
        if self.cheap:
            tap_incoming_rtp(pc, self._on_datagram, self.drain)
        else:
            tap_receiver(video.receiver, self._counter(self.video), lambda *_: None)
            tap_receiver(audio.receiver, self._counter(self.audio), lambda *_: None)
        offer = await local_offer(pc)
        self.posted_at = time.monotonic()
        try:
            answer, self.location = await post_sdp(self.http, f"{self.url}/whep/{self.room}", self.token, offer)
        except Refused as exc:
            self.state, self.error = "refused", str(exc)
            await pc.close()
            return
        for codec in negotiated_codecs(answer).values():
            self._kinds[codec.payload_type] = self.video if codec.kind == "video" else self.audio
        for line in answer.splitlines():  # a=rtpmap:97 rtx/90000
            if line.startswith("a=rtpmap:") and " rtx/" in line.lower():
                self._kinds[int(line[9:].split()[0])] = self.rtx
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        self.state = "joined"

    def _on_datagram(self, data: bytes) -> None:
        b1, seq, ts = struct.unpack_from("!xBHI", data)
        stats = self._kinds.get(b1 & 0x7F)
        if stats is not None:
            stats.on_packet(seq, ts, b1 > 127, len(data))

    @staticmethod
    def _counter(stats: StreamStats):
        async def on_rtp(packet, arrival: float) -> None:
            stats.on_packet(packet.sequence_number, packet.timestamp, packet.marker, len(packet.payload))
        return on_rtp

    @property
    def connected(self) -> bool:
        return self.pc is not None and self.pc.connectionState == "connected"

    def snap(self) -> dict:
        return {"v": self.video.snap(), "a": self.audio.snap(), "x": self.rtx.packets}

    async def leave(self) -> None:
        if self.location:
            await delete_session(self.http, self.url + self.location, self.token)
            self.location = None
        if self.pc is not None:
            await self.pc.close()
        if self.state == "joined":
            self.state = "left"


class Publisher:
    """One WHIP publisher of synthetic video (`video`: "loop", LoopedVideo, or "live", SyntheticVideo) and Tone."""

    def __init__(self, http: aiohttp.ClientSession, url: str, room: str, token: str, *, video: str = "loop"):
        from stoa.loadtest.media import LoopedVideo, SyntheticVideo, Tone

        self.http, self.url, self.room, self.token = http, url.rstrip("/"), room, token
        self.pc = client_pc()
        self.video, self.audio = (LoopedVideo() if video == "loop" else SyntheticVideo()), Tone()
        self.location: str | None = None

    async def start(self, timeout: float = 20.0) -> None:
        from stoa.loadtest.media import LoopedVideo

        video = self.pc.addTransceiver(self.video, direction="sendonly")
        if isinstance(self.video, LoopedVideo):  # its packets are VP8: offer nothing else
            video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                       if c.mimeType.lower() in ("video/vp8", "video/rtx")])
        self.pc.addTransceiver(self.audio, direction="sendonly")
        answer, self.location = await post_sdp(self.http, f"{self.url}/whip/{self.room}", self.token,
                                               await local_offer(self.pc))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if time.monotonic() > deadline or self.pc.connectionState in ("failed", "closed"):
                raise RuntimeError(f"the publisher did not connect ({self.pc.connectionState})")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.location:
            await delete_session(self.http, self.url + self.location, self.token)
        await self.pc.close()
