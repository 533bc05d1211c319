"""The one place where Stoa touches aiortc and aioice internals.

aiortc has no public API for forwarding encoded RTP, so the SFU hooks in here:
- receive: the publisher's RTCRtpReceiver keeps its RTCP, RTX unwrap and NACK generation, but its
  jitter buffer is replaced by a sink and its decoder thread is stopped, so nothing is ever decoded;
- send: raw RTP goes into the subscriber's RTCDtlsTransport (SRTP + ICE) and the stock sender's
  counters are fed so its sender reports stay coherent; its NACK and PLI handling is redirected;
- data channels: a text message on an idle, reliable channel becomes one SCTP DATA chunk handed to DTLS
  and the nominated ICE pair in one synchronous call (aiortc schedules a task per message);
- ICE: gathering can be limited to configured local addresses (aioice skips loopback otherwise), and an
  ICE session can be restarted in place (new credentials, fresh checks; aioice has no restart of its own);
- simulcast: the rid header extensions are negotiated, and a transport with simulcast sections gets a
  demultiplexer in front of aiortc's RTP routing that maps each layer's SSRC (and its RTX SSRC) to its rid
  from the first packets, NACKs and reports each layer, and drops probing padding (`SimulcastDemux`);
- congestion control: transport-cc is negotiated, every parsed RTP packet of a publisher's transport is
  shown to a callback (its transport-wide sequence number), raw RTCP goes out on the transport, and
  aiortc's own REMB is withheld from a transport that carries transport-cc;
- DTLS: aiortc's DTLS context offers ECDSA cipher suites only, so as the DTLS client it cannot talk
  to a server whose certificate is RSA (GStreamer, hardware encoders); `use_dtls_certificate` gives a
  peer connection a certificate whose context offers the ECDHE-RSA suites too;
- SRTP: pylibsrtp's sessions hold 1500 bytes and keep 144 free for a trailer, so stock aiortc cannot
  protect an RTP packet over 1356 bytes; `allow_large_rtp` gives each session room for MAX_RTP_PACKET.

Everything here is checked by `check_compatibility()` at start-up and covered by
tests/test_sfu_seam.py, so an aiortc upgrade breaks this file, loudly, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from struct import error as struct_error
import types
from dataclasses import dataclass, field
from importlib.metadata import version as _dist_version
from typing import Awaitable, Callable

import aioice.ice
import aioice.stun
import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpHeaderExtensionParameters, RTCRtpReceiver, RTCRtpSender
from aiortc import codecs as _codecs
from aiortc.rtcrtpparameters import RTCRtcpFeedback
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport, RtpRouter, State as _DtlsState
from aiortc.rtcicetransport import RTCIceTransport, candidate_to_aioice
from aiortc import rtcsctptransport as _sctp
from aiortc import rtp as _rtp
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.rtcsctptransport import RTCSctpTransport
from aiortc.utils import uint16_add
from pylibsrtp._binding import ffi as _srtp_ffi
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtpPacket,
    is_rtcp,
    unpack_remb_fci,
    unwrap_rtx,
)

from sfu.twcc import URI_TRANSPORT_CC, split_transport_feedback

logger = logging.getLogger(__name__)

_DTLS_CONNECTED = _DtlsState.CONNECTED
REMB_INTERVAL = 0.25
SUPPORTED_AIORTC = "1.16.0"
SUPPORTED_AIOICE = "0.13.0"


class SeamError(RuntimeError):
    """aiortc no longer looks the way this module expects."""


def check_compatibility() -> None:
    """Fail at start-up, not mid-class, if the installed aiortc differs from the one the seam knows."""
    problems = []
    for dist, wanted in (("aiortc", SUPPORTED_AIORTC), ("aioice", SUPPORTED_AIOICE)):
        have = _dist_version(dist)
        if have != wanted:
            problems.append(f"{dist} {have} is installed but sfu/aiortc_seam.py was written for {wanted}")
    expected = {
        RTCRtpReceiver.__init__: ("_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__decoder_thread",
                                  "_RTCRtpReceiver__remote_streams"),
        RTCDtlsTransport.__init__: ("_state", "_tx_srtp", "_ssl", "_RTCDtlsTransport__tx_bytes",
                                    "_RTCDtlsTransport__tx_packets", "_rtp_router", "_rtp_header_extensions_map"),
        RTCSctpTransport.__init__: (
            "_association_state", "_data_channel_queue", "_outbound_queue", "_sent_queue", "_forward_tsn_chunk",
            "_flight_size", "_cwnd", "_local_tsn", "_outbound_stream_seq", "_local_port", "_remote_port",
            "_remote_verification_tag", "_t3_handle", "_remote_max_message_size",
        ),
        aioice.ice.Connection.__init__: ("_nominated", "_check_list", "_check_list_done", "_check_list_state",
                                         "_nominating", "_remote_candidates", "_remote_candidates_end",
                                         "_early_checks", "_early_checks_done", "_local_username",
                                         "_local_password", "_query_consent_task", "_closing",
                                         "remote_password"),
        RTCPeerConnection.__init__: ("_RTCPeerConnection__transceivers", "_RTCPeerConnection__certificates"),
        RTCCertificate.__init__: ("_key", "_cert"),
        aioice.ice.CandidatePair.__init__: ("protocol",),
        pylibsrtp.Session.__init__: ("_cdata", "_buffer"),
        RTCRtpSender.__init__: (
            "_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp",
            "_RTCRtpSender__packet_count", "_RTCRtpSender__octet_count", "_ssrc", "_rtx_ssrc",
            "_RTCRtpSender__rtt",
        ),
    }
    for func, names in expected.items():
        missing = [n for n in names if n not in func.__code__.co_names]
        if missing:
            problems.append(f"{func.__qualname__} no longer sets {', '.join(missing)}")
    for cls, names in (
        (RTCRtpReceiver, ("_handle_rtp_packet", "_handle_rtcp_packet", "_send_rtcp_pli", "_send_rtcp",
                          "_send_rtcp_nack", "_RTCRtpReceiver__stop_decoder")),
        (RTCRtpSender, ("_handle_rtcp_packet", "send")),
        (RTCDtlsTransport, ("_send_rtp", "_handle_rtp_data", "_setup_srtp")),
        (RtpRouter, ("route_rtp",)),
        (_codecs, ("CODECS", "HEADER_EXTENSIONS")),
        (RTCCertificate, ("_create_ssl_context",)),
        (pylibsrtp, ("SRTP_MAX_TRAILER_LEN", "Error")),
        (_rtp, ("DYNAMIC_PAYLOAD_TYPES",)),
        (RTCSctpTransport, ("_flight_size_increase", "_t3_start", "_send")),
        (_sctp, ("DataChunk", "serialize_packet", "tsn_plus_one", "USERDATA_MAX_LENGTH", "WEBRTC_STRING",
                 "SCTP_DATA_FIRST_FRAG", "SCTP_DATA_LAST_FRAG")),
        (aioice.ice.CandidatePair, ("remote_addr",)),
        (aioice.ice.Connection, ("gather_candidates", "get_component_candidates", "connect",
                                 "add_remote_candidate", "query_consent", "build_request", "data_received",
                                 "close")),
        (aioice.ice, ("random_string",)),
    ):
        missing = [n for n in names if not hasattr(cls, n)]
        if missing:
            problems.append(f"{cls.__name__} lacks {', '.join(missing)}")
    if problems:
        raise SeamError(
            "aiortc internals changed; the SFU cannot forward safely: " + "; ".join(problems)
            + ". Install the pinned versions (pip install -e .) or port sfu/aiortc_seam.py."
        )


def prefer_aes128_gcm() -> None:
    """Offer AES-128-GCM before AES-256-GCM for SRTP: ~2 µs less per protected packet here, and
    what browsers use by default. Idempotent; applies to transports created afterwards."""
    from aiortc import rtcdtlstransport as dtls_module

    profiles = dtls_module.SRTP_PROFILES
    profiles.sort(key=lambda p: 0 if p is dtls_module.SRTP_AEAD_AES_128_GCM else 1)


# H.264 profiles aiortc does not list (it has Constrained Baseline and Baseline, packetization-mode 1).
# Stoa forwards H.264 without decoding, so it can take any profile a publisher offers; each leg is
# then restricted to that same profile and packetization mode (RFC 6184 8.1).
H264_PROFILE_LEVEL_IDS = ("42001f", "42e01f", "4d001f", "640c1f", "64001f", "f4001f")


def register_h264_profiles() -> None:
    """Add the H.264 profiles and packetization modes aiortc lacks to its codec table (which aiortc
    reads directly when it negotiates). Idempotent; the new payload types follow aiortc's."""
    from aiortc.codecs import CODECS
    from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters

    # aiortc answers with the offerer's payload type only if it is in 96-127, else with its own.
    # Chrome numbers its extra codecs (the H.264 profiles among them) 35-63 too, so an answer would
    # reuse one of Chrome's numbers for another codec ("Duplicate payload type"). RFC 3551 leaves
    # 35-63 unassigned and clear of RTCP's 64-95.
    if 35 not in _rtp.DYNAMIC_PAYLOAD_TYPES:
        _rtp.DYNAMIC_PAYLOAD_TYPES = frozenset(range(35, 64)) | frozenset(range(96, 128))

    video = CODECS["video"]
    have = {(c.parameters.get("profile-level-id"), str(c.parameters.get("packetization-mode", "0")))
            for c in video if c.mimeType.lower() == "video/h264"}
    used = {c.payloadType for kind in CODECS.values() for c in kind}
    free = (pt for pt in range(96, 128) if pt not in used)
    for mode in ("1", "0"):
        for profile_level_id in H264_PROFILE_LEVEL_IDS:
            if (profile_level_id, mode) in have:
                continue
            pt, rtx_pt = next(free, None), next(free, None)
            if rtx_pt is None:
                logger.warning("no free payload type for H.264 %s mode %s", profile_level_id, mode)
                return
            video.append(RTCRtpCodecParameters(
                mimeType="video/H264", clockRate=90000, payloadType=pt,
                rtcpFeedback=[RTCRtcpFeedback(type="nack"), RTCRtcpFeedback(type="nack", parameter="pli"),
                              RTCRtcpFeedback(type="goog-remb")],
                parameters={"level-asymmetry-allowed": "1", "packetization-mode": mode,
                            "profile-level-id": profile_level_id},
            ))
            video.append(RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=rtx_pt,
                                               parameters={"apt": pt}))


