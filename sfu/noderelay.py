"""The relay between machines: a room's broadcast from its home node to the nodes whose viewers watch it,
once per node (docs/scaling.md, "A room's broadcast across nodes").

The media is the worker relay's datagram (sfu/relay.py) inside an authenticated envelope, over UDP:

    sealed = magic:u8 (0x53) | link:u32 | counter:u64 | relay datagram | tag[16]
    tag    = BLAKE2s-128 keyed with the link's key, over everything before it

The link key is derived from the cluster secret and a nonce the home node picks for each link, so a key
never travels on the wire. A datagram whose tag does not verify, or whose counter was seen already or is
older than the replay window, is dropped and counted. The RTP inside is not encrypted: it is the
publisher's SRTP payload after decryption, so a link across an untrusted network still belongs inside a
VPN (WireGuard) when the content is confidential; what the tag gives is that nobody can inject or replay
media into a room.

The sending side reuses the worker relay's RelayStream (one encode per packet, REPAIR resends from the
UpTrack's cache), the receiving side its MirrorTrack (packet cache, NACK misses, keyframe requests), so
the control messages `track`, `untrack`, `sr`, `pli` and `nack` are the worker relay's. The control
channel itself (a WebSocket between the nodes) is the signaling layer's (signaling/cascade.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import socket
import struct
import time
from typing import Callable

from jsonschema import Draft202012Validator

from sfu.pool import RelayStream, WorkerLink
from sfu.relay import CONTROL_MESSAGES, Batcher, RelayError, check_control, decode_datagram, encode_entry
from sfu.uptrack import UpTrack
from sfu.worker import MirrorTrack

logger = logging.getLogger(__name__)

MAGIC = 0x53
_HEAD = struct.Struct("!BIQ")
TAG_BYTES = 16
REPLAY_WINDOW = 4096
# Between machines a datagram must not fragment: keep a batch within a common path MTU.
MAX_SEALED_BATCH = 1200
SOCKET_BUFFER = 4 * 1024 * 1024

_STREAM = CONTROL_MESSAGES["pli"]["properties"]["stream"]
NODE_MESSAGES: dict[str, dict] = {
    # home -> edge, first: the link's id and the nonce its key is derived from.
    # `node`: the sender's node id (in a relay tree, the parent edge rather than the room's home).
    "hello": {"properties": {"link": {"type": "integer", "minimum": 1, "maximum": 0xFFFFFFFF},
                             "nonce": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                             "node": {"type": "string", "minLength": 1, "maxLength": 200}},
              "required": ["link", "nonce"]},
    # home -> edge: the room's broadcast now is these streams (announced with `track` before).
    "broadcast": {"properties": {"tracks": {"type": "object", "propertyNames": {"enum": ["audio", "video"]},
                                            "additionalProperties": _STREAM}}, "required": ["tracks"]},
}
_NODE_VALIDATORS = {k: Draft202012Validator({"type": "object", **s}) for k, s in NODE_MESSAGES.items()}
EDGE_TO_HOME = ("pli", "nack")
HOME_TO_EDGE = ("hello", "track", "untrack", "sr", "broadcast")


def check_node_message(message: dict, allowed: tuple[str, ...]) -> None:
    """A control message between nodes: its type is one this direction carries and it fits its schema."""
    kind = message.get("type") if isinstance(message, dict) else None
    if kind not in allowed:
        raise RelayError(f"unexpected control message {kind!r} between nodes (expected one of {', '.join(allowed)})")
    validator = _NODE_VALIDATORS.get(kind)
    if validator is None:
        check_control(message)
        return
    error = next(iter(validator.iter_errors(message)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "message"
        raise RelayError(f"control message {kind!r}: {where}: {error.message}")


def link_key(secret: bytes, nonce: str) -> bytes:
    return hmac.new(secret, b"stoa relay media key|" + nonce.encode(), hashlib.sha256).digest()


def seal(key: bytes, link: int, counter: int, datagram: bytes) -> bytes:
    head = _HEAD.pack(MAGIC, link, counter) + datagram
    return head + hashlib.blake2s(head, key=key, digest_size=TAG_BYTES).digest()


def unseal_head(data: bytes) -> tuple[int, int]:
    """(link, counter) of a sealed datagram, before its tag is checked."""
    if len(data) < _HEAD.size + TAG_BYTES + 2:
        raise RelayError("sealed datagram too short")
    magic, link, counter = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise RelayError(f"not a Stoa relay datagram (first byte {magic:#x})")
    return link, counter


def unseal(key: bytes, data: bytes) -> bytes:
    """The relay datagram inside, if the tag verifies (RelayError otherwise)."""
    body, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
    if not hmac.compare_digest(hashlib.blake2s(body, key=key, digest_size=TAG_BYTES).digest(), tag):
        raise RelayError("the datagram's tag does not verify")
    return body[_HEAD.size:]


REJECT_REASONS = ("unknown_link", "bad_tag", "replay", "malformed")


class ReplayWindow:
    """Accepts each counter once, within REPLAY_WINDOW of the highest seen (reordering is fine)."""

    __slots__ = ("highest", "mask")

    def __init__(self) -> None:
        self.highest = 0
        self.mask = 0  # bit i: highest - i was seen

    def accept(self, counter: int) -> bool:
        if counter > self.highest:
            shift = counter - self.highest
            self.mask = ((self.mask << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            self.highest = counter
            return True
        age = self.highest - counter
        if age >= REPLAY_WINDOW or self.mask >> age & 1:
            return False
        self.mask |= 1 << age
        return True


class RelayEndpoint:
    """This node's UDP socket for the relay: it sends the links out, and receives the links in. Each wake-up
    drains the socket until EAGAIN (asyncio's datagram transport reads one datagram per loop turn, which
    loses a video burst at the kernel buffer)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbound: dict[int, "EdgeRelay"] = {}
        # By reason. "unknown_link" is also the benign race of a link's first datagrams against its hello
        # (UDP against the control WebSocket); the others mean a forged, replayed or broken datagram.
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self.send_failures = 0
        self._rejected_logged = 0.0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self.closed = False

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError, OSError):
            self.send_failures += 1  # a full buffer or an unreachable edge: the edge NACKs, PLIs

    def _on_readable(self) -> None:
        recv = self.sock.recvfrom
        arrival = time.time()
        while True:
            try:
                data, addr = recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ICMP port unreachable reported on the socket, and such
            self.datagram_received(data, addr, arrival)

    def datagram_received(self, data: bytes, addr, arrival: float) -> None:
        reason = "malformed"
        try:
            link, counter = unseal_head(data)
            edge = self.inbound.get(link)
            if edge is None:
                reason = "unknown_link"
                raise RelayError(f"unknown link {link}")
            reason = "bad_tag"
            inner = unseal(edge.key, data)
            if not edge.window.accept(counter):
                reason = "replay"
                raise RelayError("a replayed or too old datagram")
            reason = "malformed"
            packets = decode_datagram(inner)
        except RelayError as exc:
            self.rejected[reason] += 1
            now = time.monotonic()
            if now - self._rejected_logged > 10:
                self._rejected_logged = now
                logger.warning("relay: dropped a datagram from %s:%s: %s (%d dropped so far)",
                               addr[0], addr[1], exc, sum(self.rejected.values()))
            return
        edge.on_packets(packets, arrival)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


