"""Creating and negotiating peer connections the way the SFU needs them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription, candidate_from_sdp, candidate_to_sdp, parse_h264_profile_level_id

from sfu.aiortc_seam import (allow_large_rtp, begin_ice_restart, finish_ice_restart, harden_consent,
                             ice_credentials, read_in_batches, rebundle_orphans, restrict_ice_gathering,
                             retire_rejected_transceivers, use_dtls_certificate)
from sfu.iceserver import IceServer, ice_servers
from sfu.jsep import conform_answer, rejected_mids

logger = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024


class SdpError(ValueError):
    """The remote description cannot be used; the message says why."""


class IceRestartRefused(SdpError):
    """An ICE restart on a connection whose ICE is not up (never connected, failed, closed): the client
    builds a new connection instead (room protocol `ice_restart_refused`)."""


class OtherIceSession(SdpError):
    """Trickled candidates name an ICE ufrag that is not the connection's current remote one (WHIP/WHEP 422)."""


# The refusals a media worker names in its reply (`code`), so the main process raises what in-process raises.
REFUSAL_CODES: dict[str, type[SdpError]] = {"ice_restart_refused": IceRestartRefused,
                                            "other_ice_session": OtherIceSession}


class UnsupportedCodec(SdpError):
    """A media section offers no codec Stoa can forward (WHIP answers 406 Not Acceptable)."""


# What Stoa forwards, by kind; each leg is restricted to the publisher's codec, nothing is transcoded.
FORWARDED_CODECS = {"audio": ("audio/opus",), "video": ("video/VP8", "video/H264")}
ACCEPTED_TEXT = ("VP8 or H.264 (any profile, packetization-mode 0 or 1) for video, Opus for audio")


def h264_profile(parameters: dict) -> tuple[object, int] | None:
    """(profile, packetization-mode) of an H.264 fmtp, as RFC 6184 8.1 matches them (the level may
    differ); a missing profile-level-id means Constrained Baseline 3.1, as libwebrtc reads it."""
    try:
        profile = parse_h264_profile_level_id(str(parameters.get("profile-level-id", "42e01f")))[0]
        return profile, int(parameters.get("packetization-mode", 0))
    except ValueError:
        return None


def same_codec(mime_a: str, params_a: dict, mime_b: str, params_b: dict) -> bool:
    """One codec for forwarding purposes: same MIME type and, for H.264, profile and packetization mode."""
    if mime_a.lower() != mime_b.lower():
        return False
    if mime_a.lower() == "video/h264":
        a = h264_profile(params_a)
        return a is not None and a == h264_profile(params_b)
    return True


def check_forwardable(sdp: str) -> None:
    """Raise UnsupportedCodec, naming what was offered and what Stoa takes, when an audio or video
    section of an offer has no codec Stoa forwards (AV1, H.265, ...)."""
    for media in SessionDescription.parse(sdp).media:
        if media.kind not in FORWARDED_CODECS or media.direction == "inactive" or media.port == 0:
            continue
        offered = [c for c in media.rtp.codecs if not c.mimeType.lower().endswith("/rtx")]
        caps = [c for c in RTCRtpSender.getCapabilities(media.kind).codecs
                if c.mimeType.lower() in (m.lower() for m in FORWARDED_CODECS[media.kind])]
        if any(c.clockRate == cap.clockRate and same_codec(c.mimeType, c.parameters, cap.mimeType, cap.parameters)
               for c in offered for cap in caps):
            continue
        names = ", ".join(dict.fromkeys(_codec_name(c.mimeType, c.parameters) for c in offered)) or "none"
        raise UnsupportedCodec(f"the {media.kind} section (mid {media.rtp.muxId}) offers {names}; "
                               f"Stoa forwards {ACCEPTED_TEXT}")


