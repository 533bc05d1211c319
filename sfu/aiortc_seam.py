"""The one place where Stoa touches aiortc and aioice internals.

aiortc has no public API for forwarding encoded RTP, so the SFU hooks in here:
- receive: the publisher's RTCRtpReceiver keeps its RTCP, RTX unwrap and NACK generation, but its
  jitter buffer is replaced by a sink and its decoder thread is stopped, so nothing is ever decoded;
- send: raw RTP goes into the subscriber's RTCDtlsTransport (SRTP + ICE) and the stock sender's
  counters are fed so its sender reports stay coherent; its NACK and PLI handling is redirected;
- data channels: a text message on an idle, reliable channel becomes one SCTP DATA chunk handed to DTLS
  and the nominated ICE pair in one synchronous call (aiortc schedules a task per message);
- ICE: gathering can be limited to configured local addresses (aioice skips loopback otherwise);
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
import types
from dataclasses import dataclass, field
from importlib.metadata import version as _dist_version
from typing import Awaitable, Callable

import aioice.ice
import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport, State as _DtlsState
from aiortc.rtcicetransport import RTCIceTransport
from aiortc import rtcsctptransport as _sctp
from aiortc import rtp as _rtp
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.rtcsctptransport import RTCSctpTransport
from aiortc.utils import uint16_add
from pylibsrtp._binding import ffi as _srtp_ffi
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtpPacket,
    is_rtcp,
    unpack_remb_fci,
)

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
        RTCRtpReceiver.__init__: ("_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__decoder_thread"),
        RTCDtlsTransport.__init__: ("_state", "_tx_srtp", "_ssl", "_RTCDtlsTransport__tx_bytes",
                                    "_RTCDtlsTransport__tx_packets"),
        RTCSctpTransport.__init__: (
            "_association_state", "_data_channel_queue", "_outbound_queue", "_sent_queue", "_forward_tsn_chunk",
            "_flight_size", "_cwnd", "_local_tsn", "_outbound_stream_seq", "_local_port", "_remote_port",
            "_remote_verification_tag", "_t3_handle", "_remote_max_message_size",
        ),
        aioice.ice.Connection.__init__: ("_nominated",),
        RTCPeerConnection.__init__: ("_RTCPeerConnection__certificates",),
        RTCCertificate.__init__: ("_key", "_cert"),
        aioice.ice.CandidatePair.__init__: ("protocol",),
        pylibsrtp.Session.__init__: ("_cdata", "_buffer"),
        RTCRtpSender.__init__: (
            "_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp",
            "_RTCRtpSender__packet_count", "_RTCRtpSender__octet_count", "_ssrc", "_rtx_ssrc",
        ),
    }
    for func, names in expected.items():
        missing = [n for n in names if n not in func.__code__.co_names]
        if missing:
            problems.append(f"{func.__qualname__} no longer sets {', '.join(missing)}")
    for cls, names in (
        (RTCRtpReceiver, ("_handle_rtp_packet", "_handle_rtcp_packet", "_send_rtcp_pli", "_send_rtcp",
                          "_RTCRtpReceiver__stop_decoder")),
        (RTCRtpSender, ("_handle_rtcp_packet", "send")),
        (RTCDtlsTransport, ("_send_rtp", "_setup_srtp")),
        (RTCCertificate, ("_create_ssl_context",)),
        (pylibsrtp, ("SRTP_MAX_TRAILER_LEN", "Error")),
        (_rtp, ("DYNAMIC_PAYLOAD_TYPES",)),
        (RTCSctpTransport, ("_flight_size_increase", "_t3_start", "_send")),
        (_sctp, ("DataChunk", "serialize_packet", "tsn_plus_one", "USERDATA_MAX_LENGTH", "WEBRTC_STRING",
                 "SCTP_DATA_FIRST_FRAG", "SCTP_DATA_LAST_FRAG")),
        (aioice.ice.CandidatePair, ("remote_addr",)),
        (aioice.ice.Connection, ("gather_candidates", "get_component_candidates")),
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
    """Route every RTX-unwrapped RTP packet of `receiver` to `on_rtp`, with no decoding."""
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
                await on_rtp(forwarded, time.time())
            except Exception:
                # Raised into RTCDtlsTransport's receive loop, it would close the publisher's transport.
                state["errors"] = state.get("errors", 0) + 1
                if state["errors"] == 1:
                    logger.exception("forwarding a packet failed; the publisher's transport stays up")

    async def handle_rtcp(packet) -> None:
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            on_sender_report(packet.ssrc, info.ntp_timestamp, info.rtp_timestamp)
        elif isinstance(packet, RtcpByePacket) and on_bye is not None:
            on_bye()
        await stock_rtcp(packet)

    stock_send_rtcp = receiver._send_rtcp
    remb = {"at": 0.0, "bitrate": 0}

    async def send_rtcp(packet) -> None:
        # aiortc sends a REMB on every packet while its estimator says "overusing"; at most 4/s
        # is plenty, sooner only when the estimate drops by more than 10%.
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
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


class SenderSeam:
    """Raw RTP injection into a stock RTCRtpSender's transport, with its RTCP redirected."""

    __slots__ = ("sender", "ssrc", "rtx_ssrc", "params", "ready", "_dtls", "_on_nack",
                 "_on_keyframe_request", "_fast")

    def __init__(self, sender: RTCRtpSender, on_nack: Callable[[list[int]], Awaitable[None]],
                 on_keyframe_request: Callable[[], None]):
        self.sender = sender
        self.ssrc: int = sender._ssrc
        self.rtx_ssrc: int = sender._rtx_ssrc
        self.params: SendParameters | None = None
        self.ready = asyncio.Event()
        self._dtls: RTCDtlsTransport | None = None
        self._on_nack = on_nack
        self._on_keyframe_request = on_keyframe_request
        self._fast: tuple | None = None
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
            await stock_send(parameters)
            self.ready.set()

        async def handle_rtcp(packet) -> None:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                await self._on_nack(list(packet.lost))
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self._on_keyframe_request()
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                return  # REMB: there is no encoder to steer on a forwarded leg
            else:
                await stock_rtcp(packet)

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
        if fast is None or fast[0]._state is not _DTLS_CONNECTED:
            fast = self._fast = self._resolve()
            if fast is None:
                return False
        fast[1](fast[2](data), fast[3])
        return True

    def _resolve(self) -> tuple | None:
        """(dtls, sendto, protect, remote address) once DTLS is up and ICE has nominated a pair."""
        dtls = self._dtls
        route = _dtls_route(dtls)
        if route is None:
            return None
        return dtls, route[0], dtls._tx_srtp.protect, route[1]

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
    """(sendto, remote address) of a connected DTLS transport's nominated ICE pair, else None."""
    if dtls is None or dtls._state is not _DTLS_CONNECTED:
        return None
    pair = dtls.transport._connection._nominated.get(1)
    transport = pair.protocol.transport if pair is not None else None
    if transport is None:
        return None
    return transport.sendto, pair.remote_addr


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

    def send(self, text: str) -> None:
        """Like RTCDataChannel.send(text): raises InvalidStateError unless the channel is open."""
        if not self._send_now(text):
            self.channel.send(text)

    def _send_now(self, text: str) -> bool:
        channel = self.channel
        sctp = channel.transport
        stream_id = channel.id
        if (not self._eligible or stream_id is None or channel.readyState != "open"
                or sctp._association_state is not _SCTP_ESTABLISHED
                or sctp._data_channel_queue or sctp._outbound_queue or sctp._forward_tsn_chunk is not None
                or sctp._flight_size >= sctp._cwnd):
            return False
        user_data = text.encode("utf8")
        size = len(user_data)
        if size == 0 or size > _sctp.USERDATA_MAX_LENGTH or (
                sctp._remote_max_message_size and size > sctp._remote_max_message_size):
            return False
        dtls = sctp.transport
        route = self._route
        if route is None or route[0] is not dtls or dtls._state is not _DTLS_CONNECTED:
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
    transports: list[RTCIceTransport] = []
    for t in pc.getTransceivers():
        if t.sender.transport is not None:
            transports.append(t.sender.transport.transport)
    if pc.sctp is not None:
        transports.append(pc.sctp.transport.transport)
    seen, out = set(), []
    for ice in transports:
        conn = ice.iceGatherer._connection
        if id(conn) not in seen:
            seen.add(id(conn))
            out.append(conn)
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
