"""The chat path's seams, without a server: a fan-out encoded once, a WebSocket payload validated once,
the bridge's member writing on its data channel while it keeps up and on the room WebSocket otherwise."""

from __future__ import annotations

import json

import pytest

from classroom.interactive.channel import MAX_BUFFERED_BYTES
from classroom.interactive.envelope import (MAX_ENVELOPE_BYTES, Decoded, Outgoing, ProtocolError, encode,
                                           encode_utf8, parse_message)
from sfu.pool import RemoteChannel
from shared.auth import Grants
from signaling.classroom_bridge import RoomMember, ws_frame
from signaling.room import Participant
from signaling.schemas import ProtocolError as RoomProtocolError
from signaling.schemas import parse_client_message

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)


def test_an_outgoing_message_is_encoded_once_for_every_transport():
    out = Outgoing({"v": 1, "type": "chat.message", "data": {"text": "grüß dich"}})
    assert out.json() is out.json() and encode(out) is out.json()
    assert out.utf8() is out.utf8() and encode_utf8(out) is out.utf8()
    assert out.utf8() == out.json().encode("utf-8") and "ü" in out.json()  # UTF-8 kept, not \u-escaped
    frame = out.framed(ws_frame)
    assert out.framed(ws_frame) is frame
    assert json.loads(frame) == {"type": "data", "payload": dict(out)}
    plain = {"v": 1, "type": "ack", "id": "c-1", "data": {}}  # one recipient's message: encoded on the spot
    assert encode_utf8(plain) == encode(plain).encode("utf-8")


def test_a_decoded_payload_is_measured_by_its_frame_not_encoded_again():
    env = {"v": 1, "type": "chat.send", "id": "c-1", "data": {"text": "hi"}}
    assert parse_message(Decoded(env, 60)).data == {"text": "hi"}
    # A frame over the limit bounds nothing: the payload itself is measured, and this one fits.
    assert parse_message(Decoded(env, MAX_ENVELOPE_BYTES + 100)).id == "c-1"
    big = {"v": 1, "type": "chat.send", "id": "c-2", "data": {"text": "x" * 17000}}
    with pytest.raises(ProtocolError) as exc:
        parse_message(Decoded(big, MAX_ENVELOPE_BYTES + 17100))
    assert exc.value.code == "too_large" and exc.value.msg_id == "c-2" and str(MAX_ENVELOPE_BYTES) in exc.value.message
    # Still validated like any input.
    with pytest.raises(ProtocolError) as exc:
        parse_message(Decoded({"v": 1, "type": "chat.send", "data": {}}, 40))
    assert exc.value.code == "invalid" and "text" in exc.value.message


def test_the_room_websocket_refuses_nan_so_the_classroom_need_not_look():
    for raw in ('{"type": "ping", "t": NaN}', '{"type": "data", "payload": {"v": 1, "x": Infinity}}'):
        with pytest.raises(RoomProtocolError) as exc:
            parse_client_message(raw)
        assert exc.value.code == "bad_json" and "not allowed" in exc.value.message


class Link:
    """What a RemoteChannel needs of a WorkerLink: the texts it queues per session."""

    def __init__(self):
        self.sent: list[tuple[str, str]] = []

    def send_data(self, session_id: str, text: str) -> None:
        self.sent.append((session_id, text))


def member(identity: str) -> tuple[RoomMember, list]:
    frames: list = []

    async def send(message) -> None:
        frames.append(message)

    participant = Participant(Grants(identity=identity, room="r", role="student"), transport="ws", send=send)
    return RoomMember(participant, room=None), frames


async def test_the_member_uses_its_channel_while_it_keeps_up_else_the_websocket():
    out = Outgoing({"v": 1, "type": "chat.message", "data": {"id": 1, "text": "hello"}})
    ann, ann_frames = member("ann")
    bob, bob_frames = member("bob")
    # No channel yet: the writer task's send goes to the room WebSocket, the same bytes for everyone.
    assert not ann.send_now(out)
    await ann.send(out)
    await bob.send(out)
    assert ann_frames == bob_frames == [out.framed(ws_frame)] and ann_frames[0] is bob_frames[0]
    # A per-member message (an ack) is framed for that member alone.
    await ann.send({"v": 1, "type": "ack", "id": "a-1", "data": {"message_id": 1}})
    assert json.loads(ann_frames[-1])["payload"]["id"] == "a-1"

    link = Link()
    channel = RemoteChannel(link, "sess-ann")
    ann.use_channel(channel)
    assert not ann.send_now(out)  # still connecting
    channel.readyState = "open"
    assert ann.send_now(out)  # open: written synchronously, the text built once
    assert link.sent == [("sess-ann", out.json())] and link.sent[0][1] is out.json()
    channel.bufferedAmount = MAX_BUFFERED_BYTES + 1  # too far behind: the WebSocket takes over
    assert not ann.send_now(out)
    await ann.send(out)
    assert len(link.sent) == 1 and ann_frames[-1] is out.framed(ws_frame)
    channel.bufferedAmount = 0
    channel.readyState = "closed"
    await ann.send(out)
    assert len(link.sent) == 1 and len(ann_frames) == 4
