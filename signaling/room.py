"""Rooms and participants: who is in a room, what they publish, and who gets offered what."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from aiohttp import web

from sfu.downtrack import OnQuality
from sfu.lastn import SpeakerOrder, Video, select_forwarded
from sfu.overload import LoadMonitor
from sfu.peer import PeerFactory
from sfu.pool import RemoteRoomSubscriber, WorkerPool
from sfu.publisher import Publisher
from sfu.quality import LEVELS, QualityChange
from sfu.speakers import LevelRing, SpeakerDetector
from sfu.subscriber import Subscriber
from sfu.dynacast import Dynacast
from sfu.uptrack import UpTrack
from shared.auth import Grants
from shared.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from classroom.interactive.channel import ChannelMember
    from storage.sessions import SessionRecord

logger = logging.getLogger(__name__)

Send = Callable[[dict | bytes], Awaitable[None]]  # bytes: a message encoded as UTF-8 JSON

SPEAKERS_TICK = 0.2  # s between two looks at the audio levels
DYNACAST_TICK = 1.0  # s between two looks at which simulcast layers viewers need


class RoomFull(Exception):
    pass


REPLACED = "replaced by a newer connection"
CLOSE_REPLACED = 4001  # WebSocket close code for a session replaced by a reconnect (4000-4999: private use)


class ServerAtCapacity(RoomFull):
    """This process forwards all it can: refused before anything joined (WHIP/WHEP 503, room_full)."""


class Participant:
    """One joined client: a WebSocket user, a WHIP publisher or a WHEP viewer."""

    def __init__(self, grants: Grants, *, transport: str, send: Send | None = None,
                 disconnect: Callable[[dict, int], Awaitable[None]] | None = None):
        self.grants = grants
        self.identity = grants.identity
        self.name = grants.name
        self.role = grants.role
        self.transport = transport  # "ws" | "whip" | "whep"
        self.session_id = uuid.uuid4().hex
        self._send = send
        self._disconnect = disconnect
        self.publisher: Publisher | None = None
        self.subscriber: Subscriber | None = None
        self.joined_at = time.time()
        # Set by the transport that joined it (signaling/ws.py, whip.py): the session row, None without one.
        self.classroom_session: SessionRecord | None = None
        # Set by signaling/classroom_bridge.py while the participant is in its session's classroom.
        self.classroom_member: ChannelMember | None = None
        # Set when a newer connection of the same identity took this one's place in the room.
        self.replaced = False
        # Resume (docs/protocol.md): a resumable participant whose socket drops stays for a grace period.
        self.resumable = False
        # (the grace timer, the leave it runs): set while its socket is away (Room.suspend).
        self.suspended: tuple[asyncio.Task, Callable[[], Awaitable[None]]] | None = None
        # Sources the staff muted (source -> who): the participant cannot unmute them, a new track of
        # that source starts muted, until the staff allow it (moderate allow_unmute). The room keeps it
        # per identity (Room.join), so a reload or a rejoin does not lift it.
        self.locked: dict[str, str] = {}
        # Last-N (sfu/lastn.py): this viewer's own N (None: the room's), whom it pinned, and the video track
        # ids it was last told are forwarded (`forwarded`).
        self.last_n: int | None = None
        self.pins: set[str] = set()
        self.forwarded: list[str] | None = None
        # The room's home node (a cluster Node) when this participant is an edge member here: its media comes
        # from the room's relay and its classroom messages go to the home (signaling/edge_members.py).
        self.edge_home = None

    def owned_by(self, send: Send) -> bool:
        """Whether the socket whose sender is `send` still speaks for this participant."""
        return self._send is send

    def rebind(self, send: Send, disconnect: Callable[[dict, int], Awaitable[None]] | None) -> None:
        """A new socket takes this participant over (resume); a pending leave is called off."""
        self._send, self._disconnect = send, disconnect
        if self.suspended is not None:
            self.suspended[0].cancel()
            self.suspended = None

    async def send(self, message: dict | bytes) -> None:
        """`message`: a dict, or a message already encoded as UTF-8 JSON (sent as a text frame)."""
        if self._send is None:
            return
        try:
            await self._send(message)
        except Exception as exc:  # a dead socket must not break the room
            logger.debug("send to %s failed: %s", self.identity, exc)

    async def disconnect(self, reason: str, code: int = 1000, *, kind: str = "closed", **extra) -> None:
        """Tell the client why, then close its signaling connection (server shutdown, removal, replaced);
        `code` is the WebSocket close code, `reason` also its close reason; `kind` (the `left` message's
        `code`: removed, banned, ended, replaced, closed) and `extra` go in the `left` message."""
        self.resumable = False  # removed on purpose: its socket's end is a leave, not a pause
        note = {"type": "left", "code": kind, "reason": reason, **extra}
        if self._disconnect is None:
            await self.send(note)
            return
        try:
            await self._disconnect(note, code)
        except Exception as exc:
            logger.debug("closing %s failed: %s", self.identity, exc)

    def describe(self) -> dict:
        tracks = list(self.publisher.tracks.values()) if self.publisher else []
        return {
            "identity": self.identity,
            "name": self.name,
            "role": self.role,
            "transport": self.transport,
            "tracks": [t.describe() for t in tracks],
            "muted_by_staff": sorted(self.locked),
        }

    async def close(self) -> None:
        if self.publisher is not None:
            await self.publisher.close()
        if self.subscriber is not None:
            await self.subscriber.close()


@dataclass
class ClosedTotals:
    """What tracks and subscriber connections that are gone had counted: /metrics adds it to the live
    objects' counters, so its Prometheus counters never go down when a track or a viewer goes."""

    received: int = 0      # RTP packets from publishers
    plis: int = 0          # keyframe requests sent to publishers
    sent: int = 0          # RTP packets forwarded to subscribers
    retransmits: int = 0
    nack_misses: int = 0

    def add_track(self, track: UpTrack) -> None:
        self.received += track.packets_received
        self.plis += track.plis_sent

    def add_legs(self, subscriber) -> None:
        """A closed subscriber connection's legs (a media worker's legs are counted by the worker)."""
        if isinstance(subscriber, Subscriber):
            for _, leg in subscriber.legs:
                self.sent += leg.packets_sent
                self.retransmits += leg.retransmits
                self.nack_misses += leg.nack_misses


