"""One published track at the server: receives the publisher's RTP and fans it out, undecoded."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from aiortc.rtp import RtpPacket

from sfu.buffer import CachedPacket, PacketCache
from sfu.gopcache import GOP_REPLAY_SPEEDUP, GopCache
from sfu.interfaces import PacketSink, ReplayingSender, ReportSink, TrackSender
from sfu.liveness import LayerLiveness
from sfu.rtp import abs_send_time, is_keyframe, ntp_to_unix, unix_to_ntp, vp8_frame_size
from sfu.seqnum import ts_diff

logger = logging.getLogger(__name__)

# A publisher is asked for a keyframe at most this often, however many subscribers ask.
KEYFRAME_REQUEST_INTERVAL = 0.5
# A late leg waits at most this long for its transport before its GOP replay starts.
REPLAY_READY_TIMEOUT = 10.0


class PublisherClock:
    """Maps one publisher's NTP clock (from its sender reports) onto ours.

    Audio and video of one publisher share the offset, so the lip-sync the publisher put in its
    sender reports survives into the reports each subscriber leg sends.
    """

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset: float | None = None

    def to_local(self, remote_unix: float, arrival: float) -> float:
        if self.offset is None:
            self.offset = arrival - remote_unix
        return remote_unix + self.offset


class UpTrack:
    def __init__(
        self,
        *,
        track_id: str,
        kind: str,
        mime_type: str,
        clock_rate: int,
        payload_type: int,
        publisher_id: str,
        source: str,
        clock: PublisherClock,
        send_pli: Callable[[int], Awaitable[None]],
        codec_parameters: dict | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        call_later: Callable[[float, Callable[[], None]], Any] | None = None,
        mid: str | None = None,
        receiver: Any = None,
    ):
        self.track_id = track_id
        self.kind = kind
        self.mime_type = mime_type
        self.clock_rate = clock_rate
        self.payload_type = payload_type
        # The fmtp of the publisher's codec (H.264: profile-level-id, packetization-mode); legs match it.
        self.codec_parameters = dict(codec_parameters or {})
        self.publisher_id = publisher_id
        self.source = source
        self.mid = mid  # the publisher's m-section
        self.receiver = receiver  # the publisher's aiortc RTCRtpReceiver (None in a media worker)
        self._muted = False
        # Simulcast: the track's layers low to high, this one (the highest) last, and their rids; None for
        # a single stream. Legs pick a layer (sfu/layers.py); sinks (recorder, relay) take this one.
        self.layers: list[UpTrack] | None = None
        self.rids: list[str] | None = None
        self.frame_size: tuple[int, int] | None = None  # (width, height) of the last keyframe, simulcast VP8 only
        self._track_size = False
        self.liveness: LayerLiveness | None = None  # a simulcast layer: does it deliver (sfu/liveness.py)
        self.octets_received = 0
        self.known_bitrate = 0.0  # the last nonzero bitrate(): a paused layer's rate when it ran
        self._rate: tuple[float, int, float] = (monotonic(), 0, 0.0)  # (at, octets then, bits/s)
        self.cache = PacketCache()
        self.gop = GopCache() if kind == "video" else None
        self._replays: dict[ReplayingSender, asyncio.Task] = {}  # leg -> the task replaying the GOP cache to it
        self.downtracks: list[TrackSender] = []
        self.sinks: list[PacketSink] = []  # add_sink / remove_sink
        self._report_sinks: list[ReportSink] = []
        self.media_ssrc: int | None = None
        self._clock = clock
        self._send_pli = send_pli
        self._sr: tuple[float, int] | None = None  # (local unix time, rtp timestamp) of the last SR
        self._video = kind == "video"
        self._monotonic = monotonic
        self._call_later = call_later or (lambda delay, fn: asyncio.get_running_loop().call_later(delay, fn))
        self._last_pli = -KEYFRAME_REQUEST_INTERVAL
        self._pli_task: asyncio.Task | None = None
        self._pli_deferred = None  # the timer that sends a request made inside the interval
        self._keyframe_wanted = False  # a request stands until a keyframe arrives
        self.closed = False
        # counters
        self.packets_received = 0
        self.keyframes_received = 0
        self.keyframe_requests = 0
        self.plis_sent = 0
        self.payload_mismatches = 0
        self.forward_errors = 0
        self.replays = 0

    @property
    def muted(self) -> bool:
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        for track in self.layers or (self,):
            track._muted = value

    def set_layers(self, layers: list["UpTrack"], rids: list[str]) -> None:
        """Make this track (the highest layer) the face of a simulcast track with `layers`, low to high."""
        self.layers, self.rids = layers, rids
        for layer in layers:
            layer._track_size = self.mime_type.lower() == "video/vp8"
            layer.liveness = LayerLiveness(self._monotonic())

    def bitrate(self) -> float:
        """Bits per second received, over the last second or more (sampled when asked)."""
        at, octets, rate = self._rate
        now = self._monotonic()
        if now - at >= 1.0:
            previous = rate
            rate = (self.octets_received - octets) * 8 / (now - at)
            self._rate = (now, self.octets_received, rate)
            # A window in which the layer paused or resumed is partial: the rate it runs at is the
            # larger of two windows that both had packets (the allocator prices a paused layer by it).
            if rate and previous:
                self.known_bitrate = max(rate, previous)
        return rate

    def describe(self) -> dict:
        return {
            "track_id": self.track_id,
            "kind": self.kind,
            "source": self.source,
            "codec": self.mime_type,
            "participant": self.publisher_id,
            "muted": self.muted,
        }

    # -- from the publisher ---------------------------------------------------------------

    def on_sender_report(self, ssrc: int, ntp: int, rtp_timestamp: int, arrival: float | None = None) -> None:
        arrival = time.time() if arrival is None else arrival
        self._sr = (self._clock.to_local(ntp_to_unix(ntp), arrival), rtp_timestamp)
        for sink in self._report_sinks:
            try:
                sink.sender_report(ntp_to_unix(ntp) + (self._clock.offset or 0.0), rtp_timestamp)
            except Exception:  # a sink never breaks forwarding
                logger.exception("sink failed on a sender report")

    def capture_time(self, timestamp: int, arrival: float) -> float:
        """Local unix time at which the frame with this RTP timestamp was captured."""
        sr = self._sr
        if sr is None:
            return arrival
        return sr[0] + ts_diff(timestamp, sr[1]) / self.clock_rate

    async def on_rtp(self, packet: RtpPacket, arrival: float) -> None:
        if self.closed:
            return
        if packet.payload_type != self.payload_type:
            # A codec switch mid-stream would break every leg restricted to our codec.
            self.payload_mismatches += 1
            return
        self.packets_received += 1
        self.media_ssrc = packet.ssrc
        if self.liveness is not None:
            now = self._monotonic()
            if now - self.liveness.last_packet > 1.0 and self.liveness.last_packet > 0:
                logger.info("layer %s: packets again after %.1f s", self.track_id, now - self.liveness.last_packet)
            self.liveness.last_packet = now
        payload = packet.payload
        self.octets_received += len(payload)
        keyframe = is_keyframe(self.mime_type, payload) if self._video else True
        if keyframe and self._video:
            self._keyframe_wanted = False
            self.keyframes_received += 1
            if self._track_size:
                self.frame_size = vp8_frame_size(payload) or self.frame_size
        elif self._keyframe_wanted and self._pli_deferred is None \
                and self._monotonic() - self._last_pli >= KEYFRAME_REQUEST_INTERVAL:
            self._pli_when_allowed()  # the last request got no keyframe: ask again
        level = packet.extensions.audio_level
        cached = CachedPacket(
            packet.sequence_number, packet.timestamp, packet.marker, payload,
            (level[1] | (0x80 if level[0] else 0)) if level is not None else None,
            arrival, keyframe,
        )
        self.cache.add(cached)
        if self.gop is not None:
            self.gop.add(cached)
        if self._muted:
            return
        ntp = unix_to_ntp(self.capture_time(packet.timestamp, arrival))
        send_time = abs_send_time()
        tails: dict = {}
        for downtrack in self.downtracks:
            try:
                downtrack.forward(cached, ntp, send_time, tails)
            except Exception:
                # This runs inside the publisher's receive loop: an exception here would close its
                # transport, so one leg's failure costs that leg one packet and nothing more.
                self.forward_errors += 1
                if self.forward_errors == 1:
                    logger.exception("forwarding %s to %s failed; counting further failures",
                                     self.track_id, getattr(downtrack, "subscriber_id", "?"))
        if self.sinks:
            self._feed_sinks(packet, arrival)

    def _feed_sinks(self, packet: RtpPacket, arrival: float) -> None:
        # Over a snapshot: a failing sink is removed, and a sink may detach itself, without the
        # next sink missing the packet.
        for sink in tuple(self.sinks):
            try:
                sink.feed(packet, arrival)
            except Exception:
                logger.exception("sink failed; removing it from track %s", self.track_id)
                self.remove_sink(sink)

    def add_sink(self, sink: PacketSink) -> None:
        """`sink` gets every packet from now on (and the sender reports, if it takes them); added once."""
        if sink not in self.sinks:
            self.sinks.append(sink)
            if isinstance(sink, ReportSink):
                self._report_sinks.append(sink)

    def remove_sink(self, sink: PacketSink) -> None:
        """Detach `sink`; a sink that is not attached is ignored."""
        if sink in self.sinks:
            self.sinks.remove(sink)
        if sink in self._report_sinks:
            self._report_sinks.remove(sink)

    # -- keyframes --------------------------------------------------------------------------

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per KEYFRAME_REQUEST_INTERVAL. A request
        inside the interval is not dropped: it is sent when the interval ends (all requests made
        meanwhile become that one PLI). Until a keyframe arrives, the request is repeated once per
        interval: libwebrtc ignores a request within 300 ms of the last one it acted on, for all the
        layers of an encoder, so a PLI for one layer right after one for another is lost."""
        if not self._video or self.closed:
            return
        self.keyframe_requests += 1
        self._keyframe_wanted = True
        if self.media_ssrc is not None and self._pli_deferred is None:
            self._pli_when_allowed()

    def _pli_when_allowed(self) -> None:
        wait = self._last_pli + KEYFRAME_REQUEST_INTERVAL - self._monotonic()
        if wait > 0 or (self._pli_task is not None and not self._pli_task.done()):
            self._pli_deferred = self._call_later(max(wait, 0.01), self._send_deferred_pli)
        else:
            self._send_pli_now()

    def _send_deferred_pli(self) -> None:
        self._pli_deferred = None
        if not self.closed and self._keyframe_wanted:  # a keyframe came meanwhile: the request is met
            self._pli_when_allowed()

    def _send_pli_now(self) -> None:
        self._last_pli = self._monotonic()
        self.plis_sent += 1
        self._pli_task = asyncio.ensure_future(self._send_pli(self.media_ssrc))

    # -- subscribers ------------------------------------------------------------------------

    def legs(self) -> list:
        """The viewers' legs of this track, once each, whichever layer they take: a simulcast leg sits in
        its layer's `downtracks` through a tap (sfu/layers.py), two while it switches."""
        if not self.layers:
            return list(self.downtracks)
        return list({id(leg): leg for layer in self.layers for tap in layer.downtracks
                     for leg in (getattr(tap, "leg", tap),)}.values())

    def add_downtrack(self, downtrack: TrackSender) -> None:
        """A new leg starts from the cached keyframe when there is one (replayed, then live), else on
        the next keyframe; either way the publisher is asked for one."""
        if self.gop is not None and self.gop.packets and not self.muted and isinstance(downtrack, ReplayingSender):
            self.replays += 1
            self._replays[downtrack] = asyncio.ensure_future(self._replay_gop(downtrack))
        else:
            self.downtracks.append(downtrack)
        self.request_keyframe()

    def remove_downtrack(self, downtrack: TrackSender) -> None:
        task = self._replays.pop(downtrack, None)
        if task is not None:
            task.cancel()
        if downtrack in self.downtracks:
            self.downtracks.remove(downtrack)

    async def _replay_gop(self, downtrack: ReplayingSender) -> None:
        """Send the GOP cache to one leg, paced at GOP_REPLAY_SPEEDUP times real time by the packets'
        arrival times, following on into newer GOPs, until it has caught up with live; then the leg
        joins the fan-out in the same step, so no packet falls between the two."""
        loop = asyncio.get_running_loop()
        try:
            try:
                await asyncio.wait_for(downtrack.seam.ready.wait(), REPLAY_READY_TIMEOUT)
            except asyncio.TimeoutError:
                pass
            packets = self.gop.packets
            if packets:
                start, first, i = loop.time(), packets[0].arrival, 0
                while not self.closed and not self.muted:  # a muted track sends nothing, replayed or not
                    if i < len(packets):
                        wait = start + (packets[i].arrival - first) / GOP_REPLAY_SPEEDUP - loop.time()
                        if wait > 0.002:
                            await asyncio.sleep(wait)
                            continue
                        downtrack.replay(packets[i], GOP_REPLAY_SPEEDUP)
                        i += 1
                        continue
                    current = self.gop.packets
                    if current is packets:
                        break  # caught up
                    if current is None:
                        self.request_keyframe()  # the GOP overflowed: the leg has a gap until the next one
                        break
                    # A keyframe came meanwhile (the PLI's answer): its GOP follows on, contiguously;
                    # skipping to it would cost the subscriber the frames in between.
                    packets, i = current, 0
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("replaying the GOP of %s failed; the leg goes live", self.track_id)
        finally:
            if self._replays.pop(downtrack, None) is not None and not self.closed:
                downtrack.end_replay()
                self.downtracks.append(downtrack)

    def close(self) -> None:
        for layer in self.layers or ():
            if layer is not self:
                layer.close()
        self.closed = True
        for downtrack in [*self.downtracks, *self._replays]:
            downtrack.detach(self)
        self.downtracks.clear()
        for task in self._replays.values():
            task.cancel()
        self._replays.clear()
        if self.gop is not None:
            self.gop.clear()
        self.sinks.clear()
        self._report_sinks.clear()
        if self._pli_task is not None:
            self._pli_task.cancel()
        if self._pli_deferred is not None:
            self._pli_deferred.cancel()
            self._pli_deferred = None
