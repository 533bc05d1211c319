"""Interactive participants on several nodes (docs/scaling.md, "Classroom state across nodes").

A room-protocol participant the home would not take (`spread_members`, or the home at its `node_capacity`)
is served on the node it reached, the *edge*, as an *edge member*: its media comes from the room's cascade
relay (signaling/cascade.py, one relay per edge), and its classroom messages go to the home, whose
InteractiveRoom stays the only writer. Two Redis streams per node carry them:

- `{prefix}classroom:in:{home}`: what edges send a home: `join`, `msg` (a validated envelope), `leave`, and
  `moderated` (the answer to a moderation);
- `{prefix}classroom:out:{edge}`: what a home sends an edge: one entry per message and edge, `to` the keys of
  the edge members it is for (a broadcast is one entry, a quiz question or an error one per member), and the
  staff's `moderate` of an edge member (mute, allow_unmute, disconnect), which the edge does to its
  Participant as the home does to a local one (signaling/api/roomhooks.py) and answers.

Every entry carries its writer's id and sequence number: a retried XADD (Redis paused mid-command) may land
twice, and the reader drops what it has seen, so each message is delivered exactly once, in the order its
writer sent it. Each reader XREADs from its last id, so an outage delays messages and loses none.
Present only with `redis` set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections import deque
from typing import Any

from aiohttp import web
from jsonschema import Draft202012Validator, ValidationError
from redis.exceptions import RedisError

from classroom.errors import ClassroomError, NotFound, Unavailable
from classroom.interactive.channel import ChannelMember
from classroom.interactive.envelope import Decoded, ProtocolError, encode, error_message, parse_message
from sfu.subscriber import Subscriber
from shared.appkeys import SETTINGS
from signaling.classroom_bridge import DATA_HANDLER, RoomMember
from signaling.room import ROOMS, Participant, Room
from signaling.routing import CASCADE, CLUSTER

logger = logging.getLogger(__name__)

MAXLEN = 100_000         # entries a stream keeps (approximate trim): minutes of a busy room's traffic
BLOCK_MS = 1000          # an XREAD waits this long; under the client's 2 s socket timeout
BATCH = 500              # entries per XREAD / per pipelined XADD
PENDING_LIMIT = 50_000   # entries a writer holds while Redis is away; beyond it the oldest go (logged)
RETRY_S = 0.25
SWEEP_S = 2.0            # the home checks this often for edge members of nodes that are gone
ANSWER_S = 5.0           # the home waits this long for an edge's answer to a moderation

_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
# A home's `moderate` entry (out stream) and an edge's `moderated` answer (in stream).
MODERATE = Draft202012Validator({
    "type": "object",
    "properties": {"req": _NAME, "home": _NAME, "room": _NAME, "identity": _NAME,
                   "action": {"enum": ["mute", "allow_unmute", "disconnect"]},
                   "track_id": {"type": ["string", "null"], "maxLength": 200}, "by": {"type": "string"},
                   "reason": {"type": "string", "maxLength": 1000}, "kind": _NAME, "extra": {"type": "object"}},
    "required": ["req", "home", "room", "identity", "action"], "additionalProperties": False})
MODERATED = Draft202012Validator({
    "type": "object",
    "properties": {"op": {"const": "moderated"}, "req": _NAME,
                   "track_ids": {"type": "array", "items": {"type": "string"}},
                   "error": {"type": "object", "properties": {"code": _NAME, "message": {"type": "string"}},
                             "required": ["code", "message"]}},
    "required": ["op", "req"], "additionalProperties": False})
# An edge's refusal, raised on the home as the same error (by its code).
ERRORS = {cls.code: cls for cls in ClassroomError.__subclasses__()}


def in_key(prefix: str, node: str) -> str:
    return f"{prefix}classroom:in:{node}"


def out_key(prefix: str, node: str) -> str:
    return f"{prefix}classroom:out:{node}"


def spread_here(app: web.Application, home, grants) -> bool:
    """Whether a room-protocol join whose room lives on `home` is served here as an edge member. Teachers
    and moderators always go to the home: they publish, and run the room."""
    if CASCADE not in app or EDGE not in app or grants.is_moderator:
        return False
    settings = app[SETTINGS]
    return settings.spread_members or (home.capacity > 0 and home.participants >= home.capacity)


class StreamWriter:
    """The entries for one stream, XADDed in order by one task; kept and retried while Redis is away."""

    def __init__(self, redis, key: str, writer: str):
        self.redis, self.key, self.writer = redis, key, writer
        self.seq = 0
        self.pending: deque[list] = deque()  # [seq, text-before-seq-is-added, to-keys or None, message]
        self.dropped = 0
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    def add(self, message: Any, to: str | None = None) -> None:
        """Queue `message` (a dict) for the stream; with `to`, one more recipient of the same message object
        queued last (a fan-out: one entry for all of an edge's members)."""
        if to is not None and self.pending and self.pending[-1][3] is message and self.pending[-1][1] is None:
            self.pending[-1][2].append(to)
            return
        self.seq += 1
        self.pending.append([self.seq, None, [to] if to is not None else None, message])
        if len(self.pending) > PENDING_LIMIT:
            self.pending.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.error("classroom relay: %s holds %d entries for Redis; dropped %d, oldest first",
                             self.key, PENDING_LIMIT, self.dropped)
        self._wake.set()

    def _text(self, entry: list) -> str:
        if entry[1] is None:  # frozen once it is first sent: a retry sends the same entry
            head = {"w": self.writer, "s": entry[0]}
            if entry[2] is not None:
                head["to"] = entry[2]
            entry[1] = json.dumps(head, separators=(",", ":"))[:-1] + ',"m":' + encode(entry[3]) + "}"
        return entry[1]

    async def _run(self) -> None:
        failing = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                batch = [self.pending[i] for i in range(min(BATCH, len(self.pending)))]
                try:
                    pipe = self.redis.pipeline(transaction=False)
                    for entry in batch:
                        pipe.xadd(self.key, {"e": self._text(entry)}, maxlen=MAXLEN, approximate=True)
                    await pipe.execute()
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    if not failing:
                        logger.warning("classroom relay: writing %s failed (%r); %d entries kept, retrying",
                                       self.key, exc, len(self.pending))
                    failing = True
                    await asyncio.sleep(RETRY_S)
                    continue
                if failing:
                    logger.warning("classroom relay: %s written again", self.key)
                    failing = False
                sent = {id(entry) for entry in batch}  # add() may have dropped some meanwhile (over the limit)
                while self.pending and id(self.pending[0]) in sent:
                    self.pending.popleft()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class StreamReader:
    """Reads one stream from its last id, in order, each writer's entries once (by sequence number)."""

    def __init__(self, redis, key: str, handle):
        self.redis, self.key, self.handle = redis, key, handle
        self.last_id: str | None = None
        self.seen: dict[str, int] = {}  # writer -> highest sequence number handled
        self.duplicates = 0
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                if self.last_id is None:  # from now: the server's clock, so nothing written after start is missed
                    seconds, micros = await self.redis.time()
                    self.last_id = f"{int(seconds) * 1000 + int(micros) // 1000}-0"
                got = await self.redis.xread({self.key: self.last_id}, count=BATCH, block=BLOCK_MS)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                if not failing:
                    logger.warning("classroom relay: reading %s failed (%r); resuming from %s once Redis "
                                   "answers", self.key, exc, self.last_id)
                failing = True
                await asyncio.sleep(RETRY_S)
                continue
            if failing:
                logger.warning("classroom relay: reading %s again from %s", self.key, self.last_id)
                failing = False
            for _, entries in got or []:
                for entry_id, fields in entries:
                    self.last_id = entry_id
                    try:
                        entry = json.loads(fields["e"])
                        writer, seq = str(entry["w"]), int(entry["s"])
                    except (KeyError, ValueError, TypeError) as exc:
                        logger.warning("classroom relay: ignored a malformed entry %s of %s (%r)", entry_id,
                                       self.key, exc)
                        continue
                    if seq <= self.seen.get(writer, 0):
                        self.duplicates += 1  # a retried XADD that had landed
                        continue
                    self.seen[writer] = seq
                    try:
                        await self.handle(entry)
                    except Exception:
                        logger.exception("classroom relay: handling entry %s of %s failed", entry_id, self.key)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# ---- on the home ------------------------------------------------------------------------------------------

class RemoteMember(ChannelMember):
    """On the home: an edge member as its InteractiveRoom sees it. Inbound: the edge's `msg` entries,
    handled in order like a local member's; outbound: every message goes to the edge's stream."""

    def __init__(self, room, writer: StreamWriter, *, key: str, node: str, identity: str, name: str, role: str,
                 can_publish_data: bool):
        super().__init__(room, None, identity=identity, name=name, role=role, can_publish_data=can_publish_data)
        self.key, self.node, self.writer = key, node, writer

    def send_now(self, message: dict) -> bool:
        self.writer.add(message, to=self.key)
        return True


class HomeSide:
    """The home's end: reads its `in` stream, runs edge members in their sessions' InteractiveRooms."""

    def __init__(self, app: web.Application, relay: "ClassroomRelay"):
        self.app, self.relay = app, relay
        self.members: dict[str, tuple[RemoteMember, str]] = {}  # key -> (member, room name)
        self.answers: dict[str, asyncio.Future] = {}  # a moderation's request id -> its edge's answer
        self.reader = StreamReader(relay.redis, in_key(relay.prefix, relay.node_id), self._handle)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _handle(self, entry: dict) -> None:
        m = entry["m"]
        op, key = m.get("op"), str(m.get("key", ""))
        if op == "join":
            await self._join(m, key)
        elif op == "msg":
            found = self.members.get(key)
            if found is not None:
                found[0].feed(Decoded(m["data"], int(m.get("size", 0))))
        elif op == "leave":
            await self._leave(key)
        elif op == "moderated":
            try:
                MODERATED.validate(m)
            except ValidationError as exc:
                logger.warning("classroom relay: ignored a malformed moderation answer: %s", exc.message)
                return
            waiting = self.answers.get(m["req"])
            if waiting is not None and not waiting.done():
                waiting.set_result(m)
        else:
            logger.warning("classroom relay: ignored an entry with op %r", op)

    async def _join(self, m: dict, key: str) -> None:
        if key in self.members:
            return
        bridge = self.app[DATA_HANDLER]
        iroom = await bridge.registry.get(str(m["session"]), str(m["room"]), m.get("features") or {})
        node = str(m["node"])
        member = RemoteMember(iroom, self.relay.writer_to(node), key=key, node=node, identity=str(m["identity"]),
                              name=str(m.get("name") or m["identity"]), role=str(m["role"]),
                              can_publish_data=bool(m.get("pub", True)))
        self.members[key] = (member, str(m["room"]))
        await member.start()
        room = self.app[ROOMS].get_or_create(str(m["room"]))
        if room.to_edges is None:
            room.to_edges = lambda message, exclude, name=room.name: self.to_edges(name, message, exclude)
        for present in room.state()["participants"]:  # who is here, as the room protocol says it
            member.writer.add({"room_protocol": {"type": "participant_joined", "participant": present}}, to=key)
        described = {**m.get("describe", {}), "node": node}
        room.remote_participants[member.identity] = described
        await room.broadcast({"type": "participant_joined", "participant": described}, exclude=member.identity)
        if member.role != "viewer":
            await iroom.system_message(f"{member.name} joined")
        logger.info("%s (%s) joined room %s as an edge member on node %s", member.identity, member.role,
                    m["room"], node)

    async def moderate(self, room_name: str, identity: str, request: dict) -> dict:
        """The staff's moderation of an edge member (roomhooks.on_edge): sent to its edge node, which does it
        and answers; its refusal is raised as the same ClassroomError, no answer in ANSWER_S as Unavailable."""
        found = next(((k, m) for k, (m, name) in self.members.items()
                      if name == room_name and m.identity == identity), None)
        if found is None:
            raise NotFound(f"{identity} is not in room {room_name}")
        key, member = found
        req = uuid.uuid4().hex
        waiting = self.answers[req] = asyncio.get_running_loop().create_future()
        member.writer.add({"moderate": {"req": req, "home": self.relay.node_id, "room": room_name,
                                        "identity": identity, **request}}, to=key)
        try:
            answer = await asyncio.wait_for(waiting, ANSWER_S)
        except asyncio.TimeoutError:
            raise Unavailable(f"node {member.node}, which serves {identity}, did not answer within "
                              f"{ANSWER_S:g} s; try again") from None
        finally:
            self.answers.pop(req, None)
        if "error" in answer:
            raise ERRORS.get(answer["error"]["code"], ClassroomError)(answer["error"]["message"])
        return answer

    def to_edges(self, room_name: str, message: dict, exclude: str | None) -> None:
        """A room-protocol broadcast of the home's room (participant_joined, track_published, speakers...): to
        its edge members too, one entry per edge node."""
        wrapped = {"room_protocol": message}
        for key, (member, name) in self.members.items():
            if name == room_name and member.identity != exclude:
                member.writer.add(wrapped, to=key)

    async def _leave(self, key: str) -> None:
        found = self.members.pop(key, None)
        if found is None:
            return
        member, room_name = found
        await member.stop()
        room = self.app[ROOMS].rooms.get(room_name)
        if room is not None and room.remote_participants.pop(member.identity, None) is not None:
            await room.broadcast({"type": "participant_left", "identity": member.identity})
        if member.role != "viewer" and not member.room.closed:
            await member.room.system_message(f"{member.name} left")
        logger.info("%s left room %s (an edge member on node %s)", member.identity, room_name, member.node)

    async def _sweep(self) -> None:
        """Edge members of a node that is gone leave (their edge cannot say so)."""
        cluster = self.app[CLUSTER]
        while True:
            await asyncio.sleep(SWEEP_S)
            if not cluster.healthy:
                continue
            if {m.node for m, _ in self.members.values()} - set(cluster.peers):
                await cluster.others()  # read now: a node may have registered since the last refresh
            for key, (member, _) in list(self.members.items()):
                if member.node not in cluster.peers and cluster.healthy:
                    logger.warning("classroom relay: node %s is gone; its edge member %s leaves", member.node,
                                   member.identity)
                    await self._leave(key)

    async def close(self) -> None:
        self._sweeper.cancel()
        await asyncio.gather(self._sweeper, return_exceptions=True)
        await self.reader.close()
        for member, _ in list(self.members.values()):
            await member.stop()


# ---- on the edge ------------------------------------------------------------------------------------------

class HomeProxy:
    """On the edge: what an edge member's RoomMember takes for its InteractiveRoom. Its messages are
    validated here (a refusal is answered here) and go to the home in order; the home answers."""

    closed = False

    def __init__(self, relay: "ClassroomRelay", home_id: str, base: dict):
        self.relay, self.home_id, self.base = relay, home_id, base
        self.writer = relay.writer_to_home(home_id)
        self.member: RoomMember | None = None

    @property
    def members(self) -> list:
        return [self.member] if self.member is not None else []

    async def join(self, member: RoomMember) -> dict:
        self.member = member
        self.relay.local[self.base["key"]] = member
        self.writer.add({"op": "join", **self.base})
        return {}

    async def handle(self, member: RoomMember, raw: Any) -> None:
        try:
            envelope = parse_message(raw)
        except ProtocolError as exc:
            self.send_to(member, error_message(exc.code, exc.message, exc.msg_id))
            return
        data = {"v": envelope.v, "type": envelope.type, "data": envelope.data,
                **({"id": envelope.id} if envelope.id else {})}
        self.writer.add({"op": "msg", "key": self.base["key"], "data": data,
                         "size": raw.size if isinstance(raw, Decoded) else 0})

    def send_to(self, member: RoomMember, message: dict) -> None:
        asyncio.ensure_future(member.send(message))

    def detach(self, member: RoomMember) -> None:
        if self.relay.local.get(self.base["key"]) is member:
            del self.relay.local[self.base["key"]]
            self.writer.add({"op": "leave", "key": self.base["key"]})
        self.member = None

    async def system_message(self, text: str) -> None:
        """The home says "X joined/left" when the member's join or leave reaches it."""


class ClassroomRelay:
    """app[EDGE]: this node's classroom streams, as the home of some rooms and the edge of others."""

    def __init__(self, app: web.Application, redis, prefix: str, node_id: str):
        self.app, self.redis, self.prefix, self.node_id = app, redis, prefix, node_id
        self.writer_id = f"{node_id}:{os.getpid()}:{time.time_ns()}"  # a restarted node is a new writer
        self.writers: dict[str, StreamWriter] = {}
        self.local: dict[str, RoomMember] = {}  # edge member key -> its member here
        self.home = HomeSide(app, self)
        self.edge_reader = StreamReader(redis, out_key(prefix, node_id), self._deliver)

    def writer_to(self, node: str) -> StreamWriter:
        return self._writer(out_key(self.prefix, node))

    def writer_to_home(self, node: str) -> StreamWriter:
        return self._writer(in_key(self.prefix, node))

    def _writer(self, key: str) -> StreamWriter:
        writer = self.writers.get(key)
        if writer is None:
            writer = self.writers[key] = StreamWriter(self.redis, key, self.writer_id)
        return writer

    async def _deliver(self, entry: dict) -> None:
        message = entry["m"]
        if "moderate" in message:
            await self._moderate(message["moderate"], entry.get("to") or [])
            return
        members = [self.local[k] for k in entry.get("to") or () if k in self.local]
        if "room_protocol" in message:  # the home room's own broadcast, on the member's room WebSocket
            await asyncio.gather(*(m.participant.send(message["room_protocol"]) for m in members))
            return
        # Each member's ChannelMember.send: its data channel now, else its WebSocket; one slow socket is
        # bounded by the room protocol's own send.
        await asyncio.gather(*(m.send(message) for m in members), return_exceptions=True)

    async def _moderate(self, request: dict, keys: list) -> None:
        """The home's moderation of an edge member here: done to its Participant as the home does to a local
        one (the same messages and close), answered on the home's stream."""
        from signaling.api import roomhooks  # the one implementation of mute, allow_unmute, disconnect

        try:
            MODERATE.validate(request)
        except ValidationError as exc:
            logger.warning("classroom relay: ignored a malformed moderation: %s", exc.message)
            return
        answer: dict = {"op": "moderated", "req": request["req"]}
        room_name, identity, action = request["room"], request["identity"], request["action"]
        try:
            member = next((self.local[k] for k in keys if k in self.local), None)
            if member is None or member.participant.identity != identity:
                raise NotFound(f"{identity} is not in room {room_name}")
            by = request.get("by", "")
            if action == "mute":
                answer["track_ids"] = await roomhooks.mute(self.app, room_name, identity, request.get("track_id"),
                                                           by=by)
            elif action == "allow_unmute":
                answer["track_ids"] = await roomhooks.allow_unmute(self.app, room_name, identity,
                                                                   request.get("track_id"), by=by)
            elif not await roomhooks.disconnect(self.app, room_name, identity, request.get("reason", ""),
                                                kind=request.get("kind", "removed"), **request.get("extra", {})):
                raise NotFound(f"{identity} is not in room {room_name}")
        except ClassroomError as exc:
            answer["error"] = {"code": exc.code, "message": exc.message}
        logger.info("%s of edge member %s in room %s, from its home %s: %s", action, identity, room_name,
                    request["home"], answer.get("error", {}).get("message", "done"))
        self.writer_to_home(request["home"]).add(answer)

    def proxy(self, room: Room, participant: Participant, session_id: str, features: dict) -> HomeProxy:
        home = participant.edge_home
        return HomeProxy(self, home.id, {
            "key": f"{self.node_id}:{participant.session_id}", "node": self.node_id, "room": room.name,
            "session": session_id, "features": features, "identity": participant.identity,
            "name": participant.name, "role": participant.role, "pub": participant.grants.can_publish_data,
            "describe": participant.describe()})

    def status(self) -> dict:
        return {"edge_members": len(self.local), "home_members": len(self.home.members),
                "pending": {k: len(w.pending) for k, w in self.writers.items() if w.pending},
                "duplicates_dropped": self.edge_reader.duplicates + self.home.reader.duplicates}

    async def close(self) -> None:
        await self.edge_reader.close()
        await self.home.close()
        for writer in self.writers.values():
            await writer.close()


EDGE = web.AppKey("classroom_relay", ClassroomRelay)


async def start_subscriber(room: Room, participant: Participant, tracks: dict) -> None:
    """An edge member's subscriber connection: the data channel and the room's relayed broadcast, in this
    process (the relay's tracks live here, as for the edge's WHEP viewers)."""
    async def send_offer(sdp: str, offered: list[dict]) -> None:
        await participant.send({"type": "offer", "sdp": sdp, "tracks": offered})

    sub = participant.subscriber = Subscriber(participant.identity, room.peers, send_offer,
                                              on_quality=room.quality_listener(participant))
    if participant.grants.can_subscribe:
        for track in tracks.values():
            sub.add_track(track)
    await sub.negotiate()


def rebind(room: Room, tracks: dict) -> None:
    """The relayed broadcast changed: each edge member's connection follows (a new kind is offered)."""
    for p in room.participants.values():
        if p.edge_home is None or p.subscriber is None or not p.grants.can_subscribe:
            continue
        kinds = {d.kind for _, d in p.subscriber.legs}
        new = [t for kind, t in tracks.items() if kind not in kinds]
        for track in new:
            p.subscriber.add_track(track)
        p.subscriber.bind(tracks)
        if new:
            room.spawn(p.subscriber.negotiate())


async def _relay_ctx(app: web.Application):
    settings = app[SETTINGS]
    cluster = app[CLUSTER]
    relay = app[EDGE] = ClassroomRelay(app, cluster.redis, settings.redis_prefix, settings.node_id)
    app[DATA_HANDLER].edges = relay
    try:
        yield
    finally:
        await relay.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_relay_ctx)