def check_section_takes(sdp: str, mid: str, mime_type: str, parameters: dict) -> None:
    """Raise UnsupportedCodec if section `mid` of a (WHEP) offer cannot receive `mime_type` with these
    parameters: the broadcast is forwarded as it is, so a viewer must take the publisher's codec."""
    for media in SessionDescription.parse(sdp).media:
        if media.rtp.muxId != mid:
            continue
        offered = [c for c in media.rtp.codecs if not c.mimeType.lower().endswith("/rtx")]
        if not any(same_codec(c.mimeType, c.parameters, mime_type, parameters) for c in offered):
            names = ", ".join(dict.fromkeys(_codec_name(c.mimeType, c.parameters) for c in offered)) or "none"
            raise UnsupportedCodec(f"the {media.kind} section (mid {mid}) takes {names}, but the broadcast "
                                   f"is {_codec_name(mime_type, parameters)} and Stoa does not transcode")


def _codec_name(mime_type: str, parameters: dict) -> str:
    name = mime_type.split("/", 1)[-1]
    if name.lower() == "h264":
        return f"H264 (profile-level-id {parameters.get('profile-level-id', 'none')}, " \
               f"packetization-mode {parameters.get('packetization-mode', 0)})"
    return name


class IdleTrack(MediaStreamTrack):
    """Occupies a sender so its RTP loop waits instead of polling; forwarded RTP goes around it."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future = asyncio.get_event_loop().create_future()

    async def recv(self):
        await self._never
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        if not self._never.done():
            self._never.set_exception(MediaStreamError())
            self._never.exception()  # mark retrieved


@dataclass
class IceSettings:
    servers: list[str] = field(default_factory=list)
    username: str = ""
    credential: str = ""
    addresses: list[str] = field(default_factory=list)
    # TURN REST API shared secret (coturn static-auth-secret); when set it replaces username/credential.
    turn_secret: str = ""
    turn_ttl: int = 86400
    server_identity: str = "stoa"

    def for_identity(self, identity: str) -> list[IceServer]:
        """The ICE servers a client (`identity`) is told about, with its own time-limited TURN credentials."""
        return ice_servers(self.servers, identity=identity, username=self.username, credential=self.credential,
                           turn_secret=self.turn_secret, ttl=self.turn_ttl)

    def rtc_servers(self) -> list[RTCIceServer]:
        return [RTCIceServer(urls=s.url, username=s.username, credential=s.credential)
                for s in self.for_identity(self.server_identity)]


@dataclass(frozen=True)
class NegotiatedCodec:
    mid: str
    kind: str
    direction: str
    mime_type: str
    clock_rate: int
    payload_type: int
    parameters: dict


def check_sdp_text(sdp: str) -> None:
    """The cheap checks before parsing: present, bounded, and an SDP at all."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise SdpError("the SDP is empty")
    if len(sdp) > MAX_SDP_BYTES:
        raise SdpError(f"the SDP is larger than {MAX_SDP_BYTES} bytes")
    if not sdp.lstrip().startswith("v=0"):
        raise SdpError("the SDP must start with 'v=0'")


