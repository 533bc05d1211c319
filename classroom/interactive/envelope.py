"""The versioned message envelope and its parser.

`parse_message` never raises anything but `ProtocolError`; the error carries a code from `ERROR_CODES`
and a message that names the problem (and, where it can be recovered, the client's message id so the
refusal can be matched to the request).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import jsonschema

from classroom.interactive import schemas

PROTOCOL_VERSION = 1
MAX_ENVELOPE_BYTES = 16 * 1024
MAX_CHAT_TEXT_BYTES = 4096
# The classroom's part of the one list in docs/protocol.md ("Error codes"), shared with the room protocol.
ERROR_CODES = ("bad_json", "unknown_type", "forbidden", "rate_limited", "too_large", "invalid", "not_found",
               "feature_disabled", "conflict", "internal")


class Outgoing(dict):
    """A message rendered once and fanned out to many members: its wire forms (the JSON text, its UTF-8
    bytes, a transport's framing of them) are built once, on first use, and shared by every recipient.
    Not to be mutated after delivery starts."""

    __slots__ = ("_text", "_utf8", "_frame", "_framed")

    def json(self) -> str:
        try:
            return self._text
        except AttributeError:
            self._text = text = json.dumps(self, ensure_ascii=False, separators=(",", ":"))
            return text

    def utf8(self) -> bytes:
        try:
            return self._utf8
        except AttributeError:
            self._utf8 = data = self.json().encode("utf-8")
            return data

    def framed(self, frame: Callable[[bytes], bytes]) -> bytes:
        """`frame(self.utf8())`, built once for the framing the transport names (one framing is cached)."""
        try:
            if self._frame is frame:
                return self._framed
        except AttributeError:
            pass
        data = frame(self.utf8())
        self._frame, self._framed = frame, data
        return data


def encode(message: dict) -> str:
    """A message's wire text (compact JSON, UTF-8 kept as is)."""
    if type(message) is Outgoing:
        return message.json()
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def encode_utf8(message: dict) -> bytes:
    """`encode(message)` as UTF-8 bytes (built once for an Outgoing)."""
    if type(message) is Outgoing:
        return message.utf8()
    return encode(message).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Decoded:
    """An inbound message a transport has already decoded from JSON text of at most `size` UTF-8 bytes
    (e.g. the payload of a room WebSocket frame of that size): validated like any input, not re-encoded
    to measure it. NaN and Infinity must have been refused by the transport's decoder."""

    obj: Any
    size: int


class ProtocolError(Exception):
    """A refused message; `code` is one of ERROR_CODES and `message` is safe to send to the client."""

    def __init__(self, code: str, message: str, msg_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.msg_id = msg_id

    def to_message(self) -> dict[str, Any]:
        return error_message(self.code, self.message, self.msg_id)


def error_message(code: str, message: str, msg_id: str | None = None) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": "error", "id": msg_id, "code": code, "message": message}


@dataclass(frozen=True)
class Envelope:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    v: int = PROTOCOL_VERSION


def _path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return "/" + "/".join(parts) if parts else "/"


def _best_error(validator: jsonschema.protocols.Validator, instance: Any) -> jsonschema.ValidationError | None:
    return jsonschema.exceptions.best_match(validator.iter_errors(instance))


def _describe(error: jsonschema.ValidationError, where: str) -> str:
    # jsonschema messages repeat the whole instance; cut them so an error stays short.
    text = error.message
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{where} at {_path(error)}: {text}"


def _recover_id(obj: Any) -> str | None:
    if isinstance(obj, dict):
        msg_id = obj.get("id")
        if isinstance(msg_id, str) and 0 < len(msg_id) <= schemas.MAX_ID_LENGTH:
            return msg_id
    return None


def _encoded_size(obj: Any) -> int:
    try:
        return len(json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise ProtocolError("invalid", f"message is not JSON-serializable: {exc}", _recover_id(obj)) from None


def parse_message(raw: str | bytes | bytearray | memoryview | dict | Decoded) -> Envelope:
    """Decode and validate one inbound message. Raises ProtocolError naming the problem."""
    if isinstance(raw, Decoded):
        obj: Any = raw.obj
        # The transport's frame bounds the size; only a frame near the limit is measured exactly.
        size = raw.size if raw.size <= MAX_ENVELOPE_BYTES else _encoded_size(obj)
        if size > MAX_ENVELOPE_BYTES:
            raise ProtocolError("too_large", f"message is {size} bytes; the limit is {MAX_ENVELOPE_BYTES}",
                                _recover_id(obj))
    elif isinstance(raw, dict):
        obj = raw
        size = _encoded_size(raw)
        if size > MAX_ENVELOPE_BYTES:
            raise ProtocolError("too_large", f"message is {size} bytes; the limit is {MAX_ENVELOPE_BYTES}",
                                _recover_id(raw))
    else:
        if isinstance(raw, (bytearray, memoryview)):
            raw = bytes(raw)
        if not isinstance(raw, (str, bytes)):
            raise ProtocolError("invalid", f"message must be text or bytes, not {type(raw).__name__}")
        size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
        if size > MAX_ENVELOPE_BYTES:
            raise ProtocolError("too_large", f"message is {size} bytes; the limit is {MAX_ENVELOPE_BYTES}")
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError("bad_json", f"message is not valid UTF-8 (byte {exc.start})") from None
        try:
            obj = json.loads(raw, parse_constant=_reject_constant)
        except ProtocolError:
            raise
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("bad_json", f"message is not valid JSON: {exc}"[:300]) from None
    msg_id = _recover_id(obj)
    error = _best_error(schemas.ENVELOPE_VALIDATOR, obj)
    if error is not None:
        raise ProtocolError("invalid", _describe(error, "envelope"), msg_id)
    msg_type = obj["type"]
    validator = schemas.DATA_VALIDATORS.get(msg_type)
    if validator is None:
        raise ProtocolError("unknown_type", f"unknown message type {msg_type!r}", msg_id)
    data = obj.get("data", {})
    error = _best_error(validator, data)
    if error is not None:
        raise ProtocolError("invalid", _describe(error, f"{msg_type} data"), msg_id)
    if msg_type in ("chat.send", "chat.edit"):
        size = len(data["text"].encode("utf-8", "surrogatepass"))
        if size > MAX_CHAT_TEXT_BYTES:
            raise ProtocolError("too_large", f"chat text is {size} bytes; the limit is {MAX_CHAT_TEXT_BYTES}",
                                msg_id)
    _check_text_encodable(data, msg_id)
    return Envelope(type=msg_type, data=data, id=msg_id, v=obj["v"])


def _reject_constant(name: str) -> Any:
    raise ProtocolError("bad_json", f"message is not valid JSON: {name} is not allowed")


def _check_text_encodable(value: Any, msg_id: str | None) -> None:
    # Lone surrogates (e.g. "\ud800") parse as JSON but cannot be stored as UTF-8 text.
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError("invalid", "text contains an unpaired surrogate code point", msg_id) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text_encodable(key, msg_id)
            _check_text_encodable(item, msg_id)
    elif isinstance(value, list):
        for item in value:
            _check_text_encodable(item, msg_id)