# --- receive side ---------------------------------------------------------------------------

class _PacketSink:
    """Stands in for the receiver's jitter buffer: keeps the last packet, never yields a frame."""

    __slots__ = ("packet",)

    def __init__(self) -> None:
        self.packet: RtpPacket | None = None

    def add(self, packet: RtpPacket):
        self.packet = packet
        return False, None

    def remove(self, count: int) -> None:  # JitterBuffer API used on some paths
        pass


OnRtp = Callable[[RtpPacket, float], Awaitable[None]]
OnSenderReport = Callable[[int, int, int], None]  # (ssrc, ntp, rtp_timestamp)


def tap_receiver(receiver: RTCRtpReceiver, on_rtp: OnRtp, on_sender_report: OnSenderReport,
                 on_bye: Callable[[], None] | None = None) -> None:
    """Route every RTX-unwrapped RTP packet of `receiver` to `on_rtp`, with no decoding. Tapping a
    tapped receiver again (a new track on a reused m-line) only points it at the new callbacks."""
    tap = getattr(receiver, "_stoa_tap", None)
    if tap is not None:
        tap.update(on_rtp=on_rtp, on_sender_report=on_sender_report, on_bye=on_bye)
        return
    tap = receiver._stoa_tap = {"on_rtp": on_rtp, "on_sender_report": on_sender_report, "on_bye": on_bye}
    sink = _PacketSink()
    receiver._RTCRtpReceiver__jitter_buffer = sink
    stock_rtp = receiver._handle_rtp_packet
    stock_rtcp = receiver._handle_rtcp_packet
    state = {"decoder_stopped": False}

    async def handle_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
        if not state["decoder_stopped"]:
            # The thread was started by receive(); it has nothing to do on a forwarding path.
            receiver._RTCRtpReceiver__stop_decoder()
            state["decoder_stopped"] = True
        await stock_rtp(packet, arrival_time_ms=arrival_time_ms)
        forwarded, sink.packet = sink.packet, None
        if forwarded is not None:
            # aiortc's arrival clock counts from 1900; the SFU works in unix time.
            try:
                await tap["on_rtp"](forwarded, time.time())
            except Exception:
                # Raised into RTCDtlsTransport's receive loop, it would close the publisher's transport.
                state["errors"] = state.get("errors", 0) + 1
                if state["errors"] == 1:
                    logger.exception("forwarding a packet failed; the publisher's transport stays up")

    async def handle_rtcp(packet) -> None:
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            tap["on_sender_report"](packet.ssrc, info.ntp_timestamp, info.rtp_timestamp)
        elif isinstance(packet, RtcpByePacket) and tap["on_bye"] is not None:
            tap["on_bye"]()
        await stock_rtcp(packet)

    stock_send_rtcp = receiver._send_rtcp
    remb = {"at": 0.0, "bitrate": 0}

    async def send_rtcp(packet) -> None:
        # aiortc sends a REMB on every packet while its estimator says "overusing"; at most 4/s
        # is plenty, sooner only when the estimate drops by more than 10%.
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            if getattr(receiver.transport, "_stoa_transport_cc", False):
                # The publisher estimates from our transport-cc feedback; aiortc's estimate (about
                # 1.5x what arrives) would only cap it.
                return
            now = time.monotonic()
            try:
                bitrate = unpack_remb_fci(packet.fci)[0]
            except ValueError:
                bitrate = 0
            if now - remb["at"] < REMB_INTERVAL and bitrate >= remb["bitrate"] * 0.9:
                return
            remb["at"], remb["bitrate"] = now, bitrate
        await stock_send_rtcp(packet)

    receiver._handle_rtp_packet = handle_rtp
    receiver._handle_rtcp_packet = handle_rtcp
    receiver._send_rtcp = send_rtcp


@contextlib.contextmanager
def rtp_payload_limit(size: int):
    """Tests and benches only: aiortc's VP8 and H.264 packetizers fill RTP payloads up to `size`
    bytes instead of 1300, to publish the large packets other encoders send (GStreamer: 1400)."""
    from aiortc.codecs import h264, vpx

    saved = h264.PACKET_MAX, vpx.PACKET_MAX
    h264.PACKET_MAX = vpx.PACKET_MAX = size
    try:
        yield
    finally:
        h264.PACKET_MAX, vpx.PACKET_MAX = saved


def decoder_running(receiver: RTCRtpReceiver) -> bool:
    return receiver._RTCRtpReceiver__decoder_thread is not None


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    await receiver._send_rtcp_pli(media_ssrc)


# --- congestion control toward publishers --------------------------------------------------

TRANSPORT_CC_EXTENSION_ID = 5  # free in aiortc's table (1 mid, 2 audio level, 3 abs-send-time)


def enable_transport_cc() -> None:
    """Make aiortc negotiate transport-cc: the header extension for audio and video, and the
    `a=rtcp-fb:<pt> transport-cc` line on every video codec and Opus. Answers then carry both when the
    offer does (browsers offer them). Idempotent; applies to descriptions made afterwards."""
    for kind in ("audio", "video"):
        table = _codecs.HEADER_EXTENSIONS[kind]
        if not any(e.uri == URI_TRANSPORT_CC for e in table):
            table.append(RTCRtpHeaderExtensionParameters(id=TRANSPORT_CC_EXTENSION_ID, uri=URI_TRANSPORT_CC))
    feedback = RTCRtcpFeedback(type="transport-cc")
    for codec in [*_codecs.CODECS["video"], *_codecs.CODECS["audio"]]:
        if codec.mimeType.lower() in ("video/rtx", "audio/pcmu", "audio/pcma", "audio/g722"):
            continue
        if feedback not in codec.rtcpFeedback:
            codec.rtcpFeedback.append(feedback)


