"""A participant's subscribing peer connection. The server always makes the offer on it, one at a
time, so renegotiation never glares (the publisher connection is offered by the client)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from aiortc import RTCPeerConnection

from sfu.allocator import LayerAllocator
from sfu.downtrack import DownTrack, OnQuality
from sfu.peer import IdleTrack, PeerFactory, SdpError, check_restartable, codec_preferences, same_codec
from sfu.probe import MONITOR_RATE, PaddingSender
from sfu.twcc import URI_TRANSPORT_CC, SendHistory, parse_feedback
from sfu.uptrack import UpTrack

logger = logging.getLogger(__name__)

SendOffer = Callable[[str, list[dict]], Awaitable[None]]

REALLOCATE_INTERVAL = 0.5  # s between layer choices on REMB, unless the estimate drops


class Subscriber:
    def __init__(self, participant_id: str, peers: PeerFactory, send_offer: SendOffer, *,
                 data_channel_label: str | None = "stoa", on_quality: OnQuality | None = None):
        self.participant_id = participant_id
        self._on_quality = on_quality  # told of every leg's change: the viewer's connection quality changed
        self.allocator = LayerAllocator()  # simulcast layer choice for this viewer's legs
        # Transport-cc toward this viewer (docs/simulcast.md): the packets' transport-wide numbers, and what
        # its feedback said. One history for all legs: they share one transport (BUNDLE).
        self.twcc: SendHistory | None = SendHistory() if getattr(peers, "downlink_transport_cc", False) else None
        self.twcc_stats = {"feedback": 0, "bad_feedback": 0, "results": 0, "received": 0, "probe_received": 0}
        self._allocated_at = 0.0
        self._padding: PaddingSender | None = None  # the running probe's padding
        self._monitor: PaddingSender | None = None  # transport-cc: the trickle of padding between probes
        self._probe_padding = 0.0
        self.peers = peers
        self.pc: RTCPeerConnection = peers.create()
        self.legs: list[tuple[object, DownTrack]] = []  # (transceiver, downtrack)
        self._send_offer = send_offer
        self._lock = asyncio.Lock()
        self._awaiting_answer = False
        self._dirty = False
        self._ice_restart = False  # the next offer restarts ICE (the client asked: restart_ice)
        self.closed = False
        self._offers_sent = 0
        self.data_channel = None
        if data_channel_label:
            self.data_channel = self.pc.createDataChannel(data_channel_label, ordered=True)

    # -- tracks -----------------------------------------------------------------------------

    def downtrack(self, track_id: str) -> DownTrack | None:
        return next((d for _, d in self.legs if d.track_id == track_id), None)

    def add_track(self, uptrack: UpTrack) -> DownTrack:
        existing = self.downtrack(uptrack.track_id)
        if existing is not None:
            return existing
        # Reuse an idle section of the same kind and codec before growing the SDP.
        for transceiver, downtrack in self.legs:
            params = downtrack.seam.params
            if (downtrack.uptrack is None and downtrack.kind == uptrack.kind and params is not None
                    and same_codec(params.mime_type, params.parameters, uptrack.mime_type,
                                   uptrack.codec_parameters)):
                transceiver.direction = "sendonly"
                downtrack.attach(uptrack)
                return downtrack
        transceiver = self.pc.addTransceiver(IdleTrack(uptrack.kind), direction="sendonly")
        transceiver.setCodecPreferences(codec_preferences(uptrack.kind, uptrack.mime_type,
                                                          uptrack.codec_parameters))
        downtrack = self._new_leg(transceiver, uptrack.kind)
        downtrack.attach(uptrack)
        self.legs.append((transceiver, downtrack))
        if downtrack.switcher is not None and self.allocator.feedback_mode:
            self.allocate()  # start on the layer the start estimate fits, not the top one
        return downtrack

    def _new_leg(self, transceiver, kind: str) -> DownTrack:
        downtrack = DownTrack(transceiver.sender, subscriber_id=self.participant_id, kind=kind, load=self.peers.load)
        downtrack.on_quality = self._quality_changed
        if kind == "video":
            downtrack.on_remb = self._on_remb
        if self.twcc is not None:
            downtrack.twcc = self.twcc
            downtrack.seam.on_transport_feedback = self._on_transport_feedback
        return downtrack

    def _on_transport_feedback(self, data: bytes) -> None:
        """A transport-cc feedback packet from the viewer (raw RTCP, from the seam): to the allocator."""
        stats = self.twcc_stats
        try:
            feedback = parse_feedback(data)
        except ValueError as exc:
            stats["bad_feedback"] += 1
            if stats["bad_feedback"] == 1:
                logger.warning("%s: transport-cc feedback ignored: %s", self.participant_id, exc)
            return
        now = time.monotonic()
        results = self.twcc.results(feedback, now)
        stats["feedback"] += 1
        stats["results"] += len(results)
        for r in results:
            if r.arrival is not None:
                stats["received"] += 1
                stats["probe_received"] += r.probe
        allocator = self.allocator
        if not getattr(allocator, "transport_cc", False):
            allocator.transport_cc = True  # from now on the allocator may judge by feedback (sfu/allocator.py)
            logger.info("%s: transport-cc feedback from the viewer", self.participant_id)
        if not results:
            return
        probe, congestion = allocator.prober.probe, allocator.congestion_events
        allocator.on_transport_feedback(results, now)
        if probe is not None and allocator.prober.probe is None:  # the feedback decided it: padding off now
            self._probe_ended(probe, (allocator.prober.last_result or "").startswith("held"), now)
            self.allocate(now)
        elif allocator.congestion_events != congestion or now - self._allocated_at >= REALLOCATE_INTERVAL:
            self.allocate(now)

    # -- simulcast layers ---------------------------------------------------------------------

    def _quality_changed(self, downtrack: DownTrack, change) -> None:
        if downtrack.switcher is not None:
            self.allocate()
        if self._on_quality is not None:
            self._on_quality(downtrack, change)

    def _on_remb(self, bitrate: int) -> None:
        now = time.monotonic()
        sent = sum(8 * d.retransmit.media_rate for _, d in self.legs if d.uptrack is not None and not d.paused)
        if self._padding is not None:
            sent += self._probe_padding
        allocator = self.allocator
        # Before on_estimate: a congestion signal ends the running probe in there, and its padding must stop.
        probe = allocator.prober.probe
        congested = allocator.on_estimate(bitrate, sent, now)
        logger.debug("REMB %d sent %d congested %s", bitrate, sent, congested)
        result = None if congested else allocator.prober.on_estimate(bitrate, now)
        if probe is not None and allocator.prober.probe is None:
            self._probe_ended(probe, result == "held", now)
        if congested or result or now - self._allocated_at >= REALLOCATE_INTERVAL:
            self.allocate(now)

    def _probe_ended(self, probe, held: bool, now: float) -> None:
        padding, self._padding = self._padding, None
        if padding is not None:
            padding.stop()
        logger.info("%s: probe %s (%d padding packets, %d bytes)", self.participant_id,
                    self.allocator.prober.last_result, padding.sent if padding else 0, padding.bytes if padding else 0)
        if held and probe.key in [d for _, d in self.legs]:
            self.allocator.probe_held(probe.key, probe.target)

    def _keep_monitor(self, legs: list[DownTrack]) -> None:
        """With transport-cc, a trickle of numbered padding between probes (MONITOR_RATE): the viewer's
        feedback on it shows the queue the media meets, so a link that narrows is seen (sfu/allocator.py)."""
        want = None
        if self.allocator.feedback_mode and self._padding is None and not self.closed:
            want = next((d for d in legs if d.switcher is not None and d.can_pad()), None)
        monitor = self._monitor
        if monitor is not None and (want is None or monitor.leg is not want):
            monitor.stop()
            self._monitor = monitor = None
        if want is not None and monitor is None:
            self._monitor = PaddingSender(want, MONITOR_RATE)

    def _start_probe(self, leg: DownTrack, target: float, sent: float, now: float) -> None:
        probe = self.allocator.prober.start(leg, target, sent, self.allocator.estimate, now)
        if probe is None:
            return
        if self._monitor is not None:  # the probe's padding samples the queue meanwhile
            self._monitor.stop()
            self._monitor = None
        if self._padding is not None:  # never two at once: an orphaned sender would pad until the viewer left
            self._padding.stop()
        self._probe_padding = probe.padding
        self._padding = PaddingSender(leg, probe.padding)
        self._probe_deadline()
        logger.info("%s: probing %.0f kbps for track %s (%.0f kbps of padding)", self.participant_id,
                    target / 1000, leg.track_id, probe.padding / 1000)

    def _probe_deadline(self) -> None:
        """Ends a probe whose REMBs stopped coming (the timer the REMBs otherwise drive)."""
        prober = self.allocator.prober
        probe = prober.probe
        if probe is None or self.closed:
            return
        now = time.monotonic()
        if probe.key.uptrack is None:
            prober.cancel()
        else:
            prober.check(now)
        if prober.probe is None:
            self._probe_ended(probe, False, now)
            self.allocate(now)
        else:
            asyncio.get_event_loop().call_later(0.25, self._probe_deadline)

    def set_speakers(self, participants: list[str]) -> None:
        """Who speaks, the active speaker first: their cameras come before the others' (sfu/allocator.py)."""
        if participants != self.allocator.speakers:
            self.allocator.speakers = list(participants)
            self.allocate()

    def set_video_size(self, track_id: str, width: int, height: int) -> bool:
        """The viewer's page renders `track_id` at width x height device pixels (0 x 0: not shown)."""
        if self.downtrack(track_id) is None:
            return False
        self.allocator.set_size(track_id, width, height)
        self.allocate()
        return True

    def allocate(self, now: float | None = None) -> None:
        """Choose the layer of each of this viewer's simulcast legs (sfu/allocator.py)."""
        now = time.monotonic() if now is None else now
        self._allocated_at = now
        legs = [d for _, d in self.legs if d.uptrack is not None and not d.unselected]  # Last-N paused: no share
        if any(d.switcher is not None for d in legs):
            allocator = self.allocator
            changed = allocator.allocate(legs, now)
            if allocator.probe_request is not None and not self.closed:
                self._start_probe(*allocator.probe_request, now)
            self._keep_monitor(legs)
            for leg, layer in changed.items():
                cap = self.allocator.cap
                logger.info("%s: track %s -> layer %s (layers %s kbps, REMB %s kbps, cap %s)", self.participant_id,
                            leg.track_id, leg.uptrack.rids[layer],
                            [round((u.bitrate() or u.known_bitrate) / 1000) for u in leg.uptrack.layers],
                            "?" if self.allocator.estimate is None
                            else round(self.allocator.estimate / 1000), "none" if cap == float("inf")
                            else f"{round(cap / 1000)} kbps")

    def remove_track(self, track_id: str) -> bool:
        for transceiver, downtrack in self.legs:
            if downtrack.track_id == track_id:
                downtrack.detach()
                transceiver.direction = "inactive"
                return True
        return False

    def track_map(self) -> list[dict]:
        """What each section carries, sent with every offer so the client can label its tracks."""
        out = []
        for transceiver, downtrack in self.legs:
            if downtrack.uptrack is not None and transceiver.mid is not None:
                out.append({"mid": transceiver.mid, **downtrack.uptrack.describe()})
        return out

    # -- negotiation ------------------------------------------------------------------------

    async def negotiate(self) -> None:
        """Send an offer now, or after the answer to the one in flight."""
        if self._offers_sent:
            # aiortc starts senders only if the (bundled) DTLS transport is already up when a
            # renegotiation completes, so a second offer waits for the first one to connect.
            await self._wait_transport_settled(15.0)
        async with self._lock:
            if self.closed:
                return
            if self._awaiting_answer:
                self._dirty = True
                return
            self._dirty = False
            restart, self._ice_restart = self._ice_restart, False
            sdp = await self.peers.offer(self.pc, ice_restart=restart)
            self._awaiting_answer = True
            self._offers_sent += 1
        await self._send_offer(sdp, self.track_map())

    async def restart_ice(self) -> None:
        """Offer new ICE credentials (the client's network changed); the tracks, the data channel and
        DTLS stay. Raises IceRestartRefused when ICE is not up: then a new connection is needed."""
        check_restartable(self.pc)
        self._ice_restart = True
        await self.negotiate()

    async def resend_offer(self) -> None:
        """Send the offer in flight again (its first copy went to a socket that dropped)."""
        async with self._lock:
            if self.closed or not self._awaiting_answer or self.pc.localDescription is None:
                return
            sdp = self.pc.localDescription.sdp
        await self._send_offer(sdp, self.track_map())

    async def _wait_transport_settled(self, timeout: float) -> None:
        if self.pc.sctp is not None:
            dtls = self.pc.sctp.transport
        elif self.legs:
            dtls = self.legs[0][0].sender.transport
        else:
            return
        deadline = asyncio.get_event_loop().time() + timeout
        while dtls.state not in ("connected", "failed", "closed"):
            if asyncio.get_event_loop().time() > deadline:
                logger.warning("%s: subscriber transport did not connect; offering anyway",
                               self.participant_id)
                return
            await asyncio.sleep(0.05)

    async def on_answer(self, sdp: str) -> None:
        async with self._lock:
            if not self._awaiting_answer:
                raise SdpError("no offer is waiting for an answer")
            await self.peers.set_remote(self.pc, sdp, "answer")
            self._awaiting_answer = False
            again = self._dirty
        if self.twcc is not None and not self.allocator.feedback_mode and URI_TRANSPORT_CC in sdp:
            # The viewer takes transport-cc: its legs start low and are probed up (sfu/allocator.py), before
            # any feedback (it only comes for numbered packets: a probe's padding).
            self.allocator.expect_transport_cc()
            self.allocate()
        if again:
            await self.negotiate()

    # -- client-offered mode (WHEP) ---------------------------------------------------------

    async def answer(self, offer_sdp: str, tracks: dict[str, UpTrack]) -> str:
        """Answer a recvonly offer: one send section per offered audio/video section, each
        restricted to the codec of the track it will carry (`tracks` by kind), then bound."""
        from sfu.peer import check_section_takes, negotiated_codecs  # local: only this path parses the offer

        try:
            offered = negotiated_codecs(offer_sdp)
        except Exception as exc:
            raise SdpError(f"the SDP cannot be parsed: {exc}") from None
        if not offered:
            raise SdpError("the offer has no audio or video section")
        for section in offered.values():
            if section.direction not in ("recvonly", "sendrecv"):
                raise SdpError(f"section {section.mid} must be recvonly to receive the broadcast")
            transceiver = self.pc.addTransceiver(IdleTrack(section.kind), direction="sendonly")
            track = tracks.get(section.kind)
            if track is not None:
                check_section_takes(offer_sdp, section.mid, track.mime_type, track.codec_parameters)
                transceiver.setCodecPreferences(codec_preferences(section.kind, track.mime_type,
                                                                  track.codec_parameters))
            downtrack = self._new_leg(transceiver, section.kind)
            self.legs.append((transceiver, downtrack))
        answer = await self.peers.answer(self.pc, offer_sdp)
        self.bind(tracks)
        return answer

    def bind(self, tracks: dict[str, UpTrack]) -> None:
        """Point each section at the track of its kind (a switch continues the same RTP stream)."""
        for _, downtrack in self.legs:
            track = tracks.get(downtrack.kind)
            if track is None:
                downtrack.detach()
            elif downtrack.uptrack is not track:
                downtrack.attach(track)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sender in (self._padding, self._monitor):
            if sender is not None:
                sender.stop()
        self._padding = self._monitor = None
        for _, downtrack in self.legs:
            downtrack.detach()
        await self.peers.close(self.pc)
