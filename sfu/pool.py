"""Media worker processes, as the main process sees them: the supervisor, the relay out, and the
proxies for viewers whose peer connections run in a worker.

The main process keeps the publishers (their UpTracks, the recorder's sinks) and the control plane.
For each published track that has viewers on a worker, a RelayStream (a PacketSink on the UpTrack)
encodes every packet once and queues it for each such worker, so a worker gets each packet once
whatever the number of its viewers. Queued packets leave in one datagram per worker per event-loop
turn (sfu/relay.py). Workers send back keyframe requests, NACKs their cache could not answer (the
packets are resent from the UpTrack's cache), and stats. A worker that dies is started again; the
viewers it carried are reported through `on_session_lost` so the signaling layer can end their
sessions (see docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable

from sfu.downtrack import OnQuality
from sfu.liveness import LIVE
from sfu.peer import REFUSAL_CODES, IceRestartRefused, IceSettings, SdpError
from sfu.quality import QualityChange
from sfu.relay import MAX_LAYERS, Batcher, ControlDecoder, RelayError, encode_control, encode_entry
from sfu.uptrack import UpTrack

logger = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
MAX_DC_SESSIONS = 512  # sessions named in one dc_send
# Worker -> main messages about one session, handed to its proxy (RemoteSubscriber.on_event).
SESSION_EVENTS = ("offer", "dc_state", "dc_message", "quality")
REQUEST_TIMEOUT = 20.0
# A worker that dies this soon after starting is restarted after a growing pause (up to RESTART_MAX).
RESTART_MIN, RESTART_MAX = 0.2, 10.0
SOCKET_BUFFER = 4 * 1024 * 1024
# How often a layer not relayed to a worker that has its track tells that worker its rate (`rate`).
RATE_INTERVAL = 1.0
# A worker that sends nothing (its stats come every second) for this long is hung: it is killed and
# replaced. Its viewers' ICE consent would have expired by then anyway.
HUNG_AFTER = 30.0
_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


class WorkerUnavailable(Exception):
    """The worker a request went to died before it answered (or no worker is running)."""


def refused(reply: dict, default: str) -> SdpError:
    """A worker's refusal as the exception the in-process path raises (by the reply's `code`)."""
    return REFUSAL_CODES.get(reply.get("code"), SdpError)(reply.get("error") or default)


class RelayStream:
    """Fans one UpTrack's packets out to the workers that have viewers of it: once per worker.

    A simulcast track is relayed as one stream per layer (as mediasoup's pipeToRouter pipes every
    encoding of a producer): the track's stream is its top layer's, and `layers` holds all of them, low
    to high. Each worker says which layers its legs forward or switch to (`wants`), and a layer's
    packets go only to the workers that need it; its keyframe requests and NACK misses come back on the
    layer's own stream."""

    __slots__ = ("index", "uptrack", "refs", "links", "repairs", "face", "layers", "wants", "_rate_at")

    def __init__(self, index: int, uptrack: UpTrack, face: "RelayStream | None" = None) -> None:
        self.index = index
        self.uptrack = uptrack
        self.refs: dict["WorkerLink", int] = {}  # viewers of this track per worker (on the track's stream)
        self.links: list["WorkerLink"] = []  # the workers this stream's packets go to
        self.repairs = 0
        self.face = face or self  # a layer's stream: the track's (top layer) stream, which holds the refs
        self.layers: list[RelayStream] | None = None  # a simulcast track's streams, low to high (self last)
        self.wants: dict["WorkerLink", frozenset[int]] = {}  # per worker, the layers its legs need
        self._rate_at = 0.0  # arrival time of the last `rate` sent for this layer

    def relink(self) -> None:
        """Point each of the track's streams at the running workers that need it."""
        if self.layers is None:
            self.links = [x for x in self.refs if x.alive]
            return
        for i, stream in enumerate(self.layers):
            stream.links = [x for x in self.refs if x.alive and i in self.wants.get(x, ())]

    def want(self, link: "WorkerLink", layers: list[int]) -> None:
        """A worker's legs need these layers now (its `wants`)."""
        old = self.wants.get(link, frozenset())
        new = self.wants[link] = frozenset(i for i in layers if i < len(self.layers))
        self.relink()
        for i in new - old:
            self.layers[i].uptrack.request_keyframe()  # the leg switching to it waits for one

    def wanted_layers(self) -> set[int]:
        """The layers media workers need, for dynacast (sfu/dynacast.py)."""
        if self.layers is None:
            return {len(self.uptrack.layers or (None,)) - 1}  # relayed as one stream: the top layer
        return set().union(*self.wants.values())

    def layer_states(self, states: list[str]) -> None:
        """The layers' liveness changed (sfu/liveness.py): the workers' allocators take it as is, as they
        receive only the layers their legs forward."""
        if self.layers is None:
            return
        message = {"type": "layer_states", "stream": self.index, "states": list(states)}
        for link in self.refs:
            if link.alive:
                link.notify(message)

    def feed(self, packet, arrival_time: float) -> None:
        links = self.links
        if self.face.layers is not None and arrival_time - self._rate_at >= RATE_INTERVAL:
            self._send_rate(arrival_time)
        if not links:
            return
        level = packet.extensions.audio_level
        entry = encode_entry(self.index, packet.sequence_number, packet.timestamp, packet.marker,
                             packet.payload_type, packet.ssrc, packet.payload,
                             (level[1] | (0x80 if level[0] else 0)) if level is not None else None)
        for link in links:
            link.push(entry)

    def _send_rate(self, now: float) -> None:
        """A simulcast layer's rate to the workers that have the track but are not sent this layer: their
        allocator prices a step up to it by that rate, having measured none (sfu/allocator.py)."""
        self._rate_at = now
        up = self.uptrack
        bitrate = up.bitrate() or up.known_bitrate
        if not bitrate:
            return
        message = {"type": "rate", "stream": self.index, "bitrate": round(bitrate)}
        for link in self.face.refs:
            if link.alive and link not in self.links:
                link.notify(message)

    def sender_report(self, local_time: float, rtp_timestamp: int) -> None:
        message = {"type": "sr", "stream": self.index, "time": local_time, "rtp": rtp_timestamp}
        for link in self.links:
            link.notify(message)

    def describe(self) -> dict:
        up = self.uptrack
        out = {"type": "track", "stream": self.index, "track_id": up.track_id, "kind": up.kind,
               "mime_type": up.mime_type, "clock_rate": up.clock_rate, "payload_type": up.payload_type,
               "publisher": up.publisher_id, "source": up.source}
        if self.layers is not None:
            out.update(layers=[s.index for s in self.layers], rids=list(self.face.uptrack.rids))
            now = time.monotonic()
            out["states"] = [s.uptrack.liveness.state(now) if s.uptrack.liveness is not None else LIVE
                             for s in self.layers]
        return out

    def repair(self, link: "WorkerLink", seqs: list[int]) -> None:
        """Resend packets a worker's legs NACKed and its cache no longer (or never) had."""
        up = self.uptrack
        for seq in seqs:
            packet = up.cache.get(seq)
            if packet is None:
                continue
            self.repairs += 1
            link.push(encode_entry(self.index, packet.seq, packet.timestamp, packet.marker, up.payload_type,
                                   up.media_ssrc or 0, packet.payload, packet.audio_level, repair=True))