async def open_endpoint(host: str, port: int = 0) -> RelayEndpoint:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass
    sock.setblocking(False)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return RelayEndpoint(sock)


class HomeLink:
    """On the home node: one edge node's copy of a room's broadcast. Looks like a worker link to
    RelayStream (push, notify, alive), so each packet is encoded once and sent once per edge node."""

    def __init__(self, endpoint: RelayEndpoint, secret: bytes, addr: tuple[str, int],
                 send_control: Callable[[dict], None]):
        self.endpoint, self.addr, self.send_control = endpoint, addr, send_control
        self.link = secrets.randbelow(0xFFFFFFFF) + 1
        nonce = secrets.token_hex(16)
        self.key = link_key(secret, nonce)
        self.hello = {"type": "hello", "link": self.link, "nonce": nonce}
        self.alive = True
        self.streams: dict[str, RelayStream] = {}  # by kind
        self._next = 0
        self._counter = 0
        self._batcher = Batcher(MAX_SEALED_BATCH)
        self._flush_scheduled = False
        self.packets_relayed = self.datagrams_sent = 0
        self._loss = None

    # The worker link's batching and impairment, as they are: they only use the attributes set above.
    push = WorkerLink.push
    flush = WorkerLink.flush
    impair = WorkerLink.impair

    def _send(self, data: bytes) -> None:
        self._counter += 1
        if self._loss is not None and self._loss[0].random() < self._loss[1]:
            return
        self.datagrams_sent += 1
        self.endpoint.sendto(seal(self.key, self.link, self._counter, data), self.addr)

    def notify(self, message: dict) -> None:
        if self.alive:
            self.send_control(message)

    def bind(self, tracks: dict[str, UpTrack]) -> None:
        """Carry these tracks (the room's broadcast, by kind); announce new ones, retire the others."""
        if not self.alive:
            return  # closed: its socket may linger until the heartbeat gives up on it
        for kind, stream in list(self.streams.items()):
            if tracks.get(kind) is not stream.uptrack:
                self._retire(kind)
        for kind, up in tracks.items():
            if kind in self.streams:
                continue
            self._next = self._next % 0xFFFF + 1
            stream = RelayStream(self._next, up)
            stream.refs[self] = 1
            stream.links = [self]
            self.streams[kind] = stream
            self.notify(stream.describe())
            sr = getattr(up, "_sr", None)  # the last sender report, on this node's clock
            if sr is not None:
                self.notify({"type": "sr", "stream": stream.index, "time": sr[0], "rtp": sr[1]})
            up.sinks.append(stream)
            up.request_keyframe()  # the edge's viewers start on a keyframe
        self.notify({"type": "broadcast", "tracks": {k: s.index for k, s in self.streams.items()}})

    def _retire(self, kind: str) -> None:
        stream = self.streams.pop(kind)
        if stream in stream.uptrack.sinks:
            stream.uptrack.sinks.remove(stream)
        stream.links = []
        self.notify({"type": "untrack", "stream": stream.index})

    def on_control(self, message: dict) -> None:
        stream = next((s for s in self.streams.values() if s.index == message["stream"]), None)
        if stream is None:
            return
        if message["type"] == "pli":
            stream.uptrack.request_keyframe()
        else:
            stream.repair(self, message["seqs"])

    def close(self) -> None:
        for kind in list(self.streams):
            stream = self.streams.pop(kind)
            if stream in stream.uptrack.sinks:
                stream.uptrack.sinks.remove(stream)
            stream.links = []
        self.alive = False

    def describe(self) -> dict:
        return {"addr": f"{self.addr[0]}:{self.addr[1]}", "packets_relayed": self.packets_relayed,
                "datagrams_sent": self.datagrams_sent, "repairs": sum(s.repairs for s in self.streams.values())}


