"""The relay's wire format: RTP from the process that receives a track to the processes (later: the
machines) whose subscribers need it, and the control messages that go with it.

Media, one datagram (a UNIX datagram socket inside a machine, UDP between machines):

    datagram = version:u8 (1) | count:u8 | entry * count
    entry    = stream:u16 | flags:u8 | level:u8 | length:u16 | rtp[length]

`stream` is the relay stream index the sender assigned to one published track (announced with a
"track" control message before its packets matter). `rtp` is a plain RTP packet: a 12-byte header
(V=2, no CSRC, no extensions) with the publisher's own sequence number, timestamp, SSRC, payload type
and marker, then the payload, exactly as received (never decoded). Header extensions are not relayed:
each leg writes its own; the one the legs need, the audio level, travels in `level` (RFC 6464 layout,
V bit 0x80 | level) when flag LEVEL is set. Flag REPAIR marks a packet resent because the receiver
asked for it (a NACK its cache could not answer). All integers are big-endian.

Control, one frame on a reliable stream (a UNIX stream socket; TCP between machines):

    frame = length:u32 | JSON object (UTF-8), with a "type"

Everything here is pure (bytes in, values out) and tested byte for byte in tests/test_sfu_relay.py.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from jsonschema import Draft202012Validator

from sfu.liveness import STATES
from sfu.rtp import build_header, parse_header

VERSION = 1
FLAG_LEVEL = 0x01
FLAG_REPAIR = 0x02
MAX_ENTRIES = 255
# What one datagram may carry. A UNIX datagram socket takes far more; 16 KB keeps a batch within a
# few packets of video and well inside loopback UDP (and within what one sendmsg copies cheaply).
MAX_DATAGRAM = 16 * 1024
MAX_CONTROL_FRAME = 1024 * 1024

_DATAGRAM = struct.Struct("!BB")
_ENTRY = struct.Struct("!HBBH")
_FRAME = struct.Struct("!I")


class RelayError(ValueError):
    """Bytes that are not the relay format; the message says what is wrong."""


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 µs more per packet
class RelayedPacket:
    stream: int
    seq: int
    timestamp: int
    marker: int
    payload_type: int
    ssrc: int
    payload: bytes
    audio_level: int | None = None  # V bit 0x80 | level, as the RFC 6464 extension carries it
    repair: bool = False


def encode_entry(stream: int, seq: int, timestamp: int, marker: int, payload_type: int, ssrc: int,
                 payload: bytes, audio_level: int | None = None, repair: bool = False) -> bytes:
    """One packet for a datagram: built once per packet, then appended to every receiver's batch."""
    rtp = build_header(False, marker, payload_type, seq, timestamp, ssrc) + payload
    flags = (FLAG_LEVEL if audio_level is not None else 0) | (FLAG_REPAIR if repair else 0)
    return _ENTRY.pack(stream, flags, audio_level or 0, len(rtp)) + rtp


def encode_datagram(entries: list[bytes]) -> bytes:
    if not 0 < len(entries) <= MAX_ENTRIES:
        raise RelayError(f"a datagram carries 1 to {MAX_ENTRIES} packets, not {len(entries)}")
    return _DATAGRAM.pack(VERSION, len(entries)) + b"".join(entries)


def decode_datagram(data: bytes) -> list[RelayedPacket]:
    if len(data) < _DATAGRAM.size:
        raise RelayError("datagram shorter than its 2-byte header")
    version, count = _DATAGRAM.unpack_from(data)
    if version != VERSION:
        raise RelayError(f"relay version {version}, expected {VERSION}")
    out = []
    i = _DATAGRAM.size
    for n in range(count):
        if i + _ENTRY.size > len(data):
            raise RelayError(f"entry {n} of {count} is cut off")
        stream, flags, level, length = _ENTRY.unpack_from(data, i)
        i += _ENTRY.size
        if length < 12 or i + length > len(data):
            raise RelayError(f"entry {n} claims {length} bytes of RTP, {len(data) - i} are left")
        rtp = data[i:i + length]
        i += length
        try:
            marker, payload_type, seq, timestamp, ssrc = parse_header(rtp)
        except ValueError as exc:
            raise RelayError(f"entry {n}: {exc}") from None
        if rtp[0] & 0x3F:
            raise RelayError(f"entry {n}: relayed RTP carries no padding, extension or CSRC")
        out.append(RelayedPacket(stream, seq, timestamp, marker, payload_type, ssrc, rtp[12:],
                                 level if flags & FLAG_LEVEL else None, bool(flags & FLAG_REPAIR)))
    if i != len(data):
        raise RelayError(f"{len(data) - i} bytes after the last entry")
    return out