class WorkerLink:
    """One running worker process: its control stream, its media socket, what it carries."""

    def __init__(self, pool: "WorkerPool", index: int, proc, reader, writer, media: socket.socket):
        self.pool = pool
        self.index = index
        self.proc = proc
        self.pid = proc.pid
        self._reader = reader
        self._writer = writer
        self._media = media
        self.alive = True
        self.sessions: dict[str, "RemoteSubscriber"] = {}
        self.stats: dict = {}
        self._batcher = Batcher()
        self._flush_scheduled = False
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self.started_at = time.monotonic()
        self.last_heard = self.started_at
        # counters
        self.datagrams_sent = 0
        self.packets_relayed = 0
        self.packets_dropped = 0
        self._dropping = False
        self._loss = None  # (random.Random, rate) while impaired by `impair`
        self.impaired_drops = 0
        self._dc_out: dict[str, list[str]] = {}  # text -> sessions, sent at the end of the loop turn

    # -- media out ----------------------------------------------------------------------------

    def push(self, entry: bytes) -> None:
        if not self.alive:
            return
        self.packets_relayed += 1
        full = self._batcher.add(entry)
        if full is not None:
            self._send(full)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_event_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self._batcher.take()
        if data is not None and self.alive:
            self._send(data)

    def impair(self, rate: float, *, seed: int = 1) -> None:
        """Drop a fraction of the relay datagrams to this worker: a network impairment for tests and
        benches (the relay between machines will lose packets), so the NACK-miss path is exercised."""
        import random

        self._loss = (random.Random(seed), rate) if rate > 0 else None

    def _send(self, data: bytes) -> None:
        if self._loss is not None and self._loss[0].random() < self._loss[1]:
            self.impaired_drops += data[1]
            return
        try:
            self._media.send(data)
        except (BlockingIOError, InterruptedError):
            # The worker is not keeping up: drop this batch (its legs NACK, PLI), log once per episode.
            self.packets_dropped += data[1]
            if not self._dropping:
                self._dropping = True
                logger.warning("media worker %d is not reading the relay fast enough: dropping packets "
                               "(%d dropped so far)", self.index, self.packets_dropped)
            return
        except OSError:
            return  # the worker died; the supervisor deals with it
        if self._dropping:
            self._dropping = False
            logger.warning("media worker %d reads the relay again (%d packets dropped in all)",
                           self.index, self.packets_dropped)
        self.datagrams_sent += 1

    # -- control ------------------------------------------------------------------------------

    def send_data(self, session_id: str, text: str) -> None:
        """Queue one data channel message. A classroom broadcast puts the same text on many members'
        channels in one loop turn: it crosses the control stream once per worker (`dc_send`)."""
        if not self._dc_out:
            asyncio.get_event_loop().call_soon(self._flush_data)
        self._dc_out.setdefault(text, []).append(session_id)

    def _flush_data(self) -> None:
        out, self._dc_out = self._dc_out, {}
        for text, sessions in out.items():
            for i in range(0, len(sessions), MAX_DC_SESSIONS):
                self.notify({"type": "dc_send", "sessions": sessions[i:i + MAX_DC_SESSIONS], "text": text})

    def notify(self, message: dict) -> None:
        if self.alive and not self._writer.is_closing():
            self._writer.write(encode_control(message))

    async def request(self, message: dict, timeout: float = REQUEST_TIMEOUT) -> dict:
        if not self.alive:
            raise WorkerUnavailable(f"media worker {self.index} is not running")
        self._next_id += 1
        message = {**message, "id": self._next_id}
        future = asyncio.get_event_loop().create_future()
        self._pending[self._next_id] = future
        self.notify(message)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise WorkerUnavailable(f"media worker {self.index} did not answer within {timeout:.0f} s") from None
        finally:
            self._pending.pop(message["id"], None)

    async def read_control(self) -> None:
        decoder = ControlDecoder()
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    return
                for message in decoder.feed(data):
                    self._on_message(message)
                for problem in decoder.rejected:
                    logger.warning("media worker %d: ignored a control message: %s", self.index, problem)
                decoder.rejected.clear()
        except (RelayError, ConnectionError) as exc:
            logger.error("media worker %d: control stream broken: %s", self.index, exc)

    def _on_message(self, message: dict) -> None:
        self.last_heard = time.monotonic()
        kind = message["type"]
        if kind == "reply":
            future = self._pending.get(message.get("id"))
            if future is not None and not future.done():
                future.set_result(message)
        elif kind == "pli":
            stream = self.pool.streams.get(message.get("stream"))
            if stream is not None:
                stream.uptrack.request_keyframe()
        elif kind == "nack":
            stream = self.pool.streams.get(message.get("stream"))
            if stream is not None and self in stream.face.refs:
                stream.repair(self, message["seqs"])
        elif kind == "wants":
            stream = self.pool.streams.get(message["stream"])
            if stream is not None and stream.layers is not None and self in stream.refs:
                stream.want(self, message["layers"])
        elif kind == "stats":
            self.stats = message
        elif kind in SESSION_EVENTS:
            session = self.sessions.get(message["session"])
            if session is not None:
                session.on_event(message)
        elif kind == "ready":
            pass
        else:
            logger.warning("media worker %d sent an unknown control message %r", self.index, kind)

    def refusing(self) -> str | None:
        """Why this worker refuses new joins, by its last stats (None: it admits)."""
        return self.stats.get("load", {}).get("refusing")

    def gone(self) -> None:
        self.alive = False
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerUnavailable(f"media worker {self.index} died"))
        self._writer.close()
        self._media.close()