def watch_transport_rtp(dtls: RTCDtlsTransport, on_packet: Callable[[int, int], None]) -> bool:
    """Call `on_packet(transport_seq, ssrc)` for every RTP packet on `dtls` that carries a transport-wide
    sequence number, media, RTX and padding probes alike, as aiortc parses it (before routing, so
    packets no receiver takes count too). The first such packet marks the transport, which withholds
    aiortc's REMB (see tap_receiver). Once per transport; False if it was already watched."""
    if getattr(dtls, "_stoa_transport_cc_watched", False):
        return False
    router = dtls._rtp_router
    stock_route = router.route_rtp

    def seen(packet: RtpPacket) -> None:
        seq = packet.extensions.transport_sequence_number
        if seq is not None:
            if not dtls._stoa_transport_cc:
                dtls._stoa_transport_cc = True
            on_packet(seq, packet.ssrc)

    def route_rtp(packet: RtpPacket):
        seen(packet)
        return stock_route(packet)

    dtls._stoa_transport_seen = seen  # SimulcastDemux shows it the packets that bypass routing
    dtls._stoa_transport_cc = False
    dtls._stoa_transport_cc_watched = True
    router.route_rtp = route_rtp
    return True


def watch_transport_feedback(dtls: RTCDtlsTransport, on_feedback: Callable[[bytes], None]) -> bool:
    """Toward a viewer: hand every transport-cc feedback packet (RTPFB FMT 15) that arrives on `dtls` to
    `on_feedback` as raw bytes, and the rest of its compound RTCP packet to aiortc, which has no class for
    FMT 15 (it reads one as a NACK, and drops the whole compound when the feedback is padded). Once per
    transport; False if it was already watched."""
    if getattr(dtls, "_stoa_feedback_watched", False):
        return False
    stock = dtls._handle_rtcp_data

    async def handle_rtcp_data(data: bytes) -> None:
        if b"\xcd" in data:  # RTPFB somewhere (cheap test first: most RTCP is RR, REMB and SDES)
            found, data = split_transport_feedback(data)
            for packet in found:
                try:
                    on_feedback(packet)
                except Exception:  # raised into the receive loop, it would close the viewer's transport
                    logger.exception("handling a viewer's transport-cc feedback failed")
            if not data:
                return
        await stock(data)

    dtls._handle_rtcp_data = handle_rtcp_data
    dtls._stoa_feedback_watched = True
    return True


def transport_connected(dtls: RTCDtlsTransport) -> bool:
    return dtls._state is _DTLS_CONNECTED


async def send_raw_rtcp(dtls: RTCDtlsTransport, data: bytes) -> bool:
    """SRTCP-protect and send an RTCP packet that aiortc has no class for (transport-cc feedback)."""
    try:
        await dtls._send_rtp(data)
    except ConnectionError:
        return False
    return True


# --- simulcast ------------------------------------------------------------------------------

URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
RID_EXTENSION_IDS = {URI_RID: 10, URI_REPAIRED_RID: 11}  # free in aiortc's table


def enable_simulcast() -> None:
    """Make aiortc negotiate the rid header extensions on video, so answers carry them when a browser
    offers simulcast (without them it refuses the answer's a=simulcast) and RtpPacket.parse reads them.
    Idempotent; applies to descriptions made afterwards."""
    table = _codecs.HEADER_EXTENSIONS["video"]
    for uri, ext_id in RID_EXTENSION_IDS.items():
        if not any(e.uri == uri for e in table):
            table.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri))


OnLayerRtp = Callable[[int, RtpPacket, float], Awaitable[None]]  # (layer index, packet, unix arrival)


@dataclass
class _Binding:
    receiver: RTCRtpReceiver
    rids: list[str]
    payload_type: int
    on_rtp: OnLayerRtp
    clock_rate: int


class _Stream:
    """One SSRC of a simulcast section: a layer's media, or its RTX."""

    __slots__ = ("mid", "index", "rtx", "nack", "stats")

    def __init__(self, mid: str, index: int, rtx: bool, clock_rate: int):
        self.mid, self.index, self.rtx = mid, index, rtx
        self.nack = None if rtx else NackGenerator()
        self.stats = StreamStatistics(clock_rate)


class SimulcastDemux:
    """Receives the simulcast sections of one publisher transport (RFC 8853), in front of aiortc's routing.

    Chromium's simulcast offer has no a=ssrc lines: each layer's SSRC, and its RTX SSRC, is named only by
    the rtp-stream-id / repaired-rtp-stream-id extension (with the mid) in its first packets. Left to
    aiortc, `RtpRouter.route_rtp` learns every unknown SSRC by payload type into one receiver, whose one
    jitter buffer and NACK generator then see three interleaved streams. So the transport's RTP dispatch
    is replaced: a packet of a simulcast section is kept apart by SSRC, NACKed and reported per layer
    (each SSRC gets its own NackGenerator and a StreamStatistics in the receiver, so aiortc's receiver
    reports cover every layer), its RTX unwrapped (only packets we NACKed: Chromium's unsolicited RTX
    padding probes are dropped, as are padding-only packets), and handed to the section's `on_rtp` with
    the layer's index; anything else takes aiortc's path unchanged.

    The SSRC table outlives a binding: a browser that stops and restarts the camera on the same
    transceiver keeps its SSRCs and does not repeat the rid extensions, so a new binding of that mid
    takes the learned streams back. `forget(mid)` drops them, when the mid is offered without simulcast
    (its SSRCs are then aiortc's again)."""

    def __init__(self, dtls: RTCDtlsTransport):
        self.dtls = dtls
        self.bindings: dict[str, _Binding] = {}
        self.streams: dict[int, _Stream] = {}
        self.media_ssrcs: dict[tuple[str, int], int] = {}  # (mid, layer) -> media SSRC, for RTX unwrap
        self.dropped_probes = 0
        self.dropped_unbound = 0
        stock = dtls._handle_rtp_data
        router = dtls._rtp_router
        ext_map = dtls._rtp_header_extensions_map

        async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
            try:
                packet = RtpPacket.parse(data, ext_map)
            except ValueError:
                return
            stream = self.streams.get(packet.ssrc)
            if stream is None:
                stream = self._learn(packet)
                if stream is None:
                    receiver = router.route_rtp(packet)
                    if receiver is not None:
                        await receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)
                    return
            seen = getattr(dtls, "_stoa_transport_seen", None)
            if seen is not None:
                seen(packet)
            await self._handle(stream, packet)

        self._stock = stock
        dtls._handle_rtp_data = handle_rtp_data
        dtls._stoa_simulcast = self

    @classmethod
    def of(cls, dtls: RTCDtlsTransport) -> "SimulcastDemux":
        """The transport's demultiplexer, installed on first use."""
        demux = cls.existing(dtls)
        return demux if demux is not None else cls(dtls)

    @staticmethod
    def existing(dtls: RTCDtlsTransport | None) -> "SimulcastDemux | None":
        """The transport's demultiplexer if one was installed, else None (nothing is installed)."""
        return getattr(dtls, "_stoa_simulcast", None) if dtls is not None else None

    def bind(self, mid: str, receiver: RTCRtpReceiver, rids: list[str], payload_type: int, clock_rate: int,
             on_rtp: OnLayerRtp) -> None:
        """Hand the layers of section `mid` (rids ordered low to high) to `on_rtp`."""
        self.bindings[mid] = _Binding(receiver, list(rids), payload_type, on_rtp, clock_rate)
        for ssrc, stream in self.streams.items():
            if stream.mid == mid:
                self._register(receiver, ssrc, stream)

    def unbind(self, mid: str) -> None:
        """Stop handing section `mid`'s packets on (its track ended); learned SSRCs stay for a rebind."""
        self.bindings.pop(mid, None)

    def forget(self, mid: str) -> None:
        """Drop what was learned about section `mid` (it is no longer simulcast)."""
        self.bindings.pop(mid, None)
        router = self.dtls._rtp_router
        for ssrc in [s for s, stream in self.streams.items() if stream.mid == mid]:
            del self.streams[ssrc]
            router.ssrc_table.pop(ssrc, None)
        for key in [k for k in self.media_ssrcs if k[0] == mid]:
            del self.media_ssrcs[key]

    def _learn(self, packet: RtpPacket) -> _Stream | None:
        ext = packet.extensions
        binding = self.bindings.get(ext.mid) if ext.mid is not None else None
        if binding is None:
            return None
        rtx = ext.repaired_rtp_stream_id is not None
        rid = ext.repaired_rtp_stream_id if rtx else ext.rtp_stream_id
        if rid not in binding.rids:
            return None
        stream = _Stream(ext.mid, binding.rids.index(rid), rtx, binding.clock_rate)
        for ssrc, old in list(self.streams.items()):  # the browser replaced this layer's SSRC
            if old.mid == stream.mid and old.index == stream.index and old.rtx == rtx:
                del self.streams[ssrc]
        self.streams[packet.ssrc] = stream
        if not rtx:
            self.media_ssrcs[(stream.mid, stream.index)] = packet.ssrc
        self._register(binding.receiver, packet.ssrc, stream)
        logger.info("simulcast: mid %s layer %s is SSRC %d%s", stream.mid, rid, packet.ssrc, " (RTX)" if rtx else "")
        return stream

    def _register(self, receiver: RTCRtpReceiver, ssrc: int, stream: _Stream) -> None:
        # Sender reports reach the receiver by SSRC; its receiver reports cover every stream it lists.
        self.dtls._rtp_router.ssrc_table[ssrc] = receiver
        receiver._RTCRtpReceiver__remote_streams[ssrc] = stream.stats

    async def _handle(self, stream: _Stream, packet: RtpPacket) -> None:
        binding = self.bindings.get(stream.mid)
        if binding is None:
            self.dropped_unbound += 1
            return
        stream.stats.add(packet)
        if stream.rtx:
            ssrc = self.media_ssrcs.get((stream.mid, stream.index))
            media = self.streams.get(ssrc) if ssrc is not None else None
            if media is None or len(packet.payload) < 2:
                self.dropped_probes += 1
                return
            packet = unwrap_rtx(packet, payload_type=binding.payload_type, ssrc=ssrc)
            if packet.sequence_number not in media.nack.missing:
                self.dropped_probes += 1  # a copy sent to probe the link, not a repair we asked for
                return
            stream = media
        elif not packet.payload:
            self.dropped_probes += 1  # padding only
            return
        if stream.nack.add(packet):
            try:
                await binding.receiver._send_rtcp_nack(packet.ssrc, sorted(stream.nack.missing))
            except (ConnectionError, ValueError, struct_error):
                pass  # aiortc's NACK packer refuses a list across the 65535 -> 0 wrap; the next one goes
        try:
            await binding.on_rtp(stream.index, packet, time.time())
        except Exception:
            # Raised into RTCDtlsTransport's receive loop, it would close the publisher's transport.
            logger.exception("forwarding a simulcast packet failed; the publisher's transport stays up")


