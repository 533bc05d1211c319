"""One subscriber's send side of one track: munges, sends, answers NACKs, relays keyframe requests."""

from __future__ import annotations

import logging
import time
from typing import Callable

from aiortc import RTCRtpSender

from sfu.aiortc_seam import MAX_RTP_PACKET, SenderSeam
from sfu.buffer import CachedPacket
from sfu.forwarder import Forwarder
from sfu.interfaces import TrackReceiver
from sfu.layers import LayerSwitcher
from sfu.liveness import usable
from sfu.pacer import Pacer
from sfu.peer import same_codec
from sfu.quality import BAD, GOOD, QualityChange, ViewerQuality
from sfu.retransmit import SEND, RetransmitPolicy
from sfu.rtp import (MAX_PADDING, ExtensionIds, abs_send_time, build_extensions, build_header, padding_packet,
                     rtx_payload, unix_to_ntp)

logger = logging.getLogger(__name__)

OnQuality = Callable[["DownTrack", QualityChange], None]


class DownTrack:
    __slots__ = ("subscriber_id", "kind", "uptrack", "seam", "forwarder", "_ext_ids", "_mid", "_key",
                 "_rtx_seq", "paused", "_codec_ok", "_sr_packets", "_sr_octets",
                 "packets_sent", "retransmits", "nack_misses", "keyframe_requests",
                 "retransmit", "quality", "pacer", "on_quality", "keyframes_for_viewer", "_load", "_shed", "unselected",
                 "oversize_drops", "replayed", "source", "switcher", "on_remb", "padding_sent", "twcc")

    def __init__(self, sender: RTCRtpSender, *, subscriber_id: str, kind: str, load=None):
        self.subscriber_id = subscriber_id
        self.kind = kind
        self.uptrack: TrackReceiver | None = None
        # The track whose packets the leg forwards: the uptrack, or one layer of a simulcast uptrack,
        # chosen by `switcher` (sfu/layers.py).
        self.source: TrackReceiver | None = None
        self.switcher: LayerSwitcher | None = None
        self.on_remb: Callable[[int], None] | None = None  # the viewer's REMB (bits/s), for layer choice
        # The viewer transport's transport-wide numbering (sfu/twcc.py SendHistory), shared by its legs;
        # None: transport-cc toward this viewer is off (setting downlink_transport_cc).
        self.twcc = None
        self._load = load  # sfu.overload.LoadMonitor of this process, or None
        self._shed = False  # paused by overload shedding
        self.unselected = False  # paused by Last-N (sfu/lastn.py): not among the videos this viewer gets
        self.seam = SenderSeam(sender, self._nack_unless_overloaded if load is not None else self._on_nack,
                               self._on_keyframe_request, self._on_report, self._on_remb)
        self.forwarder: Forwarder | None = None
        self._ext_ids: ExtensionIds | None = None
        self._mid = b""
        self._key = None
        self._rtx_seq = 0
        now = time.time()  # the clock of CachedPacket.arrival
        self.retransmit = RetransmitPolicy(now)
        self.quality = ViewerQuality(now)
        self.pacer = Pacer(self.seam.send_rtp_now)
        self.on_quality: OnQuality | None = None  # told when the viewer's quality level changes
        self.keyframes_for_viewer = 0
        self.paused = False
        self._codec_ok = False
        self._sr_packets = 0
        self._sr_octets = 0
        # counters
        self.packets_sent = 0
        self.retransmits = 0
        self.nack_misses = 0
        self.keyframe_requests = 0
        self.oversize_drops = 0
        self.replayed = 0  # packets sent from the GOP cache when this leg started
        self.padding_sent = 0  # padding-only packets (probes, sfu/probe.py)

    @property
    def track_id(self) -> str | None:
        return self.uptrack.track_id if self.uptrack is not None else None

    def attach(self, uptrack) -> None:
        """Forward `uptrack` on this leg; a leg that carried another source continues seamlessly."""
        if self.uptrack is uptrack:
            return
        if self.uptrack is not None:
            self._leave()
        self.uptrack = uptrack
        self._codec_ok = False
        if self.forwarder is not None:
            self.forwarder.switch_source()
            self.forwarder.needs_keyframe = uptrack.kind == "video"
        layers = getattr(uptrack, "layers", None)
        if layers:
            # Simulcast: start on the highest layer that delivers (sfu/liveness.py); the subscriber's
            # allocator steps it down.
            now = time.monotonic()
            start = next((i for i in range(len(layers) - 1, 0, -1) if usable(layers[i], now)), 0)
            self.switcher = LayerSwitcher(self, uptrack, start)
        else:
            self.source = uptrack
            uptrack.add_downtrack(self)

    def _leave(self) -> None:
        if self.switcher is not None:
            self.switcher.close()
            self.switcher = None
        else:
            self.uptrack.remove_downtrack(self)
        self.source = None

    def detach(self, uptrack=None) -> None:
        if uptrack is None or uptrack is self.uptrack or (uptrack is not None and uptrack is self.source):
            if self.uptrack is not None:
                self._leave()
            self.uptrack = None
            self.pacer.close()
            if self.forwarder is not None:
                self.forwarder.switch_source()

    def _configure(self) -> bool:
        params = self.seam.params
        if params is None:
            return False
        up = self.uptrack
        if not same_codec(params.mime_type, params.parameters, up.mime_type, up.codec_parameters):
            if params.select(up.mime_type, lambda fmtp: same_codec(up.mime_type, fmtp, up.mime_type,
                                                                   up.codec_parameters)):
                pass
            elif params.select(up.mime_type):
                # A leg negotiated before the publisher came, without its H.264 profile: most
                # decoders take any profile, so send rather than show nothing.
                logger.warning("leg of %s has no H.264 profile matching %s of track %s; sending it as %s",
                               self.subscriber_id, up.codec_parameters.get("profile-level-id"), up.track_id,
                               params.parameters.get("profile-level-id"))
            else:
                logger.warning("leg of %s negotiated %s but track %s is %s: not forwarding",
                               self.subscriber_id, params.mime_type, up.track_id, up.mime_type)
                return False
        if self.forwarder is None:
            self.forwarder = Forwarder(params.clock_rate, video=self.kind == "video")
            self._rtx_seq = self.forwarder.last_out_seq ^ 0x5A5A
            self._ext_ids = ExtensionIds.from_uris(params.header_extensions)
            self._mid = params.mid.encode()
            self._key = hash((self._ext_ids, self._mid))  # legs with equal extensions share bytes
        self._codec_ok = True
        return True

    def forward(self, packet: CachedPacket, ntp: int, send_time: bytes, tails: dict) -> None:
        """The hot path: runs once per packet and leg, synchronously."""
        if self.paused:
            if self._shed:
                self._load.shed_video_packets += 1
            return
        if not self._codec_ok and not self._configure():
            return
        munged = self.forwarder.munge(packet.seq, packet.timestamp, packet.keyframe, packet.arrival)
        if munged is None:
            if not self.forwarder.started:
                self.source.request_keyframe()
            return
        seq, ts = munged
        tail = tails.get(self._key)
        if tail is None:
            ext = build_extensions(self._ext_ids, self._mid, send_time, packet.audio_level)
            tail = tails[self._key] = (bool(ext), ext + packet.payload)
        seam = self.seam
        data = build_header(tail[0], packet.marker, seam.params.payload_type, seq, ts, seam.ssrc) + tail[1]
        if len(data) > MAX_RTP_PACKET:
            self._drop_oversize(len(data))
            return
        pacer = self.pacer
        if pacer.backlog or (pacer.pacing_media and not pacer.admit(len(data), packet.arrival)):
            pacer.enqueue(data)  # a burst beyond the bucket: paced out by the pacer's timer
        elif not seam.send_rtp_now(data):
            return
        self.packets_sent += 1
        self._sr_packets += 1
        self._sr_octets += len(packet.payload)
        # The stock sender's SR state is fed once per frame (or every 16 packets), not per packet.
        if packet.marker or self._sr_packets >= 16:
            seam.record_sent(ntp, ts, self._sr_packets, self._sr_octets)
            self._sr_packets = self._sr_octets = 0

    def replay(self, packet: CachedPacket, speedup: float) -> None:
        """Send a packet of the track's GOP cache (this leg joined late): the leg starts on the cached
        keyframe, with timestamps compressed by `speedup`. Its sender reports pair those timestamps
        with the time they are sent, not their old capture time, so the subscriber plays them now."""
        if self.paused or (not self._codec_ok and not self._configure()):
            return
        munged = self.forwarder.munge_replay(packet.seq, packet.timestamp, packet.keyframe, time.time(), speedup)
        if munged is None:
            return
        seq, ts = munged
        seam = self.seam
        ext = build_extensions(self._ext_ids, self._mid, abs_send_time(), packet.audio_level)
        data = build_header(bool(ext), packet.marker, seam.params.payload_type, seq, ts, seam.ssrc) + ext \
            + packet.payload
        if len(data) > MAX_RTP_PACKET:
            self._drop_oversize(len(data))
        elif seam.send_rtp_now(data):
            self.packets_sent += 1
            self.replayed += 1
            self._sr_packets += 1
            self._sr_octets += len(packet.payload)
            if packet.marker or self._sr_packets >= 16:
                seam.record_sent(unix_to_ntp(time.time()), ts, self._sr_packets, self._sr_octets)
                self._sr_packets = self._sr_octets = 0

    def end_replay(self) -> None:
        if self.forwarder is not None:
            self.forwarder.end_replay()

    def can_pad(self) -> bool:
        """The leg can carry probe padding: RTX negotiated, and media flowing on it."""
        params = self.seam.params
        return (self._codec_ok and params is not None and params.rtx_payload_type is not None
                and self.forwarder is not None and self.forwarder.started)

    @property
    def padding_bytes(self) -> int:
        """The size of one padding packet on this leg (before SRTP)."""
        seq = 0 if self.twcc is not None else None
        return 12 + len(build_extensions(self._ext_ids, self._mid, b"\x00\x00\x00", None, seq)) + MAX_PADDING

    def send_padding(self, count: int) -> int:
        """Send `count` padding-only packets on the RTX stream (a probe); how many went. None while the
        pacer holds media back: padding must not delay it."""
        if self.paused or self.pacer.backlog or not self.can_pad():
            return 0
        params, seam = self.seam.params, self.seam
        ids, mid = self._ext_ids, self._mid
        send_time = abs_send_time()
        twcc = self.twcc if ids.transport_cc else None
        if twcc is None:
            ext = build_extensions(ids, mid, send_time, None)
        else:
            size = self.padding_bytes
        ts = self.forwarder.last_out_ts
        sent = 0
        for _ in range(count):
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            if twcc is not None:  # numbered as it goes out: its send time is the one the feedback is read against
                ext = build_extensions(ids, mid, send_time, None, twcc.sent(size, True, time.monotonic()))
            if not seam.send_rtp_now(padding_packet(params.rtx_payload_type, self._rtx_seq, ts, seam.rtx_ssrc, ext)):
                break
            sent += 1
        self.padding_sent += sent
        return sent

    def _drop_oversize(self, size: int) -> None:
        """A packet SRTP cannot carry to a WebRTC receiver: dropped, counted, logged once per leg."""
        self.oversize_drops += 1
        if self.oversize_drops == 1:
            logger.warning("track %s to %s: dropping RTP packets over %d bytes (first: %d bytes)",
                           self.track_id, self.subscriber_id, MAX_RTP_PACKET, size)

    async def _on_nack(self, lost: list[int]) -> None:
        up, fwd, params = self.source, self.forwarder, self.seam.params
        if up is None or fwd is None or params is None:
            return
        now = time.time()
        self._observe(now)
        policy = self.retransmit
        for out_seq in lost:
            src = fwd.source_seq(out_seq)
            packet = up.cache.get(src) if src is not None else None
            if packet is None:
                self.nack_misses += 1
                continue
            if policy.decide(out_seq, len(packet.payload) + 32, packet.arrival, now) is not SEND:
                continue
            out_ts = fwd.out_timestamp(src, packet.timestamp)
            ext = build_extensions(self._ext_ids, self._mid, b"\x00\x00\x00", packet.audio_level)
            payload = packet.payload if self.switcher is None else self.switcher.rewrite_payload(packet.payload)
            if params.rtx_payload_type is not None:
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
                header = build_header(bool(ext), packet.marker, params.rtx_payload_type,
                                      self._rtx_seq, out_ts, self.seam.rtx_ssrc)
                data = header + ext + rtx_payload(out_seq, payload)
            else:
                header = build_header(bool(ext), packet.marker, params.payload_type, out_seq, out_ts,
                                      self.seam.ssrc)
                data = header + ext + payload
            if len(data) > MAX_RTP_PACKET:
                continue  # never forwarded either (counted there); protecting it would raise in RTCP handling
            self.pacer.send(data, now, rtx=True)
            self.retransmits += 1
        if policy.suspended:
            self._keyframe_for_bad_viewer(now)

    def _on_remb(self, bitrate: int) -> None:
        if self.on_remb is not None:
            self.on_remb(bitrate)

    def _on_report(self, fraction_lost: float, rtt: float | None) -> None:
        if rtt is not None:
            self.retransmit.rtt = rtt
        self.quality.on_report(fraction_lost, rtt)
        self._observe(time.time())

    def _observe(self, now: float) -> None:
        """Off the hot path (NACKs, receiver reports): measure the media rate, re-judge the viewer."""
        policy = self.retransmit
        policy.observe_media(self.seam.counters()[1], now)
        if policy.media_rate:
            self.pacer.set_media_rate(policy.media_rate)
        change = self.quality.evaluate(self.packets_sent, policy.new_losses, now)
        if change is None:
            return
        policy.suspended = change.quality == BAD
        self.pacer.set_pacing_media(change.quality != GOOD)  # its link drops bursts: smooth them
        log = logger.warning if change.quality == BAD else logger.info
        log("viewer %s on track %s: quality %s -> %s (loss %.0f%%, rtt %s, %d retransmitted, %s refused)%s",
            self.subscriber_id, self.track_id, change.previous, change.quality, change.loss * 100,
            "?" if change.rtt is None else f"{change.rtt * 1000:.0f} ms", policy.sent,
            sum(policy.refused.values()),
            "; retransmission stopped, keyframes instead" if policy.suspended else "")
        if self.on_quality is not None:
            try:
                self.on_quality(self, change)
            except Exception:  # a listener never breaks the leg's RTCP handling
                logger.exception("quality listener failed for %s", self.subscriber_id)

    def _keyframe_for_bad_viewer(self, now: float) -> None:
        if self.source is not None and self.quality.keyframe_due(now):
            self.keyframes_for_viewer += 1
            self.source.request_keyframe()

    async def _nack_unless_overloaded(self, lost: list[int]) -> None:
        # Retransmits are the first work shed when this process's loop is behind.
        if self._load.shedding_retransmits:
            self._load.count_shed_retransmits(len(lost))
            return
        await self._on_nack(lost)

    def pause(self) -> None:
        """Overload shedding: stop sending this (video) leg until `resume`."""
        self.paused = self._shed = True

    def resume(self) -> None:
        """Start again on a keyframe, continuing the leg's sequence as after a source switch."""
        if not self._shed:
            return
        self._shed = False
        if not self.unselected:
            self._restart()

    def set_selected(self, selected: bool) -> bool:
        """Last-N: a leg not selected sends nothing; selected again, it restarts on a keyframe as after a
        pause. True if that changed."""
        if selected != self.unselected:
            return False
        self.unselected = not selected
        if not selected:
            self.paused = True
        elif not self._shed:
            self._restart()
        return True

    def _restart(self) -> None:
        self.paused = False
        if self.forwarder is not None and self.forwarder.started:
            self.forwarder.switch_source()
            self.forwarder.needs_keyframe = self.kind == "video"
        if self.source is not None:
            self.source.request_keyframe()

    def _on_keyframe_request(self) -> None:
        self.keyframe_requests += 1
        if self.retransmit.suspended:
            self._keyframe_for_bad_viewer(time.time())  # bounded: one viewer must not flood the publisher
        elif self.source is not None:
            self.source.request_keyframe()

    def stats(self) -> dict:
        return {
            "track_id": self.track_id,
            "subscriber": self.subscriber_id,
            "packets_sent": self.packets_sent,
            "retransmits": self.retransmits,
            "nack_misses": self.nack_misses,
            "keyframe_requests": self.keyframe_requests,
            "quality": self.quality.level,
            "loss": self.quality.loss,
            "rtt": self.retransmit.rtt,
            "retransmits_refused": dict(self.retransmit.refused),
            "keyframes_for_viewer": self.keyframes_for_viewer,
            "paced": self.pacer.paced,
            "oversize_drops": self.oversize_drops,
            "replayed": self.replayed,
            "selected": not self.unselected,
            "padding_sent": self.padding_sent,
            **({"simulcast": self.switcher.describe()} if self.switcher is not None else {}),
        }