class Batcher:
    """Collects entries for one receiver and cuts them into datagrams of at most `limit` bytes."""

    __slots__ = ("limit", "entries", "size")

    def __init__(self, limit: int = MAX_DATAGRAM):
        self.limit = limit
        self.entries: list[bytes] = []
        self.size = _DATAGRAM.size

    def add(self, entry: bytes) -> bytes | None:
        """Queue `entry`; returns a full datagram to send first when `entry` would not fit."""
        out = None
        if self.entries and (self.size + len(entry) > self.limit or len(self.entries) >= MAX_ENTRIES):
            out = self.take()
        self.entries.append(entry)
        self.size += len(entry)
        return out

    def take(self) -> bytes | None:
        if not self.entries:
            return None
        data = encode_datagram(self.entries)
        self.entries = []
        self.size = _DATAGRAM.size
        return data


# --- control frames ---------------------------------------------------------------------------

def encode_control(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_CONTROL_FRAME:
        raise RelayError(f"control message of {len(body)} bytes exceeds {MAX_CONTROL_FRAME}")
    return _FRAME.pack(len(body)) + body


class ControlDecoder:
    """Turns a byte stream into control messages; keeps a partial frame between calls. A frame that is
    not JSON breaks the stream (RelayError); a well-framed message that fails its schema is skipped and
    its problem kept in `rejected`, so one bad message never stops the ones after it."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.rejected: list[str] = []

    def feed(self, data: bytes) -> list[dict]:
        self._buffer += data
        out = []
        while len(self._buffer) >= _FRAME.size:
            (length,) = _FRAME.unpack_from(self._buffer)
            if length > MAX_CONTROL_FRAME:
                raise RelayError(f"control frame of {length} bytes exceeds {MAX_CONTROL_FRAME}")
            if len(self._buffer) < _FRAME.size + length:
                break
            body = bytes(self._buffer[_FRAME.size:_FRAME.size + length])
            del self._buffer[:_FRAME.size + length]
            message = decode_control_body(body)
            try:
                check_control(message)
            except RelayError as exc:
                self.rejected.append(str(exc))
                continue
            out.append(message)
        return out


def decode_control_body(body: bytes) -> dict:
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RelayError(f"control frame is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise RelayError("control frame must be a JSON object with a string 'type'")
    return message


# --- control message schemas ------------------------------------------------------------------

_STREAM = {"type": "integer", "minimum": 1, "maximum": 0xFFFF}
_REQUEST_ID = {"type": "integer", "minimum": 1}
_SESSION = {"type": "string", "minLength": 1, "maxLength": 64}
_TEXT = {"type": "string", "maxLength": 256}
_TRACKS = {"type": "object", "propertyNames": {"enum": ["audio", "video"]}, "additionalProperties": _STREAM}
_STRINGS = {"type": "array", "maxItems": 32, "items": _TEXT}
_SDP = {"type": "string", "maxLength": 64 * 1024}
_PIXELS = {"type": "integer", "minimum": 0, "maximum": 16384}
MAX_LAYERS = 8  # layers of one simulcast track the relay carries separately (more: the top one only)
# A classroom envelope is at most 16 KiB of UTF-8 (classroom/interactive/envelope.py); JSON escaping may
# double it. A longer message from a member is refused by the worker, as the classroom would refuse it.
MAX_DC_TEXT = 64 * 1024
_DC_TEXT = {"type": "string", "maxLength": MAX_DC_TEXT}
_CANDIDATES = {"type": "array", "maxItems": 64, "items": {"type": "object", "properties": {
    "candidate": {"type": "string", "maxLength": 1024}, "sdpMid": {"type": ["string", "null"]}},
    "required": ["candidate"]}}

_LAYER_STATES = {"type": "array", "minItems": 2, "maxItems": MAX_LAYERS, "items": {"enum": list(STATES)}}

# Main process (the relay's sending side) to worker, then worker to main. Documented in docs/scaling.md.
CONTROL_MESSAGES: dict[str, dict] = {
    "configure": {"properties": {"ice": {"type": "object", "properties": {
        "servers": _STRINGS, "addresses": _STRINGS, "username": _TEXT, "credential": _TEXT},
        "additionalProperties": False}, "policy": {"type": "object", "properties": {
            "max_legs": {"type": "integer", "minimum": 0}, "react": {"type": "boolean"}},
            "additionalProperties": False}}, "required": ["ice"]},
    "track": {"properties": {
        "stream": _STREAM, "track_id": _TEXT, "kind": {"enum": ["audio", "video"]}, "mime_type": _TEXT,
        "clock_rate": {"type": "integer", "minimum": 1}, "payload_type": {"type": "integer", "minimum": 0,
                                                                          "maximum": 127},
        "publisher": _TEXT, "source": _TEXT,
        # A simulcast track: its layers' streams low to high (this stream, the top layer, last) and rids.
        "layers": {"type": "array", "minItems": 2, "maxItems": MAX_LAYERS, "items": _STREAM},
        "rids": {"type": "array", "minItems": 2, "maxItems": MAX_LAYERS, "items": _TEXT},
        "states": _LAYER_STATES},
        "required": ["stream", "track_id", "kind", "mime_type", "clock_rate", "payload_type"],
        "dependentRequired": {"layers": ["rids"], "rids": ["layers"]}},
    "untrack": {"properties": {"stream": _STREAM}, "required": ["stream"]},
    # A simulcast layer's measured rate (bits/s), for a worker that has its track but is not sent this layer.
    "rate": {"properties": {"stream": _STREAM, "bitrate": {"type": "integer", "minimum": 0, "maximum": 10**10}},
             "required": ["stream", "bitrate"]},
    # A simulcast track's layers' liveness (sfu/liveness.py), low to high, whenever one changes.
    "layer_states": {"properties": {"stream": _STREAM, "states": _LAYER_STATES}, "required": ["stream", "states"]},
    "sr": {"properties": {"stream": _STREAM, "time": {"type": "number"},
                          "rtp": {"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF}},
           "required": ["stream", "time", "rtp"]},
    "whep": {"properties": {"id": _REQUEST_ID, "session": _SESSION, "identity": _TEXT,
                            "offer": _SDP, "tracks": _TRACKS},
             "required": ["id", "session", "offer", "tracks"]},
    "bind": {"properties": {"session": _SESSION, "tracks": _TRACKS}, "required": ["session", "tracks"]},
    "trickle": {"properties": {"id": _REQUEST_ID, "session": _SESSION, "candidates": _CANDIDATES,
                               "ufrag": _TEXT},
        "required": ["id", "session", "candidates"]},
    # An ICE restart: with `remote` the client's (WHEP PATCH), without it the worker offers (room protocol).
    "restart_ice": {"properties": {"id": _REQUEST_ID, "session": _SESSION, "remote": {
        "type": "object", "properties": {"ufrag": _TEXT, "pwd": {"type": ["string", "null"], "maxLength": 256},
                                         "candidates": _CANDIDATES, "end_of_candidates": {"type": "boolean"}},
        "required": ["ufrag", "candidates", "end_of_candidates"], "additionalProperties": False}},
        "required": ["id", "session"]},
    "close": {"properties": {"session": _SESSION}, "required": ["session"]},
    # A room participant's server-offered subscriber connection (docs/scaling.md).
    "subscribe": {"properties": {"session": _SESSION, "identity": _TEXT,
                                 "streams": {"type": "array", "maxItems": 256, "items": _STREAM}},
                  "required": ["session", "streams"]},
    "answer": {"properties": {"id": _REQUEST_ID, "session": _SESSION, "sdp": _SDP},
               "required": ["id", "session", "sdp"]},
    "resend": {"properties": {"session": _SESSION}, "required": ["session"]},
    # The size the participant's page shows a track at (the room protocol's video_size), for its allocator.
    "video_size": {"properties": {"session": _SESSION, "stream": _STREAM, "width": _PIXELS, "height": _PIXELS},
                   "required": ["session", "stream", "width", "height"]},
    # Who speaks, the active speaker first (the room's speaker detector), for the viewer's allocator.
    "speakers": {"properties": {"session": _SESSION, "participants": {"type": "array", "maxItems": 64,
                                                                       "items": _TEXT}},
                 "required": ["session", "participants"]},
    "trim": {"properties": {"id": _REQUEST_ID}, "required": ["id"]},
    "dc_send": {"properties": {"sessions": {"type": "array", "minItems": 1, "maxItems": 512, "items": _SESSION},
                               "text": _DC_TEXT}, "required": ["sessions", "text"]},
    "offer": {"properties": {"session": _SESSION, "sdp": _SDP, "mids": {
        "type": "array", "maxItems": 256, "items": {"type": "object", "properties": {
            "mid": _TEXT, "stream": _STREAM}, "required": ["mid", "stream"]}}},
        "required": ["session", "sdp", "mids"]},
    "dc_state": {"properties": {"session": _SESSION, "state": {"enum": ["open", "closed"]}},
                 "required": ["session", "state"]},
    "dc_message": {"properties": {"session": _SESSION, "text": _DC_TEXT}, "required": ["session", "text"]},
    "quality": {"properties": {"session": _SESSION, "stream": _STREAM,
                               "quality": {"enum": ["good", "poor", "bad"]},
                               "previous": {"enum": ["good", "poor", "bad"]},
                               "loss": {"type": "number", "minimum": 0}, "rtt": {"type": ["number", "null"]}},
                "required": ["session", "stream", "quality", "previous", "loss"]},
    "ready": {"properties": {"index": {"type": "integer"}, "pid": {"type": "integer"}}, "required": ["pid"]},
    "reply": {"properties": {"id": _REQUEST_ID, "ok": {"type": "boolean"}, "sdp": {"type": "string"},
                             "error": {"type": ["string", "null"]},
                             "code": {"enum": ["ice_restart_refused", "other_ice_session"]},
                             "ice": {"type": "object", "properties": {"ufrag": _TEXT, "pwd": _TEXT,
                                                                     "candidates": _STRINGS},
                                     "required": ["ufrag", "pwd", "candidates"]}}, "required": ["id", "ok"]},
    "pli": {"properties": {"stream": _STREAM}, "required": ["stream"]},
    # The layers of a simulcast track (indexes into its `layers`) this worker's legs forward or switch to.
    "wants": {"properties": {"stream": _STREAM, "layers": {
        "type": "array", "maxItems": MAX_LAYERS, "uniqueItems": True,
        "items": {"type": "integer", "minimum": 0, "maximum": MAX_LAYERS - 1}}}, "required": ["stream", "layers"]},
    "nack": {"properties": {"stream": _STREAM, "seqs": {
        "type": "array", "minItems": 1, "maxItems": 1024,
        "items": {"type": "integer", "minimum": 0, "maximum": 0xFFFF}}}, "required": ["stream", "seqs"]},
    "stats": {"properties": {"cpu": {"type": "number"}, "relay": {"type": "object"},
                             "sessions": {"type": "object"}}},
}
_VALIDATORS = {kind: Draft202012Validator({"type": "object", **schema})
               for kind, schema in CONTROL_MESSAGES.items()}


def check_control(message: dict) -> None:
    """Validate a control message against its type's schema; the error names the field."""
    validator = _VALIDATORS.get(message["type"])
    if validator is None:
        raise RelayError(f"unknown control message type {message['type']!r}")
    error = next(iter(validator.iter_errors(message)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "message"
        raise RelayError(f"control message {message['type']!r}: {where}: {error.message}")