class _Leg:
    """What a quality listener reads of a leg that runs in a worker."""

    __slots__ = ("track_id",)

    def __init__(self, track_id: str) -> None:
        self.track_id = track_id


class RemoteSubscriber:
    """Stands in for a Subscriber (WHEP, client-offered) whose peer connection runs in a worker."""

    data_channel = None
    pc = None  # the peer connection is in the worker
    legs = ()  # the legs live in the worker; their figures come back in its stats

    def __init__(self, pool: "WorkerPool", link: WorkerLink, participant_id: str, *, room: str, session_id: str,
                 on_quality: OnQuality | None = None):
        self.pool = pool
        self.link = link
        self.participant_id = participant_id
        self.room = room
        self.session_id = session_id
        self.on_quality = on_quality
        self.streams: dict[str, RelayStream] = {}  # by kind
        self.closed = False
        self.lost = False
        self.answered = False  # until then a dead worker fails answer() instead of reporting a loss
        link.sessions[session_id] = self

    @property
    def worker(self) -> int:
        return self.link.index

    def set_speakers(self, participants: list[str]) -> None:
        """Who speaks, the active speaker first: the worker's allocator for this viewer ranks their cameras."""
        if self.closed or self.lost or participants == getattr(self, "_speakers", None):
            return
        self._speakers = list(participants)
        self.link.notify({"type": "speakers", "session": self.session_id, "participants": self._speakers[:64]})

    async def answer(self, offer_sdp: str, tracks: dict[str, UpTrack]) -> str:
        self._bind_streams(tracks)
        try:
            reply = await self.link.request({"type": "whep", "session": self.session_id,
                                             "identity": self.participant_id, "offer": offer_sdp,
                                             "tracks": self._stream_map()})
        except WorkerUnavailable:
            self.lost = True
            raise
        if not reply.get("ok"):
            raise SdpError(reply.get("error") or "the media worker refused the offer")
        self.answered = True
        return reply["sdp"]

    def bind(self, tracks: dict[str, UpTrack]) -> None:
        if self.closed or self.lost:
            return  # a lost session is about to be ended by on_session_lost
        if self._bind_streams(tracks):
            self.link.notify({"type": "bind", "session": self.session_id, "tracks": self._stream_map()})

    def remove_track(self, track_id: str) -> bool:
        return False  # a WHEP leg follows the room's broadcast tracks through bind()

    async def trickle(self, candidates: list[dict], *, ufrag: str | None = None) -> None:
        """Remote candidates (RTCIceCandidateInit); with `ufrag`, only if it is the current ICE session's."""
        message = {"type": "trickle", "session": self.session_id, "candidates": candidates}
        if ufrag is not None:
            message["ufrag"] = ufrag
        reply = await self.link.request(message)
        if not reply.get("ok"):
            raise refused(reply, "the candidate was refused")

    async def restart_ice_from(self, ufrag: str, pwd: str | None, candidates: list[dict],
                               end_of_candidates: bool) -> tuple[str, str, list[str]]:
        """The client restarts ICE (WHEP PATCH, If-Match: *): as sfu.peer.restart_ice_from, in the worker."""
        reply = await self.link.request({"type": "restart_ice", "session": self.session_id, "remote": {
            "ufrag": ufrag, "pwd": pwd, "candidates": candidates, "end_of_candidates": end_of_candidates}})
        if not reply.get("ok"):
            raise refused(reply, "the ICE restart was refused")
        local = reply["ice"]
        return local["ufrag"], local["pwd"], local["candidates"]

    def _bind_streams(self, tracks: dict[str, UpTrack]) -> bool:
        wanted = {kind: self.pool.stream_for(track) for kind, track in tracks.items()}
        if {k: s.index for k, s in wanted.items()} == {k: s.index for k, s in self.streams.items()}:
            return False
        for stream in wanted.values():
            self.pool.ref(stream, self.link)
        for stream in self.streams.values():
            self.pool.unref(stream, self.link)
        self.streams = wanted
        return True

    def _stream_map(self) -> dict[str, int]:
        return {kind: s.index for kind, s in self.streams.items()}

    def on_event(self, message: dict) -> None:
        """A message from the worker about this session (SESSION_EVENTS)."""
        if message["type"] == "quality" and self.on_quality is not None:
            stream = self.pool.streams.get(message["stream"])
            if stream is not None:
                self.on_quality(_Leg(stream.uptrack.track_id), QualityChange(
                    message["quality"], message["previous"], message["loss"], message.get("rtt")))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            self.pool.unref(stream, self.link)
        self.streams = {}
        self.link.sessions.pop(self.session_id, None)
        if not self.lost:
            self.link.notify({"type": "close", "session": self.session_id})


