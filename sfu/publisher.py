"""A participant's publishing peer connection: its tracks terminate here and become UpTracks."""

from __future__ import annotations

import logging
import uuid
from typing import Callable

from aiortc import RTCPeerConnection

from sfu.aiortc_seam import SimulcastDemux, send_pli, tap_receiver
from sfu.congestion import TransportCcResponder, with_start_bitrate
from sfu.jsep import rejected_mids
from sfu.peer import PeerFactory, SdpError, negotiated_codecs
from sfu.simulcast import offered_layers, with_simulcast
from sfu.uptrack import PublisherClock, UpTrack

logger = logging.getLogger(__name__)

SOURCES = ("camera", "microphone", "screen", "screen_audio")
# Codecs whose layers Stoa switches between (VP8 with picture-id continuity; H.264 by keyframes alone).
SIMULCAST_CODECS = ("video/vp8", "video/h264")


class Publisher:
    def __init__(self, participant_id: str, peers: PeerFactory, *,
                 on_published: Callable[[UpTrack], None],
                 on_unpublished: Callable[[UpTrack], None],
                 on_failed: Callable[[], None] | None = None):
        self.participant_id = participant_id
        self.peers = peers
        self.pc: RTCPeerConnection = peers.create()
        self.tracks: dict[str, UpTrack] = {}  # by mid
        self.clock = PublisherClock()
        self.transport_cc: list[TransportCcResponder] = []  # one per transport (one with BUNDLE)
        self._on_published = on_published
        self._on_unpublished = on_unpublished
        self._on_failed = on_failed
        self.closed = False

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.pc.connectionState == "failed" and self._on_failed is not None:
                self._on_failed()

    async def negotiate(self, offer_sdp: str, sources: dict[str, str] | None = None) -> str:
        """Answer the publisher's offer; new send sections become tracks, stopped ones are removed."""
        if self.closed:
            raise SdpError("the publisher is closed")
        answer = with_start_bitrate(await self.peers.answer(self.pc, offer_sdp))
        offered = negotiated_codecs(self.pc.remoteDescription.sdp)
        codecs = negotiated_codecs(answer)
        simulcast = {mid: rids for mid, rids in offered_layers(offer_sdp).items()
                     if mid in codecs and codecs[mid].mime_type.lower() in SIMULCAST_CODECS}
        answer = with_simulcast(answer, simulcast)
        sources = sources or {}
        self._answer_transport_cc()
        rejected = rejected_mids(self.pc.remoteDescription.sdp)
        sending = {mid for mid, remote in offered.items()
                   if remote.direction in ("sendonly", "sendrecv") and mid not in rejected}
        for mid in [m for m in self.tracks if m not in sending]:  # stopped, rejected or recycled m-lines
            self._unpublish(mid)
        for mid in [m for m, t in self.tracks.items() if bool(t.layers) != (m in simulcast)]:
            self._unpublish(mid)  # the same m-line, now with layers or without: a new track
        for transceiver in self.pc.getTransceivers():
            mid = transceiver.mid
            if mid in sending and mid not in self.tracks and mid in codecs:
                self._publish(transceiver, codecs[mid], sources.get(mid), simulcast.get(mid))
        return answer

    def _answer_transport_cc(self) -> None:
        for transceiver in self.pc.getTransceivers():
            dtls = transceiver.receiver.transport
            if dtls is not None and all(r.dtls is not dtls for r in self.transport_cc):
                responder = TransportCcResponder(dtls)
                if responder.attached:
                    self.transport_cc.append(responder)

    def _publish(self, transceiver, codec, source: str | None, rids: list[str] | None = None) -> None:
        kind = codec.kind
        if source not in SOURCES:
            source = "camera" if kind == "video" else "microphone"
        receiver = transceiver.receiver
        track_id = "TR_" + uuid.uuid4().hex[:12]

        def make(track_id: str) -> UpTrack:
            return UpTrack(
                track_id=track_id,
                kind=kind, mime_type=codec.mime_type, clock_rate=codec.clock_rate,
                payload_type=codec.payload_type, publisher_id=self.participant_id, source=source,
                clock=self.clock, send_pli=lambda ssrc: send_pli(receiver, ssrc), codec_parameters=codec.parameters,
                mid=transceiver.mid, receiver=receiver,
            )

        uptrack = make(track_id)
        demux = SimulcastDemux.existing(receiver.transport)
        if rids:
            # The highest layer is the track the room, the recorder and media workers see.
            layers = [make(f"{track_id}.{rid}") for rid in rids[:-1]] + [uptrack]
            uptrack.set_layers(layers, rids)

            async def on_layer(index: int, packet, arrival: float) -> None:
                await layers[index].on_rtp(packet, arrival)

            def on_sender_report(ssrc: int, ntp: int, rtp_timestamp: int) -> None:
                for layer in layers:
                    if layer.media_ssrc == ssrc:
                        layer.on_sender_report(ssrc, ntp, rtp_timestamp)

            SimulcastDemux.of(receiver.transport).bind(transceiver.mid, receiver, rids, codec.payload_type,
                                                       codec.clock_rate, on_layer)
            tap_receiver(receiver, uptrack.on_rtp, on_sender_report)
        else:
            if demux is not None:
                demux.forget(transceiver.mid)
            tap_receiver(receiver, uptrack.on_rtp, uptrack.on_sender_report)
        self.tracks[transceiver.mid] = uptrack
        logger.info("%s published %s %s (%s%s)", self.participant_id, kind, uptrack.track_id, codec.mime_type,
                    f", simulcast {'/'.join(rids)}" if rids else "")
        self._on_published(uptrack)

    def _unpublish(self, mid: str) -> None:
        uptrack = self.tracks.pop(mid)
        if uptrack.layers and uptrack.receiver is not None:
            demux = SimulcastDemux.existing(uptrack.receiver.transport)
            if demux is not None:
                demux.unbind(mid)
        uptrack.close()
        logger.info("%s unpublished %s", self.participant_id, uptrack.track_id)
        self._on_unpublished(uptrack)

    def unpublish_all(self) -> None:
        for mid in list(self.tracks):
            self._unpublish(mid)

    def unpublish(self, track_id: str) -> bool:
        for mid, uptrack in list(self.tracks.items()):
            if uptrack.track_id == track_id:
                self._unpublish(mid)
                return True
        return False

    def track(self, track_id: str) -> UpTrack | None:
        return next((t for t in self.tracks.values() if t.track_id == track_id), None)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.unpublish_all()
        for responder in self.transport_cc:
            responder.close()
        await self.peers.close(self.pc)
