"""A media worker process: runs subscriber peer connections (ICE, DTLS, SRTP) for viewers placed on it,
fed by the relay from the process that receives the published tracks.

Started by sfu/pool.py as `python -m sfu.worker --control-fd C --media-fd M --index I`: C is a UNIX
stream socket carrying control frames both ways, M a UNIX datagram socket carrying relayed RTP in
(format: sfu/relay.py). Each relayed stream becomes a MirrorTrack, an UpTrack whose packets come from
the relay instead of a publisher, so the DownTracks, the Forwarder and the NACK cache are the ones the
main process uses. Keyframe requests and NACKs the local cache cannot answer go back as control
messages; sender-report clocks come in as control messages. The worker exits when its control socket
closes (the main process went away).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import signal
import socket
import sys
import time

from sfu.buffer import CachedPacket, PacketCache
from sfu.liveness import LIVE
from sfu.overload import LoadMonitor, OverloadPolicy, release_memory
from sfu.aiortc_seam import enable_transport_cc, ice_credentials
from sfu.peer import (REFUSAL_CODES, IceSettings, OtherIceSession, PeerFactory, SdpError, add_remote_candidate,
                      parse_candidate, restart_ice_from)
from sfu.aiortc_seam import DataChannelSender
from sfu.relay import MAX_DC_TEXT, ControlDecoder, RelayError, decode_datagram, encode_control
from sfu.rtp import abs_send_time, is_keyframe, unix_to_ntp, vp8_frame_size
from sfu.subscriber import Subscriber
from sfu.uptrack import PublisherClock, UpTrack

logger = logging.getLogger("sfu.worker")

STATS_INTERVAL = 1.0
# A source packet missing from the worker's cache is asked for again at most this often.
NACK_MISS_INTERVAL = 0.1
# A member's data channel this far behind misses messages (classroom.interactive.channel's limit).
MAX_BUFFERED_BYTES = 4 * 1024 * 1024


class RelayCache(PacketCache):
    """A PacketCache that reports the source packets a leg asked for and it did not have."""

    __slots__ = ("on_miss",)

    def __init__(self, on_miss) -> None:
        super().__init__()
        self.on_miss = on_miss

    def get(self, seq: int) -> CachedPacket | None:
        packet = super().get(seq)
        if packet is None:
            self.on_miss(seq)
        return packet


class MirrorTrack(UpTrack):
    """The worker's copy of one published track: same fan-out, packets from the relay."""

    def __init__(self, stream: int, desc: dict, send) -> None:
        super().__init__(track_id=desc["track_id"], kind=desc["kind"], mime_type=desc["mime_type"],
                         clock_rate=desc["clock_rate"], payload_type=desc["payload_type"],
                         publisher_id=desc.get("publisher", ""), source=desc.get("source", ""),
                         clock=PublisherClock(), send_pli=self._ask_keyframe)
        self.stream = stream
        self._send = send
        self.cache = RelayCache(self._missed)
        self._asked: dict[int, float] = {}
        self._pending: list[int] = []
        self.repairs = 0
        self.misses_asked = 0
        # A simulcast track's layers (each relayed on its own stream) all point at the top one, which
        # tells the main process which layers this worker's legs need (`wants`) when that changes.
        self.face: MirrorTrack | None = None
        self._wanted: list[int] | None = None
        self._wants_due = False

    def add_downtrack(self, downtrack) -> None:
        super().add_downtrack(downtrack)
        self._legs_changed()

    def remove_downtrack(self, downtrack) -> None:
        super().remove_downtrack(downtrack)
        self._legs_changed()

    def _legs_changed(self) -> None:
        face = self.face
        if face is not None and not face._wants_due:
            face._wants_due = True
            asyncio.get_event_loop().call_soon(face._report_wants)  # once per loop turn: a switch adds and removes

    def _report_wants(self) -> None:
        self._wants_due = False
        if self.closed:
            return
        wanted = [i for i, layer in enumerate(self.layers) if layer.downtracks or layer._replays]
        if wanted != self._wanted:
            self._wanted = wanted
            self._send({"type": "wants", "stream": self.stream, "layers": wanted})

    async def _ask_keyframe(self, ssrc: int) -> None:
        self._send({"type": "pli", "stream": self.stream})

    def set_sender_clock(self, local_time: float, rtp_timestamp: int) -> None:
        """The main process mapped the publisher's sender report onto the shared clock already."""
        self._sr = (local_time, rtp_timestamp)

    def _missed(self, seq: int) -> None:
        now = time.monotonic()
        if now - self._asked.get(seq, -1.0) < NACK_MISS_INTERVAL:
            return
        if len(self._asked) > 1024:
            self._asked = {s: t for s, t in self._asked.items() if now - t < 1.0}
        self._asked[seq] = now
        if not self._pending:
            asyncio.get_event_loop().call_soon(self._flush_misses)
        self._pending.append(seq)

    def _flush_misses(self) -> None:
        seqs, self._pending = self._pending, []
        self.misses_asked += len(seqs)
        self._send({"type": "nack", "stream": self.stream, "seqs": seqs})

    def on_relayed(self, packet, arrival: float) -> None:
        """A relayed packet: cache it and forward it to every leg (a repair goes out as a late packet,
        which is what the legs that NACKed it are waiting for)."""
        if self.closed:
            return
        payload = packet.payload
        keyframe = is_keyframe(self.mime_type, payload) if self._video else True
        cached = CachedPacket(packet.seq, packet.timestamp, packet.marker, payload, packet.audio_level,
                              arrival, keyframe)
        self.cache.add(cached)
        self.media_ssrc = packet.ssrc
        if packet.repair:
            self.repairs += 1
        else:
            self.packets_received += 1
            self.octets_received += len(payload)  # a layer's rate, for the allocator
            if keyframe and self._video:
                self.keyframes_received += 1
                if self._track_size:
                    self.frame_size = vp8_frame_size(payload) or self.frame_size
        ntp = unix_to_ntp(self.capture_time(packet.timestamp, arrival))
        send_time = abs_send_time()
        tails: dict = {}
        for downtrack in self.downtracks:
            downtrack.forward(cached, ntp, send_time, tails)