class Room:
    def __init__(self, name: str, peers: PeerFactory, *, max_participants: int = 500,
                 on_empty: Callable[["Room"], None] | None = None,
                 on_leg_quality: Callable[[QualityChange], None] | None = None,
                 closed: ClosedTotals | None = None, workers=None, clock: Clock = SYSTEM_CLOCK,
                 last_n: int = 0):
        self.name = name
        self.last_n = last_n  # videos each viewer is sent unless it asks otherwise (0: all)
        self.speaker_order = SpeakerOrder()
        self.clock = clock  # the resume grace sleeps on it
        self.closed = closed if closed is not None else ClosedTotals()
        self._on_leg_quality = on_leg_quality
        self.peers = peers
        self.max_participants = max_participants
        self.participants: dict[str, Participant] = {}
        self.tasks: set[asyncio.Task] = set()
        self._on_empty = on_empty
        self.created_at = time.time()
        self.track_listeners: list[Callable[[str, UpTrack], None]] = []
        self.empty_listeners: list[Callable[[], None]] = []  # told when the last participant has left
        self.speakers = SpeakerDetector()
        self._speakers_task: asyncio.Task | None = None
        self.locks: dict[str, dict[str, str]] = {}  # identity -> the sources the staff muted (Participant.locked)
        self.workers = workers  # the WorkerPool when media workers run
        # On a room's home: its edge members on other nodes, identity -> describe() with `node` (edge_members.py).
        self.remote_participants: dict[str, dict] = {}
        self.to_edges: Callable[[dict, str | None], None] | None = None  # ... and what tells them the broadcasts

    # -- helpers ----------------------------------------------------------------------------

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("room %s task failed", self.name, exc_info=task.exception())

    async def broadcast(self, message: dict, *, exclude: str | None = None) -> None:
        if self.to_edges is not None:
            self.to_edges(message, exclude)
        await asyncio.gather(*(p.send(message) for i, p in list(self.participants.items())
                               if i != exclude and p.transport == "ws"))

    def tracks(self) -> list[UpTrack]:
        return [t for p in self.participants.values() if p.publisher for t in p.publisher.tracks.values()]

    # -- what the recorder watches (recorder.rooms.RecordedRoom) ------------------------------

    def is_empty(self) -> bool:
        return not self.participants

    def display_name(self, identity: str) -> str | None:
        participant = self.participants.get(identity)
        return participant.name if participant is not None else None

    def watch_tracks(self, listener: Callable[[str, UpTrack], None]) -> Callable[[], None]:
        self.track_listeners.append(listener)
        return lambda: self.track_listeners.remove(listener) if listener in self.track_listeners else None

    def watch_empty(self, listener: Callable[[], None]) -> Callable[[], None]:
        self.empty_listeners.append(listener)
        return lambda: self.empty_listeners.remove(listener) if listener in self.empty_listeners else None

    def _emptied(self) -> None:
        for listener in tuple(self.empty_listeners):
            listener()
        if self._on_empty is not None:
            self._on_empty(self)

    def state(self) -> dict:
        return {
            "name": self.name,
            "participants": [p.describe() for p in self.participants.values()]
            + [d for i, d in self.remote_participants.items() if i not in self.participants],
            "tracks": [t.describe() for t in self.tracks()],
        }

    # -- membership -------------------------------------------------------------------------

    async def join(self, participant: Participant) -> Participant | None:
        """Add `participant`; returns the participant of the same identity it replaced, if any."""
        previous = self.participants.get(participant.identity)
        if previous is None and len(self.participants) >= self.max_participants:
            raise RoomFull(f"room {self.name} is full ({self.max_participants} participants)")
        load = self.peers.load
        # Publishers (the teacher) are always let in; a reconnect replaces its own legs.
        if previous is None and load is not None and not participant.grants.can_publish:
            refused = load.admit()
            if refused is None and self.workers is not None:
                refused = self.workers.refusal()  # they would carry its media
                if refused is not None:
                    load.refuse(refused)
            if refused is not None:
                if not self.participants:
                    self._emptied()  # a room made for this join alone does not linger
                raise ServerAtCapacity(f"{refused}; try again later")
        # Taking the seat first: the room is never empty in between (which would drop it).
        self.participants[participant.identity] = participant
        participant.locked = self.locks.setdefault(participant.identity, {})
        if previous is not None:
            # Same identity again: a reconnect replaces the old session. It is out of the room at once, so
            # it gets no more room events; its end is not announced (the identity is still here); its
            # connection is told why and closed.
            previous.replaced = True
            if previous.suspended is not None:  # it was away, kept for a resume: the new connection wins
                previous.suspended[0].cancel()
                previous.suspended = None
            await self._retire(previous, notify=False)
            self.spawn(previous.disconnect(REPLACED, CLOSE_REPLACED, kind="replaced"))
        if participant.transport == "ws":
            await self.broadcast({"type": "participant_joined", "participant": participant.describe()},
                                 exclude=participant.identity)
        logger.info("%s (%s) joined room %s over %s", participant.identity, participant.role,
                    self.name, participant.transport)
        return previous

    async def start_subscriber(self, participant: Participant) -> None:
        """Open the server-offered connection: a data channel and every track already published."""
        async def send_offer(sdp: str, tracks: list[dict]) -> None:
            await participant.send({"type": "offer", "sdp": sdp, "tracks": tracks})

        on_quality = self.quality_listener(participant)
        sub = None
        if self.workers is not None:  # media worker processes carry it (docs/scaling.md)
            sub = self.workers.room_subscriber(participant.identity, room=self.name,
                                               session_id=participant.session_id, send_offer=send_offer,
                                               on_quality=on_quality)
        if sub is None:
            sub = Subscriber(participant.identity, self.peers, send_offer, on_quality=on_quality)
        participant.subscriber = sub
        if participant.grants.can_subscribe:
            for track in self.tracks():
                if track.publisher_id != participant.identity:
                    sub.add_track(track)
        self.select_videos(participant)  # before the first packet: a leg out of the N never starts
        await sub.negotiate()

    def quality_listener(self, participant: Participant) -> OnQuality:
        """What a participant's legs call when its connection quality changes: /metrics counts it and
        a WebSocket participant's page hears of it."""
        def changed(downtrack, change: QualityChange) -> None:
            if self._on_leg_quality is not None:
                self._on_leg_quality(change)
            if participant.transport == "ws":
                self.spawn(participant.send({
                    "type": "connection_quality", "track_id": downtrack.track_id, "quality": change.quality,
                    "previous": change.previous, "loss": change.loss, "rtt": change.rtt}))
        return changed

    def suspend(self, participant: Participant, grace: float, expire: Callable[[], Awaitable[None]]) -> None:
        """The participant's socket dropped: keep it (tracks, subscriptions, classroom state, place) for
        `grace` seconds for a resume, then run `expire` (the normal leave)."""
        participant._send = None  # messages meanwhile are dropped; a pending offer is sent again on resume
        participant._disconnect = None
        if participant.suspended is not None:
            participant.suspended[0].cancel()

        async def expired() -> None:
            await self.clock.sleep(grace)
            participant.suspended = None  # from here a resume or a leave no longer calls this leave off
            self.spawn(expire())

        participant.suspended = (asyncio.get_running_loop().create_task(expired()), expire)
        logger.info("%s's socket dropped in room %s; kept %.0f s for a resume", participant.identity,
                    self.name, grace)

    async def restart_subscriber(self, participant: Participant) -> None:
        """Replace the participant's subscriber connection (its ICE failed) with a new one offering
        every track; the transport then moves the classroom member to the new data channel
        (ClassroomBridge.on_subscriber)."""
        if participant.subscriber is not None:
            await participant.subscriber.close()
            self.closed.add_legs(participant.subscriber)
        await self.start_subscriber(participant)

    async def replace_publisher(self, participant: Participant) -> None:
        """The client publishes from a new peer connection: the old one and its tracks go."""
        if participant.publisher is not None:
            old, participant.publisher = participant.publisher, None
            await old.close()

    async def leave(self, identity: str, *, session_id: str | None = None, notify: bool = True) -> None:
        participant = self.participants.get(identity)
        if participant is None or (session_id is not None and participant.session_id != session_id):
            return
        if participant.suspended is not None:  # replaced or removed while away: its leave runs now
            timer, expire = participant.suspended
            timer.cancel()
            participant.suspended = None
            self.spawn(expire())
        del self.participants[identity]
        await self._retire(participant, notify=notify)

    async def _retire(self, participant: Participant, *, notify: bool) -> None:
        """What leaving does once `participant` is out of `participants`."""
        identity = participant.identity
        if participant.publisher is not None:
            participant.publisher.unpublish_all()
        if not participant.replaced:
            self.speaker_order.remove(identity)
        if notify and participant.transport == "ws":
            await self.broadcast({"type": "participant_left", "identity": identity})
        await participant.close()
        self.closed.add_legs(participant.subscriber)
        logger.info("%s left room %s%s", identity, self.name, " (replaced)" if participant.replaced else "")
        if not self.participants:
            self._emptied()

    # -- publishing -------------------------------------------------------------------------

    def publisher_for(self, participant: Participant) -> Publisher:
        if participant.publisher is None:
            participant.publisher = Publisher(
                participant.identity, self.peers,
                on_published=self._on_published, on_unpublished=self._on_unpublished,
            )
        return participant.publisher

    def _on_published(self, track: UpTrack) -> None:
        owner = self.participants.get(track.publisher_id)
        if owner is not None and track.source in owner.locked:
            track.muted = True  # muted by the staff: stopping and starting the source does not unmute it
        if track.kind == "video":
            self.speaker_order.add(track.publisher_id)
        for p in self.participants.values():
            if (p.transport == "ws" and p.identity != track.publisher_id and p.subscriber is not None
                    and p.grants.can_subscribe):
                p.subscriber.add_track(track)
                self.spawn(p.subscriber.negotiate())
        self.spawn(self.broadcast({"type": "track_published", "track": track.describe()}))
        if track.kind == "audio":
            ring = LevelRing()
            track.add_sink(ring)
            self.speakers.add_track(track.track_id, track.publisher_id, ring)
            if self._speakers_task is None or self._speakers_task.done():
                self._speakers_task = asyncio.ensure_future(self._watch_speakers())
        if track.layers:
            self.spawn(self._dynacast(track))
        if track.kind == "video":
            self.select_videos()
        self.rebind_broadcast_viewers()
        for listener in self.track_listeners:
            listener("published", track)

    def _on_unpublished(self, track: UpTrack) -> None:
        self.closed.add_track(track)
        for p in self.participants.values():
            if p.subscriber is not None and p.subscriber.remove_track(track.track_id):
                self.spawn(p.subscriber.negotiate())
        self.spawn(self.broadcast({"type": "track_unpublished", "track_id": track.track_id,
                                   "participant": track.publisher_id}))
        self.speakers.remove_track(track.track_id)
        if track.kind == "video":
            self.select_videos()  # a place among the N is free
        self.rebind_broadcast_viewers(exclude=track)
        for listener in self.track_listeners:
            listener("unpublished", track)

    async def _dynacast(self, track: UpTrack) -> None:
        """Tell the publisher which simulcast layers of `track` to run (sfu/dynacast.py), until it ends."""
        dynacast = Dynacast(track)
        loop = asyncio.get_running_loop()
        while not track.closed:
            await asyncio.sleep(DYNACAST_TICK)
            active = dynacast.update(loop.time())
            states = dynacast.states(loop.time())
            if states is not None and not track.closed:
                self._layer_states(track, states)
            owner = self.participants.get(track.publisher_id)
            if active is not None and owner is not None and not track.closed:
                logger.info("dynacast: %s runs layers %s of %s", track.publisher_id, active, track.track_id)
                await owner.send({"type": "layers", "track_id": track.track_id, "active": active})

    def _layer_states(self, track: UpTrack, states: list[str]) -> None:
        """A layer of `track` started or stopped delivering (sfu/liveness.py): its viewers' allocators
        choose again, here and on media workers."""
        logger.info("layers of %s: %s", track.track_id, " ".join(f"{r}:{s}" for r, s in zip(track.rids, states)))
        for sink in track.sinks:
            tell = getattr(sink, "layer_states", None)
            if tell is not None:
                tell(states)
        for p in self.participants.values():
            sub = p.subscriber
            if sub is not None and not isinstance(sub, RemoteRoomSubscriber) and sub.downtrack(track.track_id) is not None:
                sub.allocate()

    async def _watch_speakers(self) -> None:
        """Tell the room who speaks, loudest first, whenever that changes (debounced by the detector).
        Ends with the last audio track; the next one starts it again."""
        while len(self.speakers):
            while len(self.speakers):
                await asyncio.sleep(SPEAKERS_TICK)
                ranking = self.speakers.update(time.time())
                if ranking is not None:
                    self._speakers_to_allocators([s.key for s in ranking])
                    if self.speaker_order.spoke([s.key for s in ranking]):
                        self.select_videos()
                    await self.broadcast({"type": "speakers", "speakers": [
                        {"identity": s.key, "level": s.level} for s in ranking]})
            if self.speakers.forget():  # the last audio track went while someone was listed
                self._speakers_to_allocators([])
                await self.broadcast({"type": "speakers", "speakers": []})

    def _speakers_to_allocators(self, keys: list[str]) -> None:
        """The active speaker's camera is each viewer's second priority, after the screen share."""
        for participant in list(self.participants.values()):
            if participant.subscriber is not None:
                participant.subscriber.set_speakers(keys)

    def locked_by(self, participant: Participant, track_id: str) -> str | None:
        """Who of the staff muted this track's source, if someone did and has not allowed unmuting."""
        track = participant.publisher.track(track_id) if participant.publisher else None
        return participant.locked.get(track.source) if track is not None else None

    async def set_muted(self, participant: Participant, track_id: str, muted: bool) -> bool:
        track = participant.publisher.track(track_id) if participant.publisher else None
        if track is None:
            return False
        track.muted = muted
        if not muted:
            track.request_keyframe()
        if track.kind == "video":
            self.select_videos()  # a muted camera takes no place among the N
        await self.broadcast({"type": "track_muted", "track_id": track_id, "muted": muted,
                              "participant": participant.identity})
        return True

    # -- Last-N ----------------------------------------------------------------------------

    def select_videos(self, only: Participant | None = None, *, tell: bool = False) -> None:
        """Pause the video legs each WebSocket viewer (or `only` that one) is not to get (sfu/lastn.py), and
        tell it which it gets when that changed (or `tell`). A media worker pauses the legs it is told to."""
        for p in [only] if only is not None else list(self.participants.values()):
            sub = p.subscriber
            if p.transport != "ws":
                continue
            if isinstance(sub, Subscriber):
                videos = [d.uptrack for _, d in sub.legs if d.kind == "video" and d.uptrack is not None]
            elif isinstance(sub, RemoteRoomSubscriber):
                videos = [s.uptrack for s in sub.carried.values() if s.uptrack.kind == "video"]
            else:
                continue
            n = self.last_n if p.last_n is None else p.last_n
            chosen = select_forwarded([Video(t.track_id, t.publisher_id, t.source, t.muted) for t in videos],
                                      self.speaker_order.order, p.pins, n)
            if isinstance(sub, RemoteRoomSubscriber):
                sub.select({t.track_id for t in videos} - chosen)
            else:
                legs = [d for _, d in sub.legs if d.kind == "video" and d.uptrack is not None]
                changed = [d for d in legs if d.set_selected(d.track_id in chosen)]
                if any(d.switcher is not None for d in changed):
                    sub.allocate()  # the bandwidth a paused leg had goes to the others
            ids = sorted(chosen)
            if ids != p.forwarded or tell:
                p.forwarded = ids
                self.spawn(p.send({"type": "forwarded", "track_ids": ids, "last_n": n, "pinned": sorted(p.pins)}))

    def set_last_n(self, participant: Participant, n: int | None) -> None:
        participant.last_n = n
        self.select_videos(participant, tell=True)

    def pin(self, participant: Participant, identity: str, pinned: bool) -> None:
        (participant.pins.add if pinned else participant.pins.discard)(identity)
        self.select_videos(participant, tell=True)

    def rebind_broadcast_viewers(self, exclude: UpTrack | None = None) -> None:
        chosen = self.broadcast_tracks(exclude=exclude)
        for p in self.participants.values():
            if p.transport == "whep" and p.subscriber is not None:
                p.subscriber.bind(chosen)

    def broadcast_tracks(self, exclude: UpTrack | None = None) -> dict[str, UpTrack]:
        """What WHEP viewers get: the instructor's video (screen before camera) and audio."""
        chosen: dict[str, UpTrack] = {}
        ranked = sorted(self.tracks(), key=lambda t: (
            self.participants[t.publisher_id].role != "instructor" if t.publisher_id in self.participants else True,
            t.source != "screen", t.source != "camera",
        ))
        for track in ranked:
            if track is exclude:
                continue
            chosen.setdefault(track.kind, track)
        return chosen

    async def close(self, reason: str = "the room was closed") -> None:
        for participant in list(self.participants.values()):
            await participant.disconnect(reason)
        for identity in list(self.participants):
            await self.leave(identity, notify=False)
        if self._speakers_task is not None:
            self._speakers_task.cancel()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