class PeerFactory:
    def __init__(self, ice: IceSettings, load=None, *, downlink_transport_cc: bool = False):
        self.ice = ice
        self.load = load  # sfu.overload.LoadMonitor of this process, or None
        # Subscribers number their packets for transport-cc feedback from viewers (setting downlink_transport_cc).
        self.downlink_transport_cc = downlink_transport_cc
        self.live: set[RTCPeerConnection] = set()

    def create(self) -> RTCPeerConnection:
        # An explicit list, even empty: aiortc falls back to Google's STUN when given None.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice.rtc_servers()))
        use_dtls_certificate(pc)  # takes RSA peers (GStreamer, hardware encoders) in either DTLS role
        self.live.add(pc)
        return pc

    async def close(self, pc: RTCPeerConnection) -> None:
        self.live.discard(pc)
        try:
            await pc.close()
        except Exception:
            logger.exception("closing a peer connection failed")

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(pc) for pc in list(self.live)))

    async def set_remote(self, pc: RTCPeerConnection, sdp: str, kind: str) -> None:
        check_sdp_text(sdp)
        try:
            parsed = SessionDescription.parse(sdp)
        except Exception as exc:
            raise SdpError(f"the SDP cannot be parsed: {exc}") from None
        if not parsed.media:
            raise SdpError("the SDP has no media sections")
        restart = ice_restart_in(pc, parsed, kind)
        if kind == "offer":
            check_forwardable(sdp)
            if restart:
                check_restartable(pc)
            await retire_rejected_transceivers(pc, {m.rtp.muxId for m in parsed.media}, rejected_mids(sdp))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except Exception as exc:
            raise SdpError(f"the SDP was refused: {exc}") from None
        rebundle_orphans(pc)  # an answer's BUNDLE, or an offer's (a publisher's two audio sections)
        if restart:
            await follow_ice_restart(pc, parsed, kind)

    async def set_local(self, pc: RTCPeerConnection, description: RTCSessionDescription) -> str:
        restrict_ice_gathering(pc, self.ice.addresses)
        harden_consent(pc)  # a loop that falls behind must not expire its own peers' consent
        allow_large_rtp(pc)
        read_in_batches(pc)  # on the stock asyncio loop, as uvloop reads: until the socket is empty
        await pc.setLocalDescription(description)
        return pc.localDescription.sdp

    async def answer(self, pc: RTCPeerConnection, offer_sdp: str) -> str:
        """Answer `offer_sdp`. What is sent keeps the offer's rejected m-lines rejected and its BUNDLE
        group (sfu/jsep.py); aiortc keeps its own view of the answer, which only it reads."""
        await self.set_remote(pc, offer_sdp, "offer")
        return conform_answer(offer_sdp, await self.set_local(pc, await pc.createAnswer()))

    async def offer(self, pc: RTCPeerConnection, *, ice_restart: bool = False) -> str:
        """An offer on `pc`; with `ice_restart`, one with new ICE credentials (RFC 8445 9): checks of
        the new session start when the answer brings the other side's (set_remote)."""
        if ice_restart:
            check_restartable(pc)
            begin_ice_restart(pc)
        return await self.set_local(pc, await pc.createOffer())


def description_ice(parsed: SessionDescription) -> tuple[str | None, str | None]:
    """The ICE credentials (ufrag, pwd) of a description: its first section in use (Stoa bundles)."""
    for media in parsed.media:
        if media.port != 0 and media.ice is not None:
            return media.ice.usernameFragment, media.ice.password
    return None, None


def ice_restart_in(pc: RTCPeerConnection, parsed: SessionDescription, kind: str) -> bool:
    """Whether a remote description restarts ICE on `pc`: a renegotiation offer with new credentials
    (the other side called restartIce()), or the answer to an offer of ours that began a restart."""
    previous = pc.remoteDescription
    if previous is None or not ice_credentials(pc):
        return False
    # Compared with the last description, not the ICE agent: that learns them only once checks start.
    ufrag, pwd = description_ice(parsed)
    if ufrag is None or (ufrag, pwd) == description_ice(SessionDescription.parse(previous.sdp)):
        return False
    # An answer restarts only if our offer began it (begin_ice_restart forgot the old remote credentials).
    return kind == "offer" or ice_credentials(pc)["remote_ufrag"] is None


def check_restartable(pc: RTCPeerConnection) -> None:
    """An ICE restart keeps media on the nominated pair until a new one is chosen, so ICE must be up;
    a connection that never connected or has failed is rebuilt instead."""
    if pc.iceConnectionState != "completed":
        raise IceRestartRefused(f"ICE cannot be restarted on a connection whose ICE is {pc.iceConnectionState}; "
                                "make a new connection")


async def follow_ice_restart(pc: RTCPeerConnection, parsed: SessionDescription, kind: str) -> None:
    """After applying a restarting description: an offer's restart begins here (so the answer carries
    new local credentials); both then give the new session the other side's credentials and candidates."""
    if kind == "offer":
        begin_ice_restart(pc)
    ufrag, pwd = description_ice(parsed)
    media = next(m for m in parsed.media if m.port != 0)
    await finish_ice_restart(pc, ufrag, pwd, list(media.ice_candidates), media.ice_candidates_complete)
    logger.info("ICE restart: new remote ufrag %s", ufrag)


