"""Carries classroom messages between participants and their InteractiveRoom.

Each participant is one room member with two transports: the subscriber connection's data channel
(label "stoa") when it is open, else the room WebSocket (`{"type":"data","payload":...}`). Messages from
either transport go through one ordered inbound queue, so a member's messages are handled in order.
"""

from __future__ import annotations

import logging

from aiohttp import web

from classroom.interactive import RoomRegistry
from classroom.sessions import session_key
from classroom.interactive.channel import ChannelMember
from classroom.interactive.envelope import Decoded, Outgoing, encode, encode_utf8
from sfu.aiortc_seam import DataChannelSender
from sfu.pool import RemoteChannel
from signaling.room import Participant, Room
from storage.store import STORE

logger = logging.getLogger(__name__)


def ws_frame(payload: bytes) -> bytes:
    """The room WebSocket's `{"type": "data", "payload": ...}` frame around an encoded classroom message."""
    return b'{"type":"data","payload":' + payload + b"}"


class RoomMember(ChannelMember):
    """The member the interactive layer sees for one participant. The bridge owns its data channel (the
    subscriber connection's "stoa" channel, attached on join and on every new subscriber connection):
    ChannelMember.send_now writes on it while it is open and keeps up, else `fallback` sends the message
    on the room WebSocket. A message fanned out to many members is encoded once (Outgoing)."""

    def __init__(self, participant: Participant, room):
        super().__init__(room, None, identity=participant.identity, name=participant.name,
                         role=participant.role, can_publish_data=participant.grants.can_publish_data)
        self.participant = participant
        self.grants = participant.grants
        self._channel_sender: DataChannelSender | None = None

    def use_channel(self, channel) -> None:
        super().use_channel(channel)
        # On a media worker the channel is a RemoteChannel: queued for the worker's control stream as text.
        self._channel_sender = None if isinstance(channel, RemoteChannel) else DataChannelSender(channel)

    def write(self, message: dict) -> None:
        sender = self._channel_sender
        if sender is None:
            self.channel.send(encode(message))
        else:
            sender.send(encode(message), encode_utf8(message))

    async def fallback(self, message: dict) -> None:
        frame = message.framed(ws_frame) if type(message) is Outgoing else ws_frame(encode_utf8(message))
        await self.participant.send(frame)


class ClassroomBridge:
    """app[DATA_HANDLER]: joins participants to their session's InteractiveRoom."""

    def __init__(self, registry: RoomRegistry):
        self.registry = registry
        self.edges = None  # signaling.edge_members.ClassroomRelay with `redis`: edge members' classroom

    @staticmethod
    def _session_key(room: Room, participant: Participant) -> tuple[str, dict]:
        session = participant.classroom_session
        return session_key(room.name, session), dict(session.features or {}) if session is not None else {}

    async def on_join(self, room: Room, participant: Participant) -> None:
        session_id, features = self._session_key(room, participant)
        if participant.edge_home is not None and self.edges is not None:
            iroom = self.edges.proxy(room, participant, session_id, features)  # the home's room, over Redis
        else:
            iroom = await self.registry.get(session_id, room.name, features)
        member = RoomMember(participant, iroom)
        participant.classroom_member = member
        self.on_subscriber(participant)
        await member.start()
        if participant.role != "viewer":
            await iroom.system_message(f"{participant.name} joined")  # an edge member's: said by the home

    def on_subscriber(self, participant: Participant) -> None:
        """The participant has a new subscriber connection (resubscribe): its member moves to that one's
        data channel."""
        member = participant.classroom_member
        if member is not None and participant.subscriber is not None \
                and participant.subscriber.data_channel is not None:
            member.use_channel(participant.subscriber.data_channel)

    async def on_message(self, room: Room, participant: Participant, payload: dict, size: int) -> None:
        """A classroom message from the room WebSocket: `payload` came from a frame of `size` bytes, already
        decoded; the interactive room validates it (once) in the member's inbound order."""
        member = participant.classroom_member
        if member is None:
            await participant.send({"type": "error", "code": "not_joined",
                                    "message": "classroom messages need a joined participant"})
            return
        member.feed(Decoded(payload, size))

    async def on_replaced(self, room: Room, participant: Participant) -> None:
        """A newer connection of the same identity took over: detach the old member without "X left"."""
        member = participant.classroom_member
        participant.classroom_member = None
        if member is not None:
            await member.stop()

    async def on_leave(self, room: Room, participant: Participant) -> None:
        member = participant.classroom_member
        if member is None:
            return
        await member.stop()
        if participant.role != "viewer" and not member.room.closed:
            await member.room.system_message(f"{participant.name} left")
        if not room.participants and not member.room.members:
            session_id, _ = self._session_key(room, participant)
            await self.registry.close_room(session_id)


# The classroom layer plugged into the room protocol (set by setup below). Absent: "data" messages are refused.
DATA_HANDLER = web.AppKey("data_handler", ClassroomBridge)


async def _bridge_ctx(app: web.Application):
    registry = RoomRegistry(app[STORE])
    app[DATA_HANDLER] = ClassroomBridge(registry)
    yield
    await registry.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_bridge_ctx)