class OnwardTrack(MirrorTrack):
    """An edge's copy of a relayed track. In a tree (docs/scaling.md, "Relay trees") the edge also relays it
    onward: each next edge's HomeLink adds a RelayStream to `sinks`, and every packet, repairs included, is
    encoded once per next edge. Their keyframe requests reach this track's request_keyframe (sent up as
    `pli`), and their NACKs its cache, whose misses go up as `nack`: both flow back to the home hop by hop."""

    def on_relayed(self, packet, arrival: float) -> None:
        super().on_relayed(packet, arrival)
        if not self.sinks or self.closed:
            return
        for stream in self.sinks:
            entry = encode_entry(stream.index, packet.seq, packet.timestamp, packet.marker, packet.payload_type,
                                 packet.ssrc, packet.payload, packet.audio_level, repair=packet.repair)
            for link in stream.links:
                link.push(entry)

    def set_sender_clock(self, local_time: float, rtp_timestamp: int) -> None:
        super().set_sender_clock(local_time, rtp_timestamp)
        for stream in self.sinks:
            stream.sender_report(local_time, rtp_timestamp)


class EdgeRelay:
    """On an edge node: a room's broadcast relayed from its home, as MirrorTracks its viewers bind to."""

    def __init__(self, endpoint: RelayEndpoint, secret: bytes, send_control: Callable[[dict], None],
                 on_change: Callable[[dict[str, UpTrack]], None]):
        self.endpoint, self.secret = endpoint, secret
        self.send_control, self.on_change = send_control, on_change
        self.link: int | None = None
        self.source: str | None = None  # the node the relay comes from (its hello's `node`)
        self.key = b""
        self.window = ReplayWindow()
        self.tracks: dict[int, MirrorTrack] = {}
        self.broadcast: dict[str, int] = {}
        self.synced = asyncio.get_event_loop().create_future()  # the first `broadcast` came
        self.packets = 0

    def on_control(self, message: dict) -> None:
        kind = message["type"]
        if kind == "hello":
            if self.link is not None:
                self.endpoint.inbound.pop(self.link, None)
            self.link, self.key = message["link"], link_key(self.secret, message["nonce"])
            self.source = message.get("node")
            self.endpoint.inbound[self.link] = self
        elif kind == "track":
            old = self.tracks.pop(message["stream"], None)
            if old is not None:
                old.close()
            self.tracks[message["stream"]] = OnwardTrack(message["stream"], message, self.send_control)
        elif kind == "untrack":
            track = self.tracks.pop(message["stream"], None)
            if track is not None:
                track.close()
        elif kind == "sr":
            track = self.tracks.get(message["stream"])
            if track is not None:
                track.set_sender_clock(message["time"], message["rtp"])
        elif kind == "broadcast":
            self.broadcast = dict(message["tracks"])
            if not self.synced.done():
                self.synced.set_result(True)
            self.on_change(self.broadcast_tracks())

    def broadcast_tracks(self) -> dict[str, UpTrack]:
        return {kind: self.tracks[s] for kind, s in self.broadcast.items() if s in self.tracks}

    def on_packets(self, packets, arrival: float) -> None:
        tracks = self.tracks
        for packet in packets:
            track = tracks.get(packet.stream)
            if track is not None:
                self.packets += 1
                track.on_relayed(packet, arrival)

    def close(self) -> None:
        if self.link is not None and self.endpoint.inbound.get(self.link) is self:
            del self.endpoint.inbound[self.link]
        for track in self.tracks.values():
            track.close()
        self.tracks.clear()
        self.broadcast = {}