class RemoteChannel:
    """The classroom data channel of a subscriber connection that runs in a worker: what ChannelMember
    uses of an RTCDataChannel. Sends are queued per worker (WorkerLink.send_data); what the member sends
    arrives as `dc_message`; the worker reports the channel's state."""

    ordered = True

    def __init__(self, link: WorkerLink, session_id: str) -> None:
        self._link = link
        self._session = session_id
        self.readyState = "connecting"
        self.bufferedAmount = 0  # the worker holds the buffer; it drops for a member too far behind
        self._listeners: dict[Callable[[str], None], None] = {}  # once each, as pyee keeps them

    def on(self, event: str, listener: Callable[[str], None]) -> None:
        if event == "message":
            self._listeners[listener] = None

    def send(self, text: str) -> None:
        if self.readyState != "open":
            raise ConnectionError(f"the data channel is {self.readyState}")
        self._link.send_data(self._session, text)

    def deliver(self, text: str) -> None:
        for listener in self._listeners:
            listener(text)


class RemoteRoomSubscriber(RemoteSubscriber):
    """Stands in for a room participant's server-offered Subscriber (WebSocket protocol) whose peer
    connection, data channel included, runs in a worker. The room drives it as it drives a Subscriber:
    add_track / remove_track, then negotiate; the worker makes the offers, this forwards them."""

    def __init__(self, pool: "WorkerPool", link: WorkerLink, participant_id: str, *, room: str, session_id: str,
                 send_offer: Callable[[str, list[dict]], Awaitable[None]], on_quality: OnQuality | None = None):
        super().__init__(pool, link, participant_id, room=room, session_id=session_id, on_quality=on_quality)
        self._send_offer = send_offer
        self.answered = True  # a lost worker is reported: the room protocol's resubscribe recovers it
        self.carried: dict[str, RelayStream] = {}  # by track id, in the order added
        self._synced: tuple | None = None  # the streams (and the paused ones) the worker was last told
        self.unselected: set[str] = set()  # Last-N: the video track ids whose legs the worker pauses
        self.data_channel = RemoteChannel(link, session_id)

    def set_video_size(self, track_id: str, width: int, height: int) -> bool:
        """The page shows `track_id` at this size: the worker's allocator for this viewer is told."""
        stream = self.carried.get(track_id)
        if stream is None or self.closed or self.lost:
            return False
        self.link.notify({"type": "video_size", "session": self.session_id, "stream": stream.index,
                          "width": width, "height": height})
        return True

    def add_track(self, uptrack: UpTrack) -> None:
        if uptrack.track_id in self.carried or self.closed:
            return
        stream = self.pool.stream_for(uptrack)
        self.pool.ref(stream, self.link)
        self.carried[uptrack.track_id] = stream

    def remove_track(self, track_id: str) -> bool:
        stream = self.carried.pop(track_id, None)
        if stream is None:
            return False
        self._sync()  # the worker lets go of the leg before its stream goes
        self.pool.unref(stream, self.link)
        return True

    async def negotiate(self) -> None:
        self._sync()

    def select(self, unselected: set[str]) -> None:
        """Last-N (sfu/lastn.py): the worker pauses the legs of these video tracks, and resumes the others."""
        self.unselected = set(unselected)
        self._sync()

    def _sync(self) -> None:
        """Tell the worker which streams the connection carries (it renegotiates when they changed) and
        which of them it pauses."""
        if self.closed or self.lost:
            return
        streams = [s.index for s in self.carried.values()]
        paused = sorted(s.index for t, s in self.carried.items() if t in self.unselected)
        if (streams, paused) != self._synced:
            self._synced = (streams, paused)
            self.link.notify({"type": "subscribe", "session": self.session_id, "identity": self.participant_id,
                              "streams": streams, "paused": paused})

    async def on_answer(self, sdp: str) -> None:
        if self.lost:
            raise SdpError("the subscriber connection's media worker stopped; resubscribe")
        try:
            reply = await self.link.request({"type": "answer", "session": self.session_id, "sdp": sdp})
        except WorkerUnavailable as exc:
            raise SdpError(f"{exc}; resubscribe") from None
        if not reply.get("ok"):
            raise SdpError(reply.get("error") or "the media worker refused the answer")

    async def restart_ice(self) -> None:
        """The client asked for an ICE restart (`restart_ice`): the worker's offer with new credentials
        follows as an `offer`; IceRestartRefused when ICE is not up there (or the worker is gone)."""
        if self.lost:
            raise IceRestartRefused("the subscriber connection's media worker stopped; make a new connection")
        try:
            reply = await self.link.request({"type": "restart_ice", "session": self.session_id})
        except WorkerUnavailable as exc:
            raise IceRestartRefused(f"{exc}; make a new connection") from None
        if not reply.get("ok"):
            raise refused(reply, "the ICE restart was refused")

    async def resend_offer(self) -> None:
        if not (self.closed or self.lost):
            self.link.notify({"type": "resend", "session": self.session_id})

    def on_event(self, message: dict) -> None:
        kind = message["type"]
        if kind == "offer":
            tracks = []
            for entry in message["mids"]:
                stream = self.pool.streams.get(entry["stream"])
                if stream is not None and stream in self.carried.values():
                    tracks.append({"mid": entry["mid"], **stream.uptrack.describe()})
            self.pool._spawn(self._send_offer(message["sdp"], tracks))
        elif kind == "dc_state":
            self.data_channel.readyState = message["state"]
        elif kind == "dc_message":
            self.data_channel.deliver(message["text"])
        else:
            super().on_event(message)

    async def close(self) -> None:
        if self.closed:
            return
        self.data_channel.readyState = "closed"
        for stream in self.carried.values():
            self.pool.unref(stream, self.link)
        self.carried = {}
        await super().close()