# --- send side ------------------------------------------------------------------------------

@dataclass
class SendParameters:
    """What was negotiated for one sending transceiver."""

    mime_type: str
    clock_rate: int
    payload_type: int
    rtx_payload_type: int | None
    mid: str
    header_extensions: list[tuple[str, int]] = field(default_factory=list)
    # Every codec the leg negotiated, by lower-case MIME type: (clock rate, payload type, RTX type).
    codecs: dict[str, tuple[int, int, int | None]] = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)  # the fmtp of the codec in use
    # Every negotiated codec in order: (MIME type, fmtp, clock rate, payload type, RTX type).
    offered: list[tuple[str, dict, int, int, int | None]] = field(default_factory=list)

    def select(self, mime_type: str, accept: Callable[[dict], bool] | None = None) -> bool:
        """Send with another negotiated codec (a WHEP leg set up before its publisher existed);
        `accept` picks among codecs of one MIME type by fmtp (H.264 profiles)."""
        for mime, parameters, clock_rate, payload_type, rtx in self.offered:
            if mime.lower() == mime_type.lower() and (accept is None or accept(parameters)):
                self.mime_type, self.parameters = mime, parameters
                self.clock_rate, self.payload_type, self.rtx_payload_type = clock_rate, payload_type, rtx
                return True
        return False


# A receiver report block about a leg: (fraction lost 0..1, aiortc's smoothed RTT from LSR/DLSR in s).
OnReceiverReport = Callable[[float, "float | None"], None]


class SenderSeam:
    """Raw RTP injection into a stock RTCRtpSender's transport, with its RTCP redirected."""

    __slots__ = ("sender", "ssrc", "rtx_ssrc", "params", "ready", "_dtls", "_on_nack",
                 "_on_keyframe_request", "_fast", "on_transport_feedback")

    def __init__(self, sender: RTCRtpSender, on_nack: Callable[[list[int]], Awaitable[None]],
                 on_keyframe_request: Callable[[], None], on_report: OnReceiverReport | None = None,
                 on_remb: Callable[[int], None] | None = None):
        self.sender = sender
        self.ssrc: int = sender._ssrc
        self.rtx_ssrc: int = sender._rtx_ssrc
        self.params: SendParameters | None = None
        self.ready = asyncio.Event()
        self._dtls: RTCDtlsTransport | None = None
        self._on_nack = on_nack
        self._on_keyframe_request = on_keyframe_request
        self._fast: tuple | None = None
        # The viewer's transport-cc feedback (raw RTPFB FMT 15), watched on the leg's transport once it is
        # known; set before negotiation completes (sfu/subscriber.py). With BUNDLE one transport serves all legs.
        self.on_transport_feedback: Callable[[bytes], None] | None = None
        stock_send = sender.send
        stock_rtcp = sender._handle_rtcp_packet

        async def send(parameters) -> None:
            rtx = {c.parameters.get("apt"): c.payloadType for c in parameters.codecs
                   if c.mimeType.lower().endswith("/rtx")}
            codecs: dict[str, tuple[int, int, int | None]] = {}
            for c in parameters.codecs:
                if not c.mimeType.lower().endswith("/rtx"):
                    codecs.setdefault(c.mimeType.lower(), (c.clockRate, c.payloadType, rtx.get(c.payloadType)))
            first = parameters.codecs[0]
            self.params = SendParameters(
                mime_type=first.mimeType, clock_rate=first.clockRate, payload_type=first.payloadType,
                rtx_payload_type=rtx.get(first.payloadType), mid=parameters.muxId or "",
                header_extensions=[(e.uri, e.id) for e in parameters.headerExtensions], codecs=codecs,
                parameters=dict(first.parameters),
                offered=[(c.mimeType, dict(c.parameters), c.clockRate, c.payloadType, rtx.get(c.payloadType))
                         for c in parameters.codecs if not c.mimeType.lower().endswith("/rtx")],
            )
            self._dtls = sender.transport
            if self.on_transport_feedback is not None and self._dtls is not None:
                watch_transport_feedback(self._dtls, self.on_transport_feedback)
            await stock_send(parameters)
            self.ready.set()

        async def handle_rtcp(packet) -> None:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                await self._on_nack(list(packet.lost))
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self._on_keyframe_request()
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                # REMB: no encoder to steer on a forwarded leg, but the viewer's downlink estimate
                if on_remb is not None:
                    try:
                        on_remb(unpack_remb_fci(packet.fci)[0])
                    except ValueError:
                        pass
                return
            else:
                await stock_rtcp(packet)  # receiver reports: aiortc updates its RTT estimate
                if on_report is not None and isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
                    for report in packet.reports:
                        if report.ssrc == self.ssrc:
                            on_report(report.fraction_lost / 256, sender._RTCRtpSender__rtt)

        sender.send = send
        sender._handle_rtcp_packet = handle_rtcp

    async def send_rtp(self, data: bytes) -> bool:
        """Send through aiortc's own path (SRTP, ICE); used for the rare packets (retransmits)."""
        dtls = self._dtls
        if dtls is None:
            return False
        try:
            await dtls._send_rtp(data)
        except (ConnectionError, ValueError, pylibsrtp.Error):
            return False  # closed, or too large to protect (ValueError): never the receive loop's end
        return True

    def send_rtp_now(self, data: bytes) -> bool:
        """The per-packet fast path: SRTP-protect and sendto on the nominated ICE pair, without the
        four coroutine layers of aiortc's path. Same effect as `send_rtp`, minus transport stats."""
        fast = self._fast
        if fast is None or fast[0]._state is not _DTLS_CONNECTED or fast[4].get(1) is not fast[5]:
            fast = self._fast = self._resolve()
            if fast is None:
                return False
        fast[1](fast[2](data), fast[3])
        return True

    def _resolve(self) -> tuple | None:
        """(dtls, sendto, protect, remote address, nominated pairs, pair) once DTLS is up and ICE has
        nominated a pair; resolved again when ICE nominates another pair (an ICE restart)."""
        dtls = self._dtls
        route = _dtls_route(dtls)
        if route is None:
            return None
        return dtls, route[0], dtls._tx_srtp.protect, route[1], route[2], route[3]

    def record_sent(self, ntp_time: int, rtp_timestamp: int, packets: int, octets: int) -> None:
        """Feed the stock sender's SR state: counters, and the NTP time that goes with an outgoing
        RTP timestamp. Callers batch it (once per frame), which keeps the SR coherent."""
        s = self.sender
        s._RTCRtpSender__ntp_timestamp = ntp_time
        s._RTCRtpSender__rtp_timestamp = rtp_timestamp
        s._RTCRtpSender__packet_count += packets
        s._RTCRtpSender__octet_count += octets

    def counters(self) -> tuple[int, int]:
        s = self.sender
        return s._RTCRtpSender__packet_count, s._RTCRtpSender__octet_count


