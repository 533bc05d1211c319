"""The seams inside the media plane, drawn as LiveKit's pkg/sfu/interfaces.go draws them.

A `TrackReceiver` (UpTrack) takes one publisher's RTP and fans it out to `TrackSender`s (DownTrack: one
subscriber leg each) on the hot path, and to `PacketSink`s (recorder, media-worker relay, speaker levels).
Structural types only: nothing here runs per packet.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from aiortc.rtp import RtpPacket

from sfu.buffer import CachedPacket, PacketCache


class TrackSender(Protocol):
    """One subscriber's leg of a track (sfu.downtrack.DownTrack)."""

    subscriber_id: str

    def forward(self, packet: CachedPacket, ntp: int, send_time: bytes, tails: dict) -> None:
        """The hot path: once per packet and leg, synchronously, never raising into the receive loop."""

    def detach(self, uptrack: TrackReceiver | None = None) -> None:
        """Stop taking packets from `uptrack` (any, when None)."""


@runtime_checkable
class ReplayingSender(TrackSender, Protocol):
    """A leg that can start from the GOP cache (a late joiner gets the current GOP at once)."""

    def replay(self, packet: CachedPacket, speedup: float) -> None: ...

    def end_replay(self) -> None: ...


class TrackReceiver(Protocol):
    """One published track (sfu.uptrack.UpTrack), as its legs see it."""

    track_id: str
    kind: str
    mime_type: str
    clock_rate: int
    codec_parameters: dict
    cache: PacketCache

    def add_downtrack(self, downtrack: TrackSender) -> None: ...

    def remove_downtrack(self, downtrack: TrackSender) -> None: ...

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (rate-limited for all legs together)."""


class PacketSink(Protocol):
    """Anything besides subscriber legs that wants the source packets (the recorder, a media worker's relay,
    the speaker detector). Attached with `UpTrack.add_sink`."""

    def feed(self, packet: RtpPacket, arrival_time: float) -> None: ...


@runtime_checkable
class ReportSink(PacketSink, Protocol):
    """A sink that also wants the publisher's sender reports (NTP time as unix seconds, on our clock)."""

    def sender_report(self, ntp_time: float, rtp_timestamp: int) -> None: ...