async def add_remote_candidate(pc: RTCPeerConnection, candidate: dict) -> None:
    """Trickle ICE: `candidate` is the browser's RTCIceCandidateInit."""
    line = candidate.get("candidate") or ""
    if not line:
        return  # end of candidates
    parsed = parse_candidate(line, candidate.get("sdpMid"))
    parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
    if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
        parsed.sdpMLineIndex = 0
    await pc.addIceCandidate(parsed)


def negotiated_codecs(sdp: str) -> dict[str, NegotiatedCodec]:
    """The first (sending) codec of every audio/video section of a description, by mid."""
    out: dict[str, NegotiatedCodec] = {}
    for media in SessionDescription.parse(sdp).media:
        if media.kind not in ("audio", "video"):
            continue
        codecs = [c for c in media.rtp.codecs if not c.mimeType.lower().endswith("/rtx")]
        if not codecs:
            continue
        c = codecs[0]
        out[media.rtp.muxId] = NegotiatedCodec(
            mid=media.rtp.muxId, kind=media.kind, direction=media.direction or "sendrecv",
            mime_type=c.mimeType, clock_rate=c.clockRate, payload_type=c.payloadType,
            parameters=dict(c.parameters),
        )
    return out


def codec_preferences(kind: str, mime_type: str, parameters: dict | None = None):
    """Restrict a leg to the publisher's codec (plus its RTX), so nothing has to be transcoded. For
    H.264 that is the publisher's profile and packetization mode (RFC 6184)."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in caps if c.mimeType.lower() == mime_type.lower()]
    if mime_type.lower() == "video/h264" and parameters is not None:
        chosen = [c for c in chosen if same_codec(mime_type, parameters, c.mimeType, c.parameters)]
    if not chosen:
        raise UnsupportedCodec(f"codec {mime_type} {parameters or ''} is not supported; "
                               f"Stoa forwards {ACCEPTED_TEXT}")
    rtx = [c for c in caps if c.mimeType.lower().endswith("/rtx")]
    return chosen + rtx


def parse_candidate(line: str, mid: str | None = None):
    """An a=candidate value ("candidate:..." or without the prefix) as an aiortc RTCIceCandidate."""
    if line.startswith("candidate:"):
        line = line[len("candidate:"):]
    try:
        candidate = candidate_from_sdp(line)
    except Exception as exc:
        raise SdpError(f"the ICE candidate cannot be parsed: {exc}") from None
    candidate.sdpMid = mid
    return candidate


async def restart_ice_from(pc: RTCPeerConnection, remote_ufrag: str, remote_pwd: str | None, candidates: list,
                           end_of_candidates: bool) -> tuple[str, str, list[str]]:
    """A client-offered ICE restart (WHIP/WHEP PATCH with If-Match: *, RFC 9725 4.3): the client's new
    credentials and candidates (RTCIceCandidate) start a new ICE session on `pc`; returns the server's
    new ufrag, pwd and candidate lines. Media stays on the old pair until checks nominate a new one."""
    current = ice_credentials(pc)
    if remote_ufrag == current.get("remote_ufrag") and remote_pwd == current.get("remote_pwd"):
        raise SdpError("an ICE restart needs a new ice-ufrag and ice-pwd; these are the current ones")
    ufrag, pwd = begin_ice_restart(pc)
    await finish_ice_restart(pc, remote_ufrag, remote_pwd, candidates, end_of_candidates)
    return ufrag, pwd, [f"candidate:{candidate_to_sdp(c)}" for c in local_candidates(pc)]


def local_candidates(pc: RTCPeerConnection):
    """The local ICE candidates of `pc`'s first transport (everything is bundled on it)."""
    for t in pc.getTransceivers():
        if t.sender.transport is not None:
            return t.sender.transport.transport.iceGatherer.getLocalCandidates()
    if pc.sctp is not None:
        return pc.sctp.transport.transport.iceGatherer.getLocalCandidates()
    return []