def ignore_feedback(sender: RTCRtpSender) -> None:
    """Tests only: an aiortc sender that ignores PLI, FIR and REMB, as OBS does, so its keyframes
    come on the encoder's schedule alone (REMB would rebuild aiortc's encoder: a keyframe)."""
    stock = sender._handle_rtcp_packet

    async def handle_rtcp(packet) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR, RTCP_PSFB_APP):
            return
        await stock(packet)

    sender._handle_rtcp_packet = handle_rtcp


def _dtls_route(dtls: RTCDtlsTransport | None) -> tuple | None:
    """(sendto, remote address, the connection's nominated pairs, the pair) of a connected DTLS
    transport's nominated ICE pair, else None. Callers keep it while `nominated.get(1) is pair`."""
    if dtls is None or dtls._state is not _DTLS_CONNECTED:
        return None
    nominated = dtls.transport._connection._nominated
    pair = nominated.get(1)
    transport = pair.protocol.transport if pair is not None else None
    if transport is None:
        return None
    return transport.sendto, pair.remote_addr, nominated, pair


# --- DTLS certificates and cipher suites -----------------------------------------------------

# aiortc's list (ECDSA only) with the matching ECDHE-RSA suite after each: in TLS 1.2 the server's
# certificate type decides which half can be chosen, so a DTLS client needs both.
DTLS_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)


class _Certificate(RTCCertificate):
    """aiortc's certificate, with a DTLS context that takes RSA peers as well as ECDSA ones, and one
    SHA-256 fingerprint in the SDP as browsers send (aiortc lists SHA-256, -384 and -512; libdatachannel,
    OBS's WebRTC library, then checks SHA-512 and sometimes refuses the handshake: "unknown CA")."""

    def getFingerprints(self):
        return [f for f in super().getFingerprints() if f.algorithm == "sha-256"]

    def _create_ssl_context(self, srtp_profiles):
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(DTLS_CIPHERS)
        return ctx


def use_dtls_certificate(pc: RTCPeerConnection, key=None, certificate=None) -> None:
    """Give `pc` a DTLS certificate whose context offers ECDSA and RSA suites: `key`/`certificate`
    (cryptography objects, RSA or EC), or a fresh ECDSA P-256 one like aiortc's. Call right after
    creating `pc`: its DTLS transports take the certificate when they are created."""
    if key is None or certificate is None:
        stock = RTCCertificate.generateCertificate()
        key, certificate = stock._key, stock._cert
    pc._RTCPeerConnection__certificates = [_Certificate(key, certificate)]


# --- SRTP packet size -----------------------------------------------------------------------

# The largest SRTP packet WebRTC receivers take: libwebrtc drops anything over kMaxRtpPacketLen (2048).
SRTP_MAX_PACKET = 2048
# The largest RTP packet a leg forwards: SRTP_MAX_PACKET less the longest tag of the negotiated
# profiles (AEAD-GCM: 16 bytes; AES_CM_128_HMAC_SHA1_80: 10).
MAX_RTP_PACKET = SRTP_MAX_PACKET - 16


def allow_large_rtp(pc: RTCPeerConnection, max_packet: int = MAX_RTP_PACKET) -> None:
    """Let the DTLS transports of `pc` protect RTP up to `max_packet` bytes and take SRTP datagrams
    as large. A larger datagram from the remote is dropped (and counted), never raised: pylibsrtp's
    ValueError would end the transport's receive loop and close it. Call before setLocalDescription
    (SRTP is keyed when DTLS connects, afterwards). Tests pass a larger `max_packet` to play a
    publisher that sends what no receiver takes."""
    size = max_packet + pylibsrtp.SRTP_MAX_TRAILER_LEN
    for dtls in _dtls_transports(pc):
        if getattr(dtls, "_stoa_large_rtp", False):
            continue
        dtls._stoa_large_rtp = True
        dtls._stoa_oversize = {"dropped": 0, "largest": 0}
        stock_setup = dtls._setup_srtp

        def setup_srtp(dtls=dtls, stock_setup=stock_setup) -> None:
            stock_setup()
            for session in (dtls._rx_srtp, dtls._tx_srtp):
                if session is not None:
                    session._cdata = _srtp_ffi.new("char[]", size)
                    session._buffer = _srtp_ffi.buffer(session._cdata)
            if dtls._rx_srtp is not None:
                _drop_oversize(dtls, dtls._rx_srtp, size)

        dtls._setup_srtp = setup_srtp


def srtp_oversize(pc: RTCPeerConnection) -> dict:
    """Datagrams from the remote that were too large to unprotect: {"dropped": n, "largest": bytes}."""
    total = {"dropped": 0, "largest": 0}
    for dtls in _dtls_transports(pc):
        stats = getattr(dtls, "_stoa_oversize", None)
        if stats:
            total["dropped"] += stats["dropped"]
            total["largest"] = max(total["largest"], stats["largest"])
    return total


def _drop_oversize(dtls: RTCDtlsTransport, session, limit: int) -> None:
    stats = dtls._stoa_oversize
    for name in ("unprotect", "unprotect_rtcp"):
        stock = getattr(session, name)

        def unprotect(data: bytes, stock=stock) -> bytes:
            if len(data) > limit:
                stats["dropped"] += 1
                stats["largest"] = max(stats["largest"], len(data))
                if stats["dropped"] == 1:
                    logger.warning("dropping SRTP datagrams over %d bytes from the remote (first: %d bytes)",
                                   limit, len(data))
                raise pylibsrtp.Error(f"SRTP datagram of {len(data)} bytes is over {limit}")  # aiortc skips it
            return stock(data)

        setattr(session, name, unprotect)


def _dtls_transports(pc: RTCPeerConnection) -> list[RTCDtlsTransport]:
    seen, out = set(), []
    for t in pc.getTransceivers():
        for dtls in (t.sender.transport, t.receiver.transport):
            if dtls is not None and id(dtls) not in seen:
                seen.add(id(dtls))
                out.append(dtls)
    if pc.sctp is not None and id(pc.sctp.transport) not in seen:
        out.append(pc.sctp.transport)
    return out


# --- data channels --------------------------------------------------------------------------

_SCTP_ESTABLISHED = RTCSctpTransport.State.ESTABLISHED
_SINGLE_FRAGMENT = _sctp.SCTP_DATA_FIRST_FRAG | _sctp.SCTP_DATA_LAST_FRAG