class Worker:
    def __init__(self, index: int, control: socket.socket, media: socket.socket) -> None:
        self.index = index
        self._control_sock = control
        self._media = media
        self._writer: asyncio.StreamWriter | None = None
        # Each worker sheds its own load (retransmits, then video to its newest legs), as the main process does.
        self.load = LoadMonitor()
        self.peers = PeerFactory(IceSettings(), self.load)
        # Counted on each track once, not on its simulcast layers (whose fan-out lists hold the legs' taps).
        self.load.legs = lambda: [d for t in self._tracks_once() if t.kind == "video" for d in t.legs()]
        self.load.leg_count = lambda: sum(len(t.legs()) for t in self._tracks_once())
        self.load.peer_count = lambda: len(self.peers.live)
        self.streams: dict[int, MirrorTrack] = {}
        self.sessions: dict[str, Subscriber] = {}
        self.bindings: dict[str, dict] = {}  # session -> {kind: stream} it should carry
        self.datagrams = 0
        self.packets = 0
        self.unknown_stream = 0
        self.bad_datagrams = 0
        self._senders: dict[str, DataChannelSender] = {}
        self.dc_sent = self.dc_dropped = self.dc_refused = 0
        # What closed sessions' legs had counted, so the server's /metrics counters never go down.
        self.closed_legs = dict.fromkeys(LEG_COUNTERS, 0)
        self._task: asyncio.Task | None = None

    def _tracks_once(self) -> list[MirrorTrack]:
        return [t for t in self.streams.values() if t.face in (None, t)]

    # -- control ------------------------------------------------------------------------------

    def send(self, message: dict) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode_control(message))

    async def run(self) -> None:
        loop = asyncio.get_event_loop()
        self._task = asyncio.current_task()
        reader, self._writer = await asyncio.open_unix_connection(sock=self._control_sock)
        self._media.setblocking(False)
        loop.add_reader(self._media.fileno(), self._on_media)
        self.send({"type": "ready", "index": self.index, "pid": os.getpid()})
        stats = asyncio.ensure_future(self._stats_loop())
        self.load.start()
        decoder = ControlDecoder()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break  # the main process is gone: nobody to serve
                for message in decoder.feed(data):
                    await self._handle(message)
                for problem in decoder.rejected:
                    logger.warning("worker %d: ignored a control message: %s", self.index, problem)
                decoder.rejected.clear()
        except asyncio.CancelledError:
            pass  # SIGTERM: close the viewers' connections, then exit
        finally:
            stats.cancel()
            loop.remove_reader(self._media.fileno())
            for sub in list(self.sessions.values()):
                await sub.close()
            await self.peers.close_all()
            await self.load.stop()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _handle(self, message: dict) -> None:
        kind = message["type"]
        try:
            if kind == "configure":
                self.peers.ice = IceSettings(**message["ice"])
                if "policy" in message:  # the server's capacity_legs and overload_control
                    self.load.policy = OverloadPolicy(**message["policy"])
                if message.get("downlink_transport_cc"):  # the server's setting: offers carry the extension
                    enable_transport_cc()
                    self.peers.downlink_transport_cc = True
            elif kind == "track":
                old = self.streams.pop(message["stream"], None)
                if old is not None:
                    old.close()
                track = self.streams[message["stream"]] = MirrorTrack(message["stream"], message, self.send)
                if "layers" in message:
                    self._layer(track, message["layers"], message["rids"], message.get("states"))
            elif kind == "layer_states":
                self._layer_states(message["stream"], message["states"])
            elif kind == "untrack":
                track = self.streams.pop(message["stream"], None)
                if track is not None:
                    track.close()
            elif kind == "rate":  # a layer not relayed here: its rate in the main process
                track = self.streams.get(message["stream"])
                if track is not None and not track.bitrate():
                    track.known_bitrate = float(message["bitrate"])
            elif kind == "sr":
                track = self.streams.get(message["stream"])
                if track is not None:
                    track.set_sender_clock(message["time"], message["rtp"])
            elif kind == "whep":
                # Registered now, answered in a task: a "bind" that follows must find the session.
                sub = Subscriber(message.get("identity", message["session"]), self.peers, _no_offer,
                                 data_channel_label=None, on_quality=self._quality_sender(message["session"]))
                self.sessions[message["session"]] = sub
                self.bindings[message["session"]] = message["tracks"]
                asyncio.ensure_future(self._whep(message, sub))
            elif kind == "bind":
                sub = self.sessions.get(message["session"])
                if sub is not None:
                    self.bindings[message["session"]] = message["tracks"]
                    sub.bind(self._tracks(message["tracks"]))
            elif kind == "subscribe":
                self._subscribe(message)
            elif kind == "answer":
                asyncio.ensure_future(self._answer(message))
            elif kind == "video_size":
                sub, track = self.sessions.get(message["session"]), self.streams.get(message["stream"])
                if sub is not None and track is not None:
                    sub.set_video_size(track.track_id, message["width"], message["height"])
            elif kind == "speakers":
                sub = self.sessions.get(message["session"])
                if sub is not None:
                    sub.set_speakers(message["participants"])
            elif kind == "resend":
                sub = self.sessions.get(message["session"])
                if sub is not None:
                    asyncio.ensure_future(sub.resend_offer())
            elif kind == "trim":  # GET /debug/load?trim=1: tell freed memory from live memory
                gc.collect()
                release_memory()
                self.send({"type": "reply", "id": message["id"], "ok": True})
            elif kind == "dc_send":
                self._dc_send(message["sessions"], message["text"])
            elif kind == "trickle":
                asyncio.ensure_future(self._trickle(message))
            elif kind == "restart_ice":
                asyncio.ensure_future(self._restart_ice(message))
            elif kind == "close":
                sub = self._forget(message["session"])
                if sub is not None:
                    await sub.close()
            else:
                logger.warning("worker %d: unknown control message %r", self.index, kind)
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("worker %d: bad %s message: %s", self.index, kind, exc)

    def _layer_states(self, stream: int, states: list[str]) -> None:
        """The main process's view of a simulcast track's layers (sfu/liveness.py): this worker receives
        only the layers its legs forward, so its own packet times say nothing of the others."""
        track = self.streams.get(stream)
        if track is None or not track.layers or len(states) != len(track.layers):
            return
        for layer, state in zip(track.layers, states):
            layer.liveness.reported = state
        for sub in self.sessions.values():
            if sub.downtrack(track.track_id) is not None:
                sub.allocate()

    def _layer(self, track: MirrorTrack, streams: list[int], rids: list[str], states: list[str] | None = None) -> None:
        """Make `track` a simulcast track of the layers relayed on `streams` (announced before it)."""
        layers = [self.streams.get(s) for s in streams[:-1]]
        if streams[-1] != track.stream or len(rids) != len(streams) or any(
                layer is None or layer.face is not None for layer in layers):
            logger.warning("worker %d: track %s names layers %s that were not announced; it is forwarded as "
                           "one stream", self.index, track.track_id, streams)
            self.send({"type": "wants", "stream": track.stream, "layers": [len(streams) - 1]})
            return
        track.set_layers([*layers, track], rids)
        if states is None or len(states) != len(track.layers):
            states = [LIVE] * len(track.layers)  # an older main process: every layer counts as delivering
        for layer, state in zip(track.layers, states):
            layer.face = track
            layer.liveness.reported = state

    def _forget(self, sid: str) -> Subscriber | None:
        self.bindings.pop(sid, None)
        self._senders.pop(sid, None)
        sub = self.sessions.pop(sid, None)
        for _, leg in sub.legs if sub is not None else ():
            for name in LEG_COUNTERS:
                self.closed_legs[name] += getattr(leg, name)
        return sub

    # -- room participants' subscriber connections (server-offered, with the data channel) ----------

    def _subscribe(self, message: dict) -> None:
        """Create the session's connection or change what it carries; offer when something changed."""
        sid = message["session"]
        sub = self.sessions.get(sid)
        changed = sub is None
        if sub is None:
            sub = self.sessions[sid] = self._room_subscriber(sid, message.get("identity") or sid)
        wanted = set(message["streams"])
        for _, downtrack in list(sub.legs):
            up = downtrack.uptrack
            if up is not None and up.stream not in wanted:
                sub.remove_track(downtrack.track_id)
                changed = True
        carried = {d.uptrack.stream for _, d in sub.legs if d.uptrack is not None}
        for stream in message["streams"]:
            track = self.streams.get(stream)
            if track is not None and stream not in carried:
                sub.add_track(track)
                changed = True
        paused = set(message.get("paused", ()))  # Last-N: legs the main process's room does not select
        for _, downtrack in sub.legs:
            if downtrack.kind == "video" and downtrack.uptrack is not None:
                downtrack.set_selected(downtrack.uptrack.stream not in paused)
        if changed:
            asyncio.ensure_future(sub.negotiate())

    def _room_subscriber(self, sid: str, identity: str) -> Subscriber:
        async def send_offer(sdp: str, tracks: list[dict]) -> None:
            # The main process labels the sections with its own track descriptions (muted, names).
            mids = [{"mid": t.mid, "stream": d.uptrack.stream} for t, d in sub.legs
                    if d.uptrack is not None and t.mid is not None]
            self.send({"type": "offer", "session": sid, "sdp": sdp, "mids": mids})

        sub = Subscriber(identity, self.peers, send_offer, on_quality=self._quality_sender(sid))
        channel = sub.data_channel
        channel.on("open", lambda: self.send({"type": "dc_state", "session": sid, "state": "open"}))
        channel.on("close", lambda: self.send({"type": "dc_state", "session": sid, "state": "closed"}))
        channel.on("message", lambda text: self._dc_message(sid, text))
        return sub

    def _dc_message(self, sid: str, text) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if len(text) > MAX_DC_TEXT:
            self.dc_refused += 1
            logger.warning("worker %d: a %d-character data channel message from %s was dropped (limit %d)",
                           self.index, len(text), sid, MAX_DC_TEXT)
            return
        self.send({"type": "dc_message", "session": sid, "text": text})

    def _dc_send(self, sessions: list[str], text: str) -> None:
        for sid in sessions:
            sub = self.sessions.get(sid)
            channel = sub.data_channel if sub is not None else None
            if channel is None or channel.readyState != "open" or channel.bufferedAmount > MAX_BUFFERED_BYTES:
                self.dc_dropped += 1  # a member this far behind (or gone) misses it, as in-process
                continue
            sender = self._senders.get(sid)
            if sender is None or sender.channel is not channel:
                sender = self._senders[sid] = DataChannelSender(channel)
            sender.send(text)
            self.dc_sent += 1

    async def _answer(self, message: dict) -> None:
        await self._session_request(message, lambda sub: sub.on_answer(message["sdp"]))

    async def _session_request(self, message: dict, apply) -> None:
        """Run `apply(session's Subscriber)` for a request about one session; reply ok or the error."""
        sub = self.sessions.get(message["session"])
        reply: dict = {"type": "reply", "id": message["id"], "ok": False}
        if sub is None:
            reply["error"] = "no such session"
        else:
            try:
                reply.update(await apply(sub) or {}, ok=True)
            except SdpError as exc:
                reply["error"] = str(exc)
                code = next((c for c, cls in REFUSAL_CODES.items() if type(exc) is cls), None)
                if code is not None:
                    reply["code"] = code
            except Exception as exc:  # one session's failure never takes the worker down
                logger.exception("worker %d: a %s request failed", self.index, message["type"])
                reply["error"] = f"internal error: {exc}"
        self.send(reply)

    def _quality_sender(self, sid: str):
        def changed(downtrack, change) -> None:
            up = downtrack.uptrack
            if up is not None:
                self.send({"type": "quality", "session": sid, "stream": up.stream, "quality": change.quality,
                           "previous": change.previous, "loss": change.loss, "rtt": change.rtt})
        return changed

    def _tracks(self, streams: dict) -> dict[str, MirrorTrack]:
        return {kind: self.streams[s] for kind, s in streams.items() if s in self.streams}

    async def _whep(self, message: dict, sub: Subscriber) -> None:
        sid = message["session"]
        try:
            sdp = await sub.answer(message["offer"], self._tracks(message["tracks"]))
            # A "bind" may have come while the answer was being made: the latest binding wins.
            sub.bind(self._tracks(self.bindings.get(sid, message["tracks"])))
        except SdpError as exc:
            self._forget(sid)
            await sub.close()
            self.send({"type": "reply", "id": message["id"], "ok": False, "error": str(exc)})
            return
        except Exception as exc:  # one viewer's failure never takes the worker down
            logger.exception("worker %d: WHEP answer failed", self.index)
            self._forget(sid)
            await sub.close()
            self.send({"type": "reply", "id": message["id"], "ok": False, "error": f"internal error: {exc}"})
            return
        self.send({"type": "reply", "id": message["id"], "ok": True, "sdp": sdp})

    async def _trickle(self, message: dict) -> None:
        async def add(sub: Subscriber) -> None:
            ufrag = message.get("ufrag")
            if ufrag is not None and ufrag != ice_credentials(sub.pc).get("remote_ufrag"):
                raise OtherIceSession("the candidates are for another ICE session")
            for candidate in message["candidates"]:
                await add_remote_candidate(sub.pc, candidate)

        await self._session_request(message, add)

    async def _restart_ice(self, message: dict) -> None:
        """The room protocol's `restart_ice` (the worker offers new credentials), or a WHEP PATCH's
        restart with the client's (`remote`; the reply carries the worker's), as in-process."""
        async def restart(sub: Subscriber) -> dict | None:
            remote = message.get("remote")
            if remote is None:
                await sub.restart_ice()  # IceRestartRefused when ICE is not up; the offer goes out as `offer`
                return None
            candidates = [parse_candidate(c["candidate"], c.get("sdpMid")) for c in remote["candidates"]
                          if c["candidate"]]
            ufrag, pwd, local = await restart_ice_from(sub.pc, remote["ufrag"], remote.get("pwd"), candidates,
                                                       remote["end_of_candidates"])
            return {"ice": {"ufrag": ufrag, "pwd": pwd, "candidates": local}}

        await self._session_request(message, restart)

    # -- media --------------------------------------------------------------------------------

    def _on_media(self) -> None:
        # Drain everything queued: one wake-up per batch of datagrams, not per packet.
        recv = self._media.recv
        streams = self.streams
        arrival = time.time()
        while True:
            try:
                data = recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            self.datagrams += 1
            try:
                packets = decode_datagram(data)
            except RelayError as exc:
                self.bad_datagrams += 1
                if self.bad_datagrams == 1:
                    logger.warning("worker %d: dropping a malformed relay datagram: %s", self.index, exc)
                continue
            for packet in packets:
                track = streams.get(packet.stream)
                if track is None:
                    self.unknown_stream += 1
                    continue
                self.packets += 1
                track.on_relayed(packet, arrival)

    # -- stats --------------------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            self.send(self.stats())

    def stats(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "type": "stats",
            "cpu": usage.ru_utime + usage.ru_stime,
            "rss_kb": usage.ru_maxrss,
            "relay": {"datagrams": self.datagrams, "packets": self.packets,
                      "unknown_stream": self.unknown_stream, "bad_datagrams": self.bad_datagrams,
                      "repairs": sum(t.repairs for t in self.streams.values()),
                      "misses_asked": sum(t.misses_asked for t in self.streams.values())},
            "load": {**self.load.stats(), "refusing": self.load.refusal()},
            "data": {"sent": self.dc_sent, "dropped": self.dc_dropped, "refused": self.dc_refused},
            "closed_legs": dict(self.closed_legs),
            "sessions": {sid: {"state": sub.pc.connectionState,
                               "legs": [d.stats() for _, d in sub.legs],
                               **({"twcc": dict(sub.twcc_stats)} if sub.twcc is not None else {})}
                         for sid, sub in self.sessions.items()},
        }


LEG_COUNTERS = ("packets_sent", "retransmits", "nack_misses")


async def _no_offer(sdp: str, tracks: list[dict]) -> None:
    raise SdpError("a WHEP session cannot be renegotiated by the server")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfu.worker")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--media-fd", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s worker{args.index}[%(process)d] %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    from sfu.aiortc_seam import check_compatibility, prefer_aes128_gcm

    check_compatibility()
    prefer_aes128_gcm()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    control = socket.socket(fileno=args.control_fd)
    media = socket.socket(fileno=args.media_fd)
    worker = Worker(args.index, control, media)

    async def run() -> None:
        loop = asyncio.get_event_loop()
        loop.add_signal_handler(signal.SIGTERM, worker.stop)
        # Ctrl-C in a terminal reaches the whole process group: the main process decides when we stop.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        await worker.run()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