class RoomManager:
    """All rooms on this node."""

    def __init__(self, peers: PeerFactory, *, max_participants: int = 500, clock: Clock = SYSTEM_CLOCK,
                 last_n: int = 0):
        self.peers = peers
        self.last_n = last_n
        self.clock = clock  # the rooms' resume grace and the empty-room drop sleep on it
        self._drops: set[asyncio.Task] = set()  # pending empty-room drops
        self.max_participants = max_participants
        self.rooms: dict[str, Room] = {}
        self.room_listeners: list[Callable[[Room], None]] = []  # told of every new room
        self.quality_changes = dict.fromkeys(LEVELS, 0)  # legs that went to each level, ever (/metrics)
        self.closed = ClosedTotals()  # counters of every room's closed tracks and connections, ever (/metrics)
        self.workers = None  # the WorkerPool (sfu/pool.py) when `--workers` runs media worker processes

    def find(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def watch_rooms(self, listener: Callable[[Room], None]) -> None:
        self.room_listeners.append(listener)

    def get_or_create(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, self.peers, max_participants=self.max_participants,
                                           on_empty=self._drop, on_leg_quality=self._count_quality,
                                           closed=self.closed, workers=self.workers, clock=self.clock,
                                           last_n=self.last_n)
            for listener in self.room_listeners:
                listener(room)
        return room

    def _count_quality(self, change: QualityChange) -> None:
        self.quality_changes[change.quality] += 1

    def video_legs(self) -> list:
        """Every video leg forwarded by this process, oldest first (for overload shedding)."""
        return [d for room in self.rooms.values() for t in room.tracks() if t.kind == "video"
                for d in t.legs()]

    def leg_count(self) -> int:
        return sum(len(t.legs()) for room in self.rooms.values() for t in room.tracks())

    def _drop(self, room: Room) -> None:
        if self.rooms.get(room.name) is room and not room.participants and not room.tasks:
            del self.rooms[room.name]
        elif self.rooms.get(room.name) is room and not room.participants:
            # Let pending broadcasts finish, then drop.
            task = asyncio.get_running_loop().create_task(self._drop_if_empty(room, 1.0))
            self._drops.add(task)
            task.add_done_callback(self._drops.discard)

    async def _drop_if_empty(self, room: Room, delay: float) -> None:
        await self.clock.sleep(delay)
        if self.rooms.get(room.name) is room and not room.participants:
            del self.rooms[room.name]

    async def close(self) -> None:
        for task in list(self._drops):
            task.cancel()
        for room in list(self.rooms.values()):
            await room.close("the server is shutting down")
        self.rooms.clear()
        await self.peers.close_all()


# The media plane's resources on the app, created by stoa/app.py (rooms, load) and stoa/workers.py (workers,
# present when `workers` >= 2, docs/scaling.md).
ROOMS = web.AppKey("rooms", RoomManager)
LOAD = web.AppKey("load", LoadMonitor)  # this process's event-loop lag probe, shedding and admission
WORKERS = web.AppKey("workers", WorkerPool)