class DataChannelSender:
    """Sends text on one data channel. aiortc's `send` schedules a task per message and runs it through
    five coroutine layers; fanning one chat line out to 300 members that way costs more than the
    room's own work. When the association is idle (nothing queued, congestion window open) and the
    message fits one chunk, this does what `RTCSctpTransport._send` + `_transmit` would do for it,
    synchronously: same TSN, stream sequence, sent-queue entry and T3 timer, so SACKs, retransmits
    and congestion control stay aiortc's. Anything else goes through `channel.send`, which keeps order
    because a queued message makes every later one take the stock path too."""

    __slots__ = ("channel", "_eligible", "_route", "fast_sends")

    def __init__(self, channel: RTCDataChannel):
        self.channel = channel
        # Only reliable, ordered channels: partial reliability needs aiortc's expiry bookkeeping.
        self._eligible = channel.ordered and channel.maxRetransmits is None and channel.maxPacketLifeTime is None
        self._route: tuple | None = None
        self.fast_sends = 0

    def send(self, text: str, utf8: bytes | None = None) -> None:
        """Like RTCDataChannel.send(text): raises InvalidStateError unless the channel is open. `utf8`:
        `text` already encoded (a message fanned out to many channels is encoded once)."""
        if not self._send_now(text, utf8):
            self.channel.send(text)

    def _send_now(self, text: str, utf8: bytes | None) -> bool:
        channel = self.channel
        sctp = channel.transport
        stream_id = channel.id
        if (not self._eligible or stream_id is None or channel.readyState != "open"
                or sctp._association_state is not _SCTP_ESTABLISHED
                or sctp._data_channel_queue or sctp._outbound_queue or sctp._forward_tsn_chunk is not None
                or sctp._flight_size >= sctp._cwnd):
            return False
        user_data = text.encode("utf8") if utf8 is None else utf8
        size = len(user_data)
        if size == 0 or size > _sctp.USERDATA_MAX_LENGTH or (
                sctp._remote_max_message_size and size > sctp._remote_max_message_size):
            return False
        dtls = sctp.transport
        route = self._route
        if (route is None or route[0] is not dtls or dtls._state is not _DTLS_CONNECTED
                or route[3].get(1) is not route[4]):
            found = _dtls_route(dtls)
            if found is None:
                return False
            route = self._route = (dtls, *found)

        chunk = _sctp.DataChunk()
        chunk.flags = _SINGLE_FRAGMENT
        chunk.tsn = sctp._local_tsn
        chunk.stream_id = stream_id
        chunk.stream_seq = sctp._outbound_stream_seq.get(stream_id, 0)
        chunk.protocol = _sctp.WEBRTC_STRING
        chunk.user_data = user_data
        chunk._abandoned = False
        chunk._acked = False
        chunk._book_size = size
        chunk._expiry = None
        chunk._in_flight = False
        chunk._max_retransmits = None
        chunk._misses = 0
        chunk._retransmit = False
        chunk._sent_count = 1
        chunk._sent_time = time.time()
        sctp._local_tsn = _sctp.tsn_plus_one(chunk.tsn)
        sctp._outbound_stream_seq[stream_id] = uint16_add(chunk.stream_seq, 1)
        sctp._sent_queue.append(chunk)
        sctp._flight_size_increase(chunk)

        if not sctp._t3_handle:  # first: should the write below fail, T3 still retransmits the chunk
            sctp._t3_start()
        ssl = dtls._ssl
        ssl.send(_sctp.serialize_packet(sctp._local_port, sctp._remote_port, sctp._remote_verification_tag, chunk))
        record = ssl.bio_read(1500)
        route[1](record, route[2])
        dtls._RTCDtlsTransport__tx_bytes += len(record)
        dtls._RTCDtlsTransport__tx_packets += 1
        self.fast_sends += 1
        return True


# --- ICE ------------------------------------------------------------------------------------

def _ice_connections(pc: RTCPeerConnection) -> list[aioice.ice.Connection]:
    return [ice._connection for ice in _ice_transports(pc)]


def _ice_transports(pc: RTCPeerConnection) -> list[RTCIceTransport]:
    """One RTCIceTransport per aioice Connection of `pc` (one when bundled)."""
    transports = [t.sender.transport.transport for t in pc.getTransceivers() if t.sender.transport is not None]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport.transport)
    seen, out = set(), []
    for ice in transports:
        if id(ice._connection) not in seen:
            seen.add(id(ice._connection))
            out.append(ice)
    return out


def restrict_ice_gathering(pc: RTCPeerConnection, addresses: list[str]) -> None:
    """Gather host candidates only on `addresses` (loopback allowed). Call before setLocalDescription."""
    if not addresses:
        return
    wanted = list(addresses)
    for conn in _ice_connections(pc):
        if getattr(conn, "_stoa_restricted", False):
            continue

        async def gather_candidates(self) -> None:
            if not self._local_candidates_start:
                self._local_candidates_start = True
                results = await asyncio.gather(*(
                    self.get_component_candidates(component=c, addresses=wanted)
                    for c in self._components
                ))
                for candidates in results:
                    self._local_candidates += candidates
                self._local_candidates_end = True

        conn.gather_candidates = types.MethodType(gather_candidates, conn)
        conn._stoa_restricted = True


def ice_credentials(pc: RTCPeerConnection) -> dict:
    """The current ICE session of `pc` (its first connection: Stoa bundles everything on one):
    local and remote ufrag/pwd, and the nominated pair (an object to compare, or None)."""
    conns = _ice_connections(pc)
    if not conns:
        return {}
    conn = conns[0]
    return {"local_ufrag": conn.local_username, "local_pwd": conn.local_password,
            "remote_ufrag": conn.remote_username, "remote_pwd": conn.remote_password,
            "pair": conn._nominated.get(1)}


ICE_RESTART_TIMEOUT = 30.0


def begin_ice_restart(pc: RTCPeerConnection) -> tuple[str, str]:
    """Start an ICE restart (RFC 8445 9): new local ufrag/pwd, a fresh check list, no consent checks
    until the other side's new credentials arrive (`finish_ice_restart`). The nominated pair keeps
    carrying media, and DTLS/SRTP go on untouched, until checks nominate a pair of the new session.
    aioice has no restart of its own; its Connection keeps its sockets and local candidates."""
    transports = _ice_transports(pc)
    if not transports:
        raise SeamError("this peer connection has no ICE transport to restart")
    ufrag, pwd = aioice.ice.random_string(4), aioice.ice.random_string(22)
    for ice in transports:
        # The new session takes trickled candidates again (aiortc drops them after an end-of-candidates).
        ice.iceGatherer._remote_candidates_end = False
        conn = ice._connection
        running = getattr(conn, "_stoa_restart", None)
        if running is not None:  # a restart of a restart: the newer one wins
            running.cancel()
            conn._stoa_restart = None
        consent = conn._query_consent_task
        if consent is not None:
            consent.cancel()
            conn._query_consent_task = None
        for pair in conn._check_list:
            if pair.task is not None:
                pair.task.cancel()
        conn._check_list = []
        conn._check_list_done = False
        conn._check_list_state = asyncio.Queue()
        conn._nominating = set()
        conn._remote_candidates = []
        conn._remote_candidates_end = False
        # Checks arriving before the new remote password is known wait for connect(), as at the start.
        conn._early_checks.clear()
        conn._early_checks_done = False
        conn.remote_username = conn.remote_password = None
        conn._local_username, conn._local_password = ufrag, pwd
    return ufrag, pwd


async def finish_ice_restart(pc: RTCPeerConnection, remote_ufrag: str, remote_pwd: str,
                             candidates: list, end_of_candidates: bool) -> None:
    """Give a restarted ICE session the other side's new credentials and candidates (aiortc
    RTCIceCandidate) and run its connectivity checks in the background. If they do not complete
    within ICE_RESTART_TIMEOUT, the connection closes (consent lost, RFC 7675)."""
    for ice in _ice_transports(pc):
        conn = ice._connection
        conn.remote_username, conn.remote_password = remote_ufrag, remote_pwd
        if not conn._remote_candidates_end:  # else aiortc gave it the description's candidates already
            for candidate in candidates:
                await conn.add_remote_candidate(candidate_to_aioice(candidate))
            if end_of_candidates:
                await conn.add_remote_candidate(None)
            ice.iceGatherer._remote_candidates_end = end_of_candidates  # later trickle goes through aiortc
        conn._stoa_restart = asyncio.ensure_future(_run_restart(conn))


