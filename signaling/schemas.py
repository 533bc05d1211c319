"""JSON Schemas of the room protocol's client messages, and the validator that names what is wrong."""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator

MAX_MESSAGE_BYTES = 128 * 1024  # larger messages get `too_large`; the connection stays up
MAX_FRAME_BYTES = 2 * MAX_MESSAGE_BYTES  # larger ones get `too_large`, then the socket closes (1009)
MAX_SDP = 64 * 1024

_ID = {"type": "string", "minLength": 1, "maxLength": 64}
_SDP = {"type": "string", "minLength": 1, "maxLength": MAX_SDP}

CLIENT_MESSAGES: dict[str, dict] = {
    "join": {
        "properties": {"token": {"type": "string", "minLength": 1, "maxLength": 4096},
                       "password": {"type": "string", "maxLength": 200},
                       # kept for a while after the socket drops, so a new socket can resume it
                       "resumable": {"type": "boolean"},
                       # the "resume" token of an earlier "joined": take that participant back
                       "resume": {"type": "string", "minLength": 1, "maxLength": 64},
                       # the node this page was on and can no longer reach (several nodes: docs/scaling.md)
                       "lost": {"type": "string", "minLength": 1, "maxLength": 128}},
        "required": ["token"],
    },
    "publish": {
        "properties": {
            "sdp": _SDP,
            "tracks": {
                "type": "array", "maxItems": 16,
                "items": {
                    "type": "object",
                    "properties": {
                        "mid": {"type": "string", "maxLength": 32},
                        "source": {"enum": ["camera", "microphone", "screen", "screen_audio"]},
                    },
                    "required": ["mid", "source"],
                    "additionalProperties": False,
                },
            },
            # the offer comes from a new peer connection: the server replaces the old one
            "reset": {"type": "boolean"},
        },
        "required": ["sdp"],
    },
    "answer": {"properties": {"sdp": _SDP}, "required": ["sdp"]},
    "ice": {
        "properties": {
            "target": {"enum": ["publisher", "subscriber"]},
            "candidate": {
                "type": "object",
                "properties": {
                    "candidate": {"type": "string", "maxLength": 1024},
                    "sdpMid": {"type": ["string", "null"], "maxLength": 32},
                    "sdpMLineIndex": {"type": ["integer", "null"], "minimum": 0, "maximum": 64},
                    "usernameFragment": {"type": ["string", "null"], "maxLength": 256},
                },
                "required": ["candidate"],
            },
        },
        "required": ["target", "candidate"],
    },
    "mute": {"properties": {"track_id": _ID, "muted": {"type": "boolean"}}, "required": ["track_id", "muted"]},
    "unpublish": {"properties": {"track_id": _ID}, "required": ["track_id"]},
    # A track the staff muted: ask them to allow unmuting it (they answer with moderate allow_unmute).
    "unmute_request": {"properties": {"track_id": _ID}, "required": ["track_id"]},
    # The size (device pixels) at which the page shows a video track; 0 x 0: not shown. Caps the
    # simulcast layer the viewer gets (docs/simulcast.md).
    "video_size": {"properties": {"track_id": _ID, "width": {"type": "integer", "minimum": 0, "maximum": 16384},
                                  "height": {"type": "integer", "minimum": 0, "maximum": 16384}},
                   "required": ["track_id", "width", "height"]},
    # Last-N (docs/simulcast.md): this viewer's number of speakers' cameras (0: every video; null: the
    # server's setting), and the participants whose cameras it gets whatever the N.
    "last_n": {"properties": {"n": {"type": ["integer", "null"], "minimum": 0, "maximum": 1000}}, "required": ["n"]},
    "pin": {"properties": {"participant": _ID}, "required": ["participant"]},
    "unpin": {"properties": {"participant": _ID}, "required": ["participant"]},
    "leave": {"properties": {}},
    # The subscriber connection failed: the server replaces it and offers every track again.
    "resubscribe": {"properties": {}},
    # The client's network changed: the server restarts ICE on the subscriber connection (a new offer).
    "restart_ice": {"properties": {}},
    # Staff only: mute stops forwarding a track, remove disconnects, ban also records the ban (session rooms).
    "moderate": {
        "properties": {"action": {"enum": ["mute", "remove", "ban", "allow_unmute"]}, "identity": _ID,
                       "track_id": _ID, "reason": {"type": "string", "maxLength": 500}},
        "required": ["action", "identity"],
    },
    "ping": {"properties": {"t": {"type": "number"}}},
    # Instructors and moderators start/stop recording the room (recorder/service.py).
    "recording": {"properties": {"action": {"enum": ["start", "stop"]}}, "required": ["action"]},
    # Classroom messages ride in "data"; their own schemas are checked by the classroom layer.
    "data": {"properties": {"payload": {"type": "object"}}, "required": ["payload"]},
}

_VALIDATORS = {
    name: Draft202012Validator({
        "type": "object",
        "properties": {"type": {"const": name}, "id": {"type": ["string", "integer"]}, **schema["properties"]},
        "required": ["type", *schema.get("required", [])],
        "additionalProperties": False,
    })
    for name, schema in CLIENT_MESSAGES.items()
}


class ProtocolError(Exception):
    """`extra`: fields the error message carries besides code and message (what a refusal screen needs:
    a scheduled start, a ban reason; docs/protocol.md, "Refused joins")."""

    def __init__(self, code: str, message: str, **extra):
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


def _reject_constant(name: str):
    # NaN and Infinity are not JSON; refused here, so no layer behind this one needs to look for them.
    raise ProtocolError("bad_json", f"message is not valid JSON: {name} is not allowed")


def parse_client_message(raw: str | bytes) -> dict:
    """Decode and validate one client message; raise ProtocolError naming the problem."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        msg = json.loads(raw, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"message is not valid JSON: {exc}"[:300]) from None
    if not isinstance(msg, dict):
        raise ProtocolError("invalid", "message must be a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid", "message lacks a string 'type'")
    validator = _VALIDATORS.get(kind)
    if validator is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}; expected one of "
                            + ", ".join(sorted(CLIENT_MESSAGES)))
    error = next(iter(sorted(validator.iter_errors(msg), key=lambda e: e.path)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(message)"
        raise ProtocolError("invalid", f"{kind}: {where}: {error.message[:200]}")
    return msg