SessionLost = Callable[[RemoteSubscriber], Awaitable[None]]


class WorkerPool:
    """Starts `count` worker processes, places viewers on them, and restarts any that dies."""

    def __init__(self, count: int, ice: IceSettings, *, log_level: str = "info",
                 on_session_lost: SessionLost | None = None, policy: dict | None = None,
                 downlink_transport_cc: bool = False):
        self.count = count
        self.downlink_transport_cc = downlink_transport_cc  # the workers' viewers get transport-cc (sfu/twcc.py)
        self.ice = ice
        self.policy = policy or {}  # each worker's overload policy: {"max_legs", "react"}
        self.log_level = log_level
        self.on_session_lost = on_session_lost
        self.links: list[WorkerLink | None] = [None] * count
        self.streams: dict[int, RelayStream] = {}
        self._by_track: dict[int, RelayStream] = {}  # id(uptrack) -> stream
        self._next_stream = 0
        self._next_worker = 0
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._delays: dict[int, float] = {}
        self.restarts = 0
        self.hung_after = HUNG_AFTER

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(self._start_worker(i) for i in range(self.count)))

    async def _start_worker(self, index: int, delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self._closing:
            return
        ctl_parent, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        media_parent, media_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for sock, option in ((media_parent, socket.SO_SNDBUF), (media_child, socket.SO_RCVBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass
        media_parent.setblocking(False)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (_PROJECT_ROOT, os.environ.get("PYTHONPATH", "")) if p)}
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sfu.worker", "--control-fd", str(ctl_child.fileno()),
                "--media-fd", str(media_child.fileno()), "--index", str(index), "--log-level", self.log_level,
                pass_fds=(ctl_child.fileno(), media_child.fileno()), env=env, start_new_session=True)
        finally:
            ctl_child.close()
            media_child.close()
        reader, writer = await asyncio.open_unix_connection(sock=ctl_parent)
        link = WorkerLink(self, index, proc, reader, writer, media_parent)
        try:
            ready = await asyncio.wait_for(self._first_message(reader), READY_TIMEOUT)
        except (asyncio.TimeoutError, RelayError, ConnectionError, asyncio.IncompleteReadError) as exc:
            logger.error("media worker %d (pid %d) did not start: %s", index, proc.pid, exc or "timed out")
            proc.kill()
            await proc.wait()
            link.gone()
            self._schedule_restart(index, link)
            return
        if ready.get("type") != "ready":
            logger.error("media worker %d said %r before ready", index, ready.get("type"))
        link.notify({"type": "configure", "ice": {"servers": self.ice.servers, "username": self.ice.username,
                                                  "credential": self.ice.credential,
                                                  "addresses": self.ice.addresses},
                     **({"policy": self.policy} if self.policy else {}),
                     **({"downlink_transport_cc": True} if self.downlink_transport_cc else {})})
        self.links[index] = link
        self._spawn(self._watch(link))
        logger.info("media worker %d running (pid %d)", index, proc.pid)

    @staticmethod
    async def _first_message(reader) -> dict:
        header = await reader.readexactly(4)
        body = await reader.readexactly(int.from_bytes(header, "big"))
        return ControlDecoder().feed(header + body)[0]

    async def _watch(self, link: WorkerLink) -> None:
        reading = asyncio.ensure_future(link.read_control())
        exited = asyncio.ensure_future(link.proc.wait())
        while not exited.done():
            await asyncio.wait([exited], timeout=1.0)
            silent = time.monotonic() - link.last_heard
            if not exited.done() and silent > self.hung_after:
                logger.warning("media worker %d (pid %d) sent nothing for %.0f s: killing it as hung",
                               link.index, link.pid, silent)
                link.proc.kill()
                link.last_heard = time.monotonic()
        code = exited.result()
        await asyncio.wait([reading], timeout=1.0)
        reading.cancel()
        self._lost(link, code)

    def _lost(self, link: WorkerLink, code: int) -> None:
        if not link.alive:
            return
        link.gone()
        if self.links[link.index] is link:
            self.links[link.index] = None
        for stream in list(self.streams.values()):
            if stream.face is stream and link in stream.refs:
                del stream.refs[link]
                stream.wants.pop(link, None)
                stream.relink()
                self._drop_if_unused(stream)
        lost = list(link.sessions.values())
        if self._closing:
            return
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        logger.warning("media worker %d (pid %d) %s after %.0f s; its %d session(s) end (WHEP viewers "
                       "leave, room participants resubscribe); starting a new worker", link.index, link.pid, how,
                       time.monotonic() - link.started_at, len(lost))
        for sub in lost:
            sub.lost = True
            if isinstance(sub, RemoteRoomSubscriber):
                # The participant stays; its page sees the connection fail and resubscribes (placed on a
                # running worker). Classroom messages take the WebSocket meanwhile.
                sub.data_channel.readyState = "closed"
                continue
            if sub.answered and self.on_session_lost is not None:
                self._spawn(self.on_session_lost(sub))
        self._schedule_restart(link.index, link)

    def _schedule_restart(self, index: int, link: WorkerLink) -> None:
        if self._closing:
            return
        self.restarts += 1
        lived = time.monotonic() - link.started_at
        previous = self._delays.get(index, 0.0)
        delay = 0.0 if lived > RESTART_MAX else min(RESTART_MAX, max(RESTART_MIN, previous * 2))
        self._delays[index] = delay
        self._spawn(self._start_worker(index, delay))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("worker pool task failed", exc_info=task.exception())

    async def close(self) -> None:
        self._closing = True
        links = [link for link in self.links if link is not None]
        for link in links:
            if link.proc.returncode is None:
                link.proc.terminate()
        for link in links:
            try:
                await asyncio.wait_for(link.proc.wait(), 5.0)
            except asyncio.TimeoutError:
                logger.warning("media worker %d ignored SIGTERM; killing it", link.index)
                link.proc.kill()
                await link.proc.wait()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in links:
            if link.alive:
                link.gone()

    # -- placement ----------------------------------------------------------------------------

    def refusal(self) -> str | None:
        """Why a new viewer cannot be placed: every running worker refuses joins (None: one takes it)."""
        reasons = [link.refusing() for link in self.running()]
        if not reasons or any(r is None for r in reasons):
            return None
        return f"{reasons[0]} on every media worker"

    def running(self) -> list[WorkerLink]:
        return [link for link in self.links if link is not None and link.alive]

    def place(self) -> WorkerLink | None:
        """The running worker with the fewest sessions among those not refusing joins (by their last
        stats: lag, shedding, busy loop, capacity_legs); ties go round-robin."""
        alive = self.running()
        if not alive:
            return None
        n = self.count
        link = min(alive, key=lambda l: (l.refusing() is not None, len(l.sessions),
                                         (l.index - self._next_worker) % n))
        self._next_worker = (link.index + 1) % n
        return link

    def subscriber(self, participant_id: str, *, room: str, session_id: str,
                   on_quality: OnQuality | None = None) -> RemoteSubscriber | None:
        """A viewer on a worker, or None when no worker runs (the caller keeps it in-process)."""
        link = self.place()
        if link is None:
            return None
        return RemoteSubscriber(self, link, participant_id, room=room, session_id=session_id,
                                on_quality=on_quality)

    def room_subscriber(self, participant_id: str, *, room: str, session_id: str, send_offer,
                        on_quality: OnQuality | None = None) -> RemoteRoomSubscriber | None:
        """A room participant's subscriber connection on a worker, or None when no worker runs."""
        link = self.place()
        if link is None:
            return None
        return RemoteRoomSubscriber(self, link, participant_id, room=room, session_id=session_id,
                                    send_offer=send_offer, on_quality=on_quality)

    # -- relay streams ------------------------------------------------------------------------

    def stream_for(self, uptrack: UpTrack) -> RelayStream:
        stream = self._by_track.get(id(uptrack))
        if stream is None or stream.uptrack is not uptrack:
            stream = self._new_stream(uptrack)
            layers = uptrack.layers
            if layers and 2 <= len(layers) <= MAX_LAYERS and uptrack.rids:
                stream.layers = [self._new_stream(layer, stream) for layer in layers[:-1]] + [stream]
            self._by_track[id(uptrack)] = stream
        return stream

    def _new_stream(self, uptrack: UpTrack, face: RelayStream | None = None) -> RelayStream:
        index = self._free_index()
        stream = self.streams[index] = RelayStream(index, uptrack, face)
        return stream

    def _free_index(self) -> int:
        for _ in range(0x10000):
            self._next_stream = (self._next_stream + 1) & 0xFFFF
            if self._next_stream and self._next_stream not in self.streams:
                return self._next_stream
        raise RuntimeError("every relay stream index is in use")

    def ref(self, stream: RelayStream, link: WorkerLink) -> None:
        count = stream.refs.get(link, 0)
        stream.refs[link] = count + 1
        if count:
            return
        for layer in stream.layers or (stream,):  # the lower layers first: the track's message names them
            up = layer.uptrack
            up.add_sink(layer)
            link.notify(layer.describe())
            sr = getattr(up, "_sr", None)  # the last sender report, mapped onto our clock
            if sr is not None:
                link.notify({"type": "sr", "stream": layer.index, "time": sr[0], "rtp": sr[1]})
        stream.relink()  # a simulcast layer flows once the worker says its legs want it

    def unref(self, stream: RelayStream, link: WorkerLink) -> None:
        count = stream.refs.get(link, 0)
        if count > 1:
            stream.refs[link] = count - 1
            return
        if count == 1:
            del stream.refs[link]
            stream.wants.pop(link, None)
            stream.relink()
            for layer in reversed(stream.layers or (stream,)):
                link.notify({"type": "untrack", "stream": layer.index})
        self._drop_if_unused(stream)

    def _drop_if_unused(self, stream: RelayStream) -> None:
        if stream.refs:
            return
        for layer in stream.layers or (stream,):
            layer.uptrack.remove_sink(layer)
            if self.streams.get(layer.index) is layer:
                del self.streams[layer.index]
        if self._by_track.get(id(stream.uptrack)) is stream:
            del self._by_track[id(stream.uptrack)]

    # -- figures ------------------------------------------------------------------------------

    def describe(self) -> list[dict]:
        out = []
        for index, link in enumerate(self.links):
            if link is None:
                out.append({"index": index, "running": False})
                continue
            out.append({"index": index, "running": link.alive, "pid": link.pid, "viewers": len(link.sessions),
                        "packets_relayed": link.packets_relayed, "datagrams_sent": link.datagrams_sent,
                        "packets_dropped": link.packets_dropped, "cpu_seconds": link.stats.get("cpu"),
                        "relay": link.stats.get("relay", {}), "sessions": link.stats.get("sessions", {}),
                        "closed_legs": link.stats.get("closed_legs", {}),
                        "load": link.stats.get("load", {})})
        return out