async def _run_restart(conn: aioice.ice.Connection) -> None:
    try:
        await asyncio.wait_for(conn.connect(), ICE_RESTART_TIMEOUT)
    except asyncio.CancelledError:
        raise
    except (ConnectionError, asyncio.TimeoutError) as exc:
        if not conn._closing:  # else the peer connection was closed meanwhile
            logger.warning("ICE restart of %s failed (%s); closing the connection", conn, exc or "timeout")
            await conn.close()
    finally:
        if getattr(conn, "_stoa_restart", None) is asyncio.current_task():
            conn._stoa_restart = None


def _drop_incoming(ice: RTCIceTransport, flag: str, drop: Callable[[bytes], bool], stats: dict) -> None:
    """Wrap an ICE transport's receive so datagrams for which `drop` is true vanish (once per flag)."""
    if getattr(ice, flag, False):
        return
    stock_recv = ice._recv

    async def recv() -> bytes:
        while True:
            data = await stock_recv()
            if drop(data):
                stats["dropped"] += 1
                continue
            stats["passed"] += 1
            return data

    ice._recv = recv
    setattr(ice, flag, True)


def simulate_receive_loss(pc: RTCPeerConnection, rate: float, *, seed: int = 1,
                          spare_payload_types: frozenset[int] = frozenset()) -> dict:
    """Drop a fraction of incoming SRTP media datagrams on `pc` (a network impairment for tests and
    benches). Payload types in `spare_payload_types` (RTX) pass, so repairs can arrive."""
    rng = random.Random(seed)
    stats = {"dropped": 0, "passed": 0}

    def drop(data: bytes) -> bool:
        return (len(data) > 12 and 127 < data[0] < 192 and not is_rtcp(data)
                and (data[1] & 0x7F) not in spare_payload_types and rng.random() < rate)

    for t in pc.getTransceivers():
        dtls = t.receiver.transport
        if dtls is not None:
            _drop_incoming(dtls.transport, "_stoa_lossy", drop, stats)
    return stats


def simulate_data_loss(pc: RTCPeerConnection, rate: float, *, seed: int = 1) -> dict:
    """Drop a fraction of incoming DTLS application records (SCTP: data channels) on `pc`, so tests can
    watch SCTP retransmit. Handshake records pass."""
    rng = random.Random(seed)
    stats = {"dropped": 0, "passed": 0}
    # 23: TLS/DTLS application_data
    _drop_incoming(pc.sctp.transport.transport, "_stoa_data_lossy",
                   lambda data: bool(data) and data[0] == 23 and rng.random() < rate, stats)
    return stats


# --- ICE consent under load -----------------------------------------------------------------

CONSENT_INTERVAL = 5.0       # RFC 7675: a check every 4-6 s
CONSENT_EXPIRY = 30.0        # RFC 7675: consent expires 30 s after the last response
CONSENT_RETRANSMISSIONS = 3  # each check waits 7.5 s in all (0.5 + 1 + 2 + 4)


def harden_consent(pc: RTCPeerConnection, *, interval: float = CONSENT_INTERVAL,
                   expiry: float = CONSENT_EXPIRY) -> None:
    """Make consent freshness (RFC 7675) survive a loop that falls behind. Call before ICE connects.

    aioice sends each consent check once with a 0.5 s timeout and closes the connection after six failed
    checks in a row. Under uvloop, timers run before I/O is polled in each loop iteration, so whenever
    the loop is more than 0.5 s behind, a check "times out" although its response is already waiting in
    the socket: at 250 viewers the server closed its own publisher connection that way, ~30 s into the
    overload. Here each check is retransmitted and runs on its own (a late answer still counts), and
    consent expires only after `expiry` seconds without any answer, not counting time the loop itself
    was stalled (that silence is ours, not the peer's)."""
    for conn in _ice_connections(pc):
        if getattr(conn, "_stoa_consent", False):
            continue
        conn.query_consent = types.MethodType(_robust_query_consent(interval, expiry), conn)
        conn._stoa_consent = True


def _robust_query_consent(interval: float, expiry: float):
    async def query_consent(self) -> None:
        loop = asyncio.get_running_loop()
        state = {"answered": loop.time(), "stalled": 0.0}
        checks: set[asyncio.Task] = set()
        key = self.remote_password.encode("utf8")

        async def check(pair) -> None:
            try:
                await pair.protocol.request(self.build_request(pair, nominate=False), pair.remote_addr,
                                            integrity_key=key, retransmissions=CONSENT_RETRANSMISSIONS)
            except (aioice.stun.TransactionError, ConnectionError, OSError):
                return
            state["answered"], state["stalled"] = loop.time(), 0.0
            self._stoa_consent_answers = getattr(self, "_stoa_consent_answers", 0) + 1

        try:
            while True:
                wait = interval * (0.8 + 0.4 * random.random())
                t = loop.time()
                await asyncio.sleep(wait)
                state["stalled"] += max(0.0, loop.time() - t - wait)
                for pair in list(self._nominated.values()):
                    task = asyncio.ensure_future(check(pair))
                    checks.add(task)
                    task.add_done_callback(checks.discard)
                silent = loop.time() - state["answered"] - state["stalled"]
                if silent > expiry:
                    logger.warning("ICE consent expired: no answer to consent checks for %.0f s", silent)
                    self._query_consent_task = None
                    for task in checks:
                        task.cancel()
                    return await self.close()
        finally:
            for task in list(checks):
                task.cancel()

    return query_consent


def consent_answers(pc: RTCPeerConnection) -> int:
    """Consent checks of `pc` (hardened) that the peer answered so far."""
    return sum(getattr(conn, "_stoa_consent_answers", 0) for conn in _ice_connections(pc))


# --- cheap receive for load testing ---------------------------------------------------------

def _is_rtp(data: bytes) -> bool:
    return len(data) >= 12 and 127 < data[0] < 192 and not 191 < data[1] < 224


class RtpDrain:
    """Reads the ICE sockets of many load-test viewers from one timer, every `interval` seconds, instead
    of waking the loop for every datagram: each socket's reader is removed from the loop
    (`pause_reading`), the sockets sit in one epoll set, and every tick drains the ready ones with
    `recvfrom`. RTP goes to that socket's `on_rtp`; STUN and DTLS to aioice as usual, up to `interval`
    late; incoming RTCP is dropped (`drop_rtcp`). `tap_incoming_rtp` hands a socket over at its first RTP datagram, so ICE, DTLS and
    the first packet's arrival time are as without it. Needs the stock asyncio loop: uvloop's UDP
    transport cannot pause its reading (`available` says so); `tap_incoming_rtp` then taps per datagram."""

    RCVBUF = 1 << 20  # a loop that lags 200 ms must not overflow a viewer's socket

    def __init__(self, interval: float = 0.01, drop_rtcp: bool = True) -> None:
        import select

        self.interval = interval
        # The server's SRs and SDES mean nothing to a viewer that counts headers, and their SRTCP
        # unprotect, parse and stats were a fifth of such a viewer's CPU.
        self.drop_rtcp = drop_rtcp
        self.rtcp_dropped = 0
        self._epoll = select.epoll()
        self._socks: dict[int, tuple] = {}   # fd: (socket, transport, on_other, on_rtp)
        self._timer: asyncio.TimerHandle | None = None
        self._ticks = 0

    @staticmethod
    def available(protocol) -> bool:
        return hasattr(protocol.transport, "pause_reading") and hasattr(protocol.transport, "_sock")

    def add(self, protocol, on_rtp: Callable[[bytes], None], on_other: Callable[[bytes, tuple], None]) -> None:
        import socket

        transport = protocol.transport
        sock = transport._sock  # asyncio's own socket object: closed with the transport
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RCVBUF)
        transport.pause_reading()
        fd = sock.fileno()
        self._epoll.register(fd, 0x001)  # EPOLLIN, level-triggered
        self._socks[fd] = (sock, transport, on_other, on_rtp)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _drop(self, fd: int) -> None:
        self._socks.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)

    def _tick(self) -> None:
        try:
            self.drain()
        finally:
            if self._socks:
                self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)
            else:
                self._timer = None

    def drain(self) -> None:
        """Read one datagram from each ready socket per round, until no socket is ready: the last
        readiness poll ends the batch, so no recvfrom raises EAGAIN (an exception per socket and tick
        cost more than the datagram)."""
        poll, socks = self._epoll.poll, self._socks
        self._ticks += 1
        if self._ticks % 100 == 0:  # closed sockets leave the epoll set by themselves; forget them too
            for fd in [fd for fd, entry in socks.items() if entry[1].is_closing()]:
                self._drop(fd)
        for _ in range(64):  # bounded: a flood on one socket must not hold the loop
            ready = poll(0)
            if not ready:
                return
            for fd, _ in ready:
                entry = socks.get(fd)
                if entry is None:
                    continue
                try:
                    data, addr = entry[0].recvfrom(2048)
                except BlockingIOError:
                    continue
                except OSError:  # closed under us (its peer connection closed in this batch)
                    self._drop(fd)
                    continue
                if len(data) >= 12 and 127 < data[0] < 192:  # RTP or RTCP (_is_rtp, inlined)
                    if not 191 < data[1] < 224:
                        entry[3](data)
                    elif self.drop_rtcp:
                        self.rtcp_dropped += 1
                    else:
                        entry[2](data, addr)
                else:  # STUN, DTLS
                    entry[2](data, addr)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._socks.clear()
        self._epoll.close()


def tap_incoming_rtp(pc: RTCPeerConnection, on_rtp: Callable[[bytes], None],
                     drain: RtpDrain | None = None) -> None:
    """Hand every incoming SRTP media datagram of `pc` to `on_rtp` and drop it there, before DTLS: no
    decryption, no jitter buffer (the RTP header is in the clear). STUN, DTLS and RTCP go on as usual.
    For load-test viewers; call after adding transceivers and before setLocalDescription. The tap sits
    in each ICE socket's datagram_received, ahead of aioice, which would first try (and fail) to parse
    every RTP packet as STUN; with `drain` (and the stock asyncio loop) a socket is read in batches by
    the RtpDrain from its first RTP datagram on."""
    def tap(protocol) -> None:
        if getattr(protocol, "_stoa_rtp_tap", False):
            return
        protocol._stoa_rtp_tap = True
        stock = protocol.datagram_received
        batched = drain is not None and RtpDrain.available(protocol)

        def datagram_received(data: bytes, addr) -> None:
            nonlocal batched
            if _is_rtp(data):
                on_rtp(data)
                if batched:  # media flows: the drain reads this socket from now on
                    batched = False
                    drain.add(protocol, on_rtp, stock)
            else:
                stock(data, addr)

        protocol.datagram_received = datagram_received

    _on_gathered_sockets(pc, "_stoa_rtp_tap", tap)


def _on_gathered_sockets(pc: RTCPeerConnection, mark: str, apply: Callable) -> None:
    """Call `apply(protocol)` on each socket `pc`'s ICE connections open as they gather candidates (once per
    connection: `mark` is set on it)."""
    for conn in _ice_connections(pc):
        if getattr(conn, mark, False):
            continue
        stock_candidates = conn.get_component_candidates

        async def get_component_candidates(*args, conn=conn, stock_candidates=stock_candidates, **kwargs):
            candidates = await stock_candidates(*args, **kwargs)
            for protocol in conn._protocols:  # the sockets it just opened
                apply(protocol)
            return candidates

        conn.get_component_candidates = get_component_candidates
        setattr(conn, mark, True)


def read_in_batches(pc: RTCPeerConnection, limit: int = 32, rcvbuf: int | None = None) -> None:
    """Read each ICE socket of `pc` until it is empty (at most `limit` datagrams) every time the loop finds
    it readable, as uvloop (libuv: up to 32) and browsers do, instead of the stock asyncio loop's one
    datagram per socket and loop iteration; `rcvbuf`: that receive buffer size in bytes. On a loop that
    runs 30-500 iterations a second (a server and its test clients sharing one loop on a loaded machine),
    one read per iteration let the busiest sockets queue seconds of media and then overflow
    (tests/test_lastn.py). Call before setLocalDescription. A no-op on uvloop (it reads in batches itself)."""
    import socket

    def batch(protocol) -> None:
        transport = protocol.transport
        sock = getattr(transport, "_sock", None)
        loop = getattr(transport, "_loop", None)
        if sock is None or not hasattr(loop, "_add_reader") or getattr(protocol, "_stoa_batched", False):
            return
        protocol._stoa_batched = True
        reads = protocol._stoa_reads = [0, 0]  # wakeups, datagrams (batched_reads)
        if rcvbuf is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)

        def read_ready() -> None:  # asyncio's _SelectorDatagramTransport._read_ready, looped
            reads[0] += 1
            for _ in range(limit):
                if transport._conn_lost:
                    return
                try:
                    data, addr = sock.recvfrom(transport.max_size)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    protocol.error_received(exc)
                    return
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    transport._fatal_error(exc, "Fatal read error on datagram transport")
                    return
                reads[1] += 1
                protocol.datagram_received(data, addr)

        # The transport's close() removes whatever reader its fd has: this one too.
        loop._add_reader(sock.fileno(), read_ready)

    _on_gathered_sockets(pc, "_stoa_batched", batch)


def batched_reads(pc: RTCPeerConnection) -> tuple[int, int]:
    """(reader wakeups, datagrams read) over the sockets of `pc` that `read_in_batches` reads."""
    reads = [getattr(p, "_stoa_reads", (0, 0)) for conn in _ice_connections(pc) for p in conn._protocols]
    return sum(r[0] for r in reads), sum(r[1] for r in reads)

# --- renegotiation ---------------------------------------------------------------------------

async def retire_rejected_transceivers(pc: RTCPeerConnection, offered_mids: set[str],
                                       rejected_mids: set[str]) -> int:
    """Before applying a remote offer: stop the transceivers whose m-line it rejects (port 0), and drop
    those whose mid it no longer carries because the browser recycled that m-line for a new
    transceiver (JSEP §5.2.2). aiortc 1.16 does neither; a retired transceiver then still claims the
    m-line index, so setLocalDescription gives the recycled section's mid to the old transceiver and
    the new one never receives. Returns how many were dropped."""
    transceivers: list = pc._RTCPeerConnection__transceivers
    dropped = 0
    for transceiver in list(transceivers):
        mid = transceiver.mid
        if mid is None:
            continue
        if mid in rejected_mids or mid not in offered_mids:
            if not transceiver.stopped:
                await transceiver.stop()
            if mid not in offered_mids:
                transceivers.remove(transceiver)
                dropped += 1
    return dropped


def rebundle_orphans(pc: RTCPeerConnection) -> int:
    """After applying a remote description: move sections left on a stopped transport onto the BUNDLE
    group's. With aiortc's balanced policy a second section of a kind starts on the first one's
    transport marked `_bundled`, so when the description's BUNDLE moves the sections onto the group's
    transport and stops the others, that section is skipped and keeps a stopped transport: its sender
    sends nothing (a late joiner got the camera but never the screen), its receiver never starts and
    its packets, routed by payload type, land in the first section's receiver (an aiortc viewer offered
    two new videos at once decoded neither: VP8 "Invalid data"). Runs before aiortc's connect task.
    Returns how many."""
    def stopped(dtls: RTCDtlsTransport) -> bool:  # aiortc stops the ICE transport of a discarded one
        return dtls.transport.state == "closed"

    primary = None
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport is not None and not stopped(transport):
            primary = transport
            break
    if primary is None and pc.sctp is not None and not stopped(pc.sctp.transport):
        primary = pc.sctp.transport
    moved = 0
    for transceiver in pc.getTransceivers():
        transport = transceiver.sender.transport
        if primary is not None and transport is not primary and stopped(transport):
            transceiver.receiver.setTransport(primary)
            transceiver.sender.setTransport(primary)
            transceiver._bundled = True
            moved += 1
    return moved
