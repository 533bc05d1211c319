"""A room's broadcast across nodes (docs/scaling.md): WHEP viewers are served on the node they reach, and
that node (the edge) gets the room's broadcast from the room's home node once, however many of its
viewers watch it. Media travels over UDP in authenticated datagrams (sfu/noderelay.py); the control
messages over a WebSocket the edge opens to the home, `GET /cluster/relay/{room}`, signed with the
cluster secret. Present only with `redis` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from aiohttp import WSMsgType, web

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sfu.noderelay import (EDGE_TO_HOME, HOME_TO_EDGE, EdgeRelay, HomeLink, RelayEndpoint, check_node_message,
                           open_endpoint)
from sfu.relay import RelayError
from signaling.metrics import collecting
from shared.appkeys import SETTINGS
from signaling.room import ROOMS
from signaling.routing import CASCADE, CLOSE_REDIRECT, CLUSTER, Redirected, remote_home

logger = logging.getLogger(__name__)

SIGNATURE_TTL = 60.0    # a signed relay request is good for this long (clock skew between nodes included)
SYNC_TIMEOUT = 5.0      # an edge waits this long for the home's first `broadcast`
IDLE_CLOSE_S = 5.0      # an edge link with no viewer left is closed after this long
SILENT_S = 1.0          # a broadcast with tracks and no packet for this long: the edge probes the home
REHOME_S = 10.0         # an edge that lost its home looks this long for the room's new one, then ends its viewers
REHOME_RETRY_S = 0.25   # ... asking again this often (the teacher's new publish places the room meanwhile)
MAX_CONTROL = 256 * 1024


class CascadeError(Exception):
    """The room's home node cannot relay its broadcast here now (unreachable, refused)."""


def cluster_secret(settings) -> bytes:
    """The key nodes sign relay requests with and derive link keys from: `cluster_secret`, else derived
    from the API secret, which every node of a cluster shares anyway to verify the same tokens."""
    if settings.cluster_secret:
        return settings.cluster_secret.encode()
    return hashlib.sha256(b"stoa cluster secret|" + settings.api_secret.encode()).digest()


def ws_base(address: str) -> str:
    return "ws" + address[4:]  # http -> ws, https -> wss


def sign(secret: bytes, room: str, node: str, udp: str, ts: str) -> str:
    return hmac.new(secret, f"{room}|{node}|{udp}|{ts}".encode(), hashlib.sha256).hexdigest()


class Sender:
    """Control messages to one WebSocket, in order, from synchronous callers (the relay's callbacks)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.queue: asyncio.Queue = asyncio.Queue(4096)
        self.task = asyncio.ensure_future(self._run())

    def __call__(self, message: dict) -> None:
        try:
            self.queue.put_nowait(json.dumps(message, separators=(",", ":")))
        except asyncio.QueueFull:
            logger.warning("relay control: %s dropped, the other node is not reading", message.get("type"))

    async def _run(self) -> None:
        while True:
            text = await self.queue.get()
            if self.ws.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def read_messages(ws, allowed: tuple[str, ...], where: str):
    """The checked control messages of a relay WebSocket; a bad one is logged and skipped."""
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            if msg.type == WSMsgType.ERROR:
                return
            continue
        try:
            message = json.loads(msg.data)
            check_node_message(message, allowed)
        except (ValueError, RelayError) as exc:
            logger.warning("relay control from %s: ignored a message: %s", where, exc)
            continue
        yield message


class Cascade:
    """app[CASCADE]: this node's relay endpoint, the links it sends as a home, the rooms it receives."""

    def __init__(self, app: web.Application, endpoint: RelayEndpoint, secret: bytes, *, node_id: str,
                 advertise: str):
        self.app, self.endpoint, self.secret = app, endpoint, secret
        self.node_id, self.advertise = node_id, advertise  # host:port the homes send our media to
        self.home_links: dict[str, dict[str, HomeLink]] = {}  # room -> edge node -> link
        self.edges: dict[str, "EdgeSubscription"] = {}       # room -> its relay from the home
        self.http = aiohttp.ClientSession()
        self.loss = 0.0  # debug hook: share of relay datagrams dropped on purpose
        self._turns: dict[str, int] = {}  # room -> how many edges were sent down its tree
        self.rehoming: set[str] = set()   # rooms whose home was lost: still relayed rooms, not served here
        self._janitor = asyncio.ensure_future(self._sweep())

    async def close(self) -> None:
        self._janitor.cancel()
        await asyncio.gather(self._janitor, return_exceptions=True)
        for sub in list(self.edges.values()):
            await sub.close(end_sessions=False)
        await self.http.close()
        self.endpoint.close()

    def impair(self, rate: float) -> None:
        self.loss = rate
        for links in self.home_links.values():
            for link in links.values():
                link.impair(rate)

    def is_edge(self, room: str) -> bool:
        return room in self.edges or room in self.rehoming

    async def parent_for(self, room: str, node: str, lost: str = ""):
        """On a room's home: None to relay it to `node` from here, or the edge node (a cluster Node) `node`
        gets it from instead, once `relay_fanout` edge nodes take it from here (a tree, one copy per hop).
        The children are taken in turn, so each level fills evenly. `lost`: the parent `node` lost (it
        stopped relaying and does not answer): it is not chosen again, and its link here is closed."""
        fanout = self.app[SETTINGS].relay_fanout
        links = self.home_links.get(room, {})
        cluster = self.app[CLUSTER]
        if lost in links and lost != node and await cluster.forget_if_gone(lost):
            links.pop(lost).close()  # its socket may take the heartbeat's 7.5 s to say so
            if not links:
                self.home_links.pop(room, None)
        else:
            lost = ""  # it answers here: it stays a parent
        if not fanout or node in links or len(links) < fanout:
            return None
        if any(n not in cluster.peers for n in links):
            await cluster.others()  # an edge that registered since the last refresh
        children = [cluster.peers[n] for n in sorted(links) if n in cluster.peers and n != lost]
        if not children:
            return None
        turn = self._turns[room] = self._turns.get(room, -1) + 1
        return children[turn % len(children)]

    async def edge_for(self, room: str, home, lost: str = "") -> EdgeRelay:
        """The relay of `room`'s broadcast from `home` to this node: opened by the first viewer here.
        `lost`: a parent edge this node's last relay of the room came from, gone (see parent_for)."""
        sub = self.edges.get(room)
        if sub is not None and sub.home_id != home.id:  # the room moved: its viewers here follow the new relay
            await sub.close(end_sessions=False, wait=False)
            sub = None
        if sub is None:
            sub = self.edges[room] = EdgeSubscription(self, room, home, lost)
        try:
            await sub.opened()
        except CascadeError:
            if self.edges.get(room) is sub:
                del self.edges[room]
            raise
        return sub.relay

    def _has_viewers(self, room: str) -> bool:
        local = self.app[ROOMS].rooms.get(room)
        return local is not None and any(p.transport == "whep" for p in local.participants.values())

    async def rehome(self, sub: "EdgeSubscription", reason: str) -> None:
        """`sub`'s home stopped relaying (its socket closed, or its media went silent and /healthz does not
        answer): find the room's home again (placed again if that node is gone) and relay from there, the
        WHEP viewers here keeping their sessions. If this node is the home now, they follow the room here."""
        room = sub.room
        if room in self.rehoming:
            return
        self.rehoming.add(room)
        started = time.monotonic()
        source = sub.source
        logger.warning("relay: room %s lost its relay from node %s (%s); its viewers here keep their sessions "
                       "while its home is found again", room, source, reason)
        try:
            await sub.close(end_sessions=False, wait=False)
            cluster = self.app[CLUSTER]
            gone = await cluster.forget_if_gone(source)  # a dead node's record goes now, not GONE_S later
            if source == sub.home_id:
                await sub.redirect_members()  # their classroom was on that home: they are placed again
            # A parent edge that is gone: the home must not send this node back to it.
            lost = source if gone and source != sub.home_id else ""
            problem = "no answer"
            while time.monotonic() - started < REHOME_S and self._has_viewers(room):
                home = await cluster.home(room)
                if home is None:
                    local = self.app[ROOMS].rooms.get(room)
                    if local is not None:
                        local.rebind_broadcast_viewers()
                    logger.warning("relay: room %s is served by this node now (%.1f s after its relay from node "
                                   "%s ended); its viewers here get its broadcast when one starts", room,
                                   time.monotonic() - started, sub.home_id)
                    return
                try:
                    await self.edge_for(room, home, lost)
                except CascadeError as exc:
                    problem = str(exc)
                    await asyncio.sleep(REHOME_RETRY_S)
                    continue
                logger.warning("relay: room %s comes from node %s again %.1f s after its relay from node %s ended",
                               room, self.edges[room].source, time.monotonic() - started, source)
                return
            if self._has_viewers(room):
                logger.warning("relay: no new home for room %s within %.0f s (%s); its viewers here are ended "
                               "so they join again", room, REHOME_S, problem)
                await sub._end_sessions()
        finally:
            self.rehoming.discard(room)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for room, sub in list(self.edges.items()):
                local = self.app[ROOMS].rooms.get(room)
                if sub.onward or (local is not None and any(p.transport == "whep" or p.edge_home is not None
                                                            for p in local.participants.values())):
                    sub.last_used = now
                elif now - sub.last_used > IDLE_CLOSE_S:
                    await sub.close(end_sessions=False)

    def status(self) -> dict:
        return {"home_links": {room: {node: link.describe() for node, link in links.items()}
                               for room, links in self.home_links.items()},
                "edge_rooms": {room: {"home": sub.home_id, "packets": sub.relay.packets}
                               for room, sub in self.edges.items()},
                "rejected_datagrams": dict(self.endpoint.rejected)}


class EdgeSubscription:
    """On an edge: the WebSocket to the room's home and the EdgeRelay its messages drive."""

    def __init__(self, cascade: Cascade, room: str, home, lost: str = "") -> None:
        self.cascade, self.room, self.home_id = cascade, room, home.id
        self.lost = lost  # the parent the last relay of this room came from, if it was lost
        self.home_address = home.address
        self.ws = None
        self.sender: Sender | None = None
        self.relay = EdgeRelay(cascade.endpoint, cascade.secret, self._send, self._rebind)
        self.onward: dict = {}  # the next edges' relay sockets (a tree) -> their rebind
        self.last_used = time.monotonic()
        self.closed = False
        self._open = asyncio.ensure_future(self._connect())
        self._reader: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None

    def _send(self, message: dict) -> None:
        if self.sender is not None:
            self.sender(message)

    def _rebind(self, tracks) -> None:
        for rebind in list(self.onward.values()):
            rebind()
        local = self.cascade.app[ROOMS].rooms.get(self.room)
        if local is None:
            return
        for p in local.participants.values():
            if p.transport == "whep" and p.subscriber is not None:
                p.subscriber.bind(tracks)
        if any(p.edge_home is not None for p in local.participants.values()):
            from signaling.edge_members import rebind  # redis-py's side of the code

            rebind(local, tracks)

    async def opened(self) -> None:
        await asyncio.shield(self._open)

    async def _connect(self) -> None:
        c = self.cascade
        ts = str(int(time.time()))
        fields = {"node": c.node_id, "udp": c.advertise, "ts": ts,
                  "sig": sign(c.secret, self.room, c.node_id, c.advertise, ts)}
        if self.lost:
            fields["lost"] = self.lost  # unsigned: at worst it makes the home probe that node
        query = urlencode(fields)
        url = f"{ws_base(self.home_address)}/cluster/relay/{quote(self.room, safe='')}?{query}"
        try:
            self.ws = await c.http.ws_connect(url, heartbeat=5.0, max_msg_size=MAX_CONTROL,
                                              timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise CascadeError(f"cannot reach node {self.home_id} to relay room {self.room}: {exc}") from None
        self.sender = Sender(self.ws)
        self._reader = asyncio.ensure_future(self._read())
        try:
            await asyncio.wait_for(asyncio.shield(self.relay.synced), SYNC_TIMEOUT)
        except asyncio.TimeoutError:
            await self.close(end_sessions=False)
            raise CascadeError(f"node {self.home_id} did not start relaying room {self.room} "
                               f"within {SYNC_TIMEOUT:.0f} s") from None
        self._watcher = asyncio.ensure_future(self._watch())
        logger.info("relay: room %s comes from node %s (link %s)", self.room, self.home_id, self.relay.link)

    @property
    def source(self) -> str:
        """The node this room's relay comes from: its home, or a parent edge in a relay tree."""
        return self.relay.source or self.home_id

    def _lost(self, reason: str) -> None:
        if not self.closed:
            asyncio.ensure_future(self.cascade.rehome(self, reason))

    async def _watch(self) -> None:
        """A home that hangs (or a network that drops everything) keeps the socket open for the heartbeat's
        7.5 s: a broadcast that goes silent for SILENT_S makes the edge probe the home's /healthz, as a page
        that lost its node does. A home that answers is left alone (a muted or paused source)."""
        cluster = self.cascade.app[CLUSTER]
        seen, quiet_since = self.relay.packets, time.monotonic()
        # In a tree the relay comes from a parent edge: that is the node to probe. (A hung home behind a
        # healthy parent is the parent's to notice; it then closes its children's sockets.)
        while not self.closed:
            await asyncio.sleep(SILENT_S / 4)
            now = time.monotonic()
            if self.relay.packets != seen or not self.relay.broadcast_tracks():
                seen, quiet_since = self.relay.packets, now
            elif now - quiet_since >= SILENT_S:
                source = self.source
                if await cluster.forget_if_gone(source):
                    self._lost(f"no media for {now - quiet_since:.1f} s and node {source} does not answer")
                    return
                seen, quiet_since = self.relay.packets, time.monotonic()

    async def _read(self) -> None:
        try:
            async for message in read_messages(self.ws, HOME_TO_EDGE, f"node {self.home_id}"):
                self.relay.on_control(message)
        finally:
            self._lost("its relay socket closed")

    async def close(self, *, end_sessions: bool, wait: bool = True) -> None:
        """`wait` False: the socket's closing handshake is not waited for (a hung home never answers it)."""
        if self.closed:
            return
        self.closed = True
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        if self.cascade.edges.get(self.room) is self:
            del self.cascade.edges[self.room]
        self.relay.close()
        for child in list(self.onward):  # the next edges lose their source: they end their viewers too
            await child.close()
        if self.sender is not None:
            await self.sender.close()
        if self.ws is not None:
            if wait:
                await self.ws.close()
            else:
                asyncio.ensure_future(self.ws.close())
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        if end_sessions:
            await self._end_sessions()

    async def _end_sessions(self) -> None:
        from signaling import whip  # whip uses this module to place viewers

        app = self.cascade.app
        local = app[ROOMS].rooms.get(self.room)
        for p in list(local.participants.values()) if local is not None else []:
            if p.transport == "whep":
                await whip.end_session(app, self.room, p.session_id, reason=f"node {self.home_id} stopped relaying")
        await self.redirect_members()

    async def redirect_members(self) -> None:
        """Edge members (signaling/edge_members.py) reload from here and are placed again."""
        app = self.cascade.app
        local = app[ROOMS].rooms.get(self.room)
        for p in list(local.participants.values()) if local is not None else []:
            if p.edge_home is not None:
                await p.send(Redirected(app[CLUSTER].record(), self.room).message())
                await p.disconnect(f"node {self.home_id} stopped relaying this room", code=CLOSE_REDIRECT)


async def relay_socket(request: web.Request) -> web.StreamResponse:
    """On the home node: an edge asks for a room's broadcast; it goes out over UDP while this socket lives."""
    app = request.app
    cascade = app.get(CASCADE)
    if cascade is None:
        raise web.HTTPNotFound(text="this node relays nothing (no redis setting)\n")
    room_name = request.match_info["room"]
    q = request.query
    node, udp, ts, sig = q.get("node", ""), q.get("udp", ""), q.get("ts", ""), q.get("sig", "")
    try:
        fresh = abs(time.time() - int(ts)) < SIGNATURE_TTL
    except ValueError:
        fresh = False
    if not fresh or not hmac.compare_digest(sign(cascade.secret, room_name, node, udp, ts), sig):
        raise web.HTTPForbidden(text="relay request not signed with this cluster's secret (or expired)\n")
    host, _, port = udp.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise web.HTTPBadRequest(text="udp must be host:port\n")
    home = await remote_home(app, room_name)
    sub = None
    if home is None:  # the room's home: relay it, or send the edge one level down the tree
        parent = await cascade.parent_for(room_name, node, request.query.get("lost", ""))
        if parent is not None:
            logger.info("relay: room %s has %d edge nodes here; node %s gets it from node %s", room_name,
                        len(cascade.home_links.get(room_name, {})), node, parent.id)
            # An http(s) URL: aiohttp follows a redirect of a WebSocket handshake only to one (the GET repeated).
            raise web.HTTPTemporaryRedirect(f"{parent.address}/cluster/relay/"
                                            f"{quote(room_name, safe='')}?{request.query_string}")
    else:  # an edge asked to relay onward (a tree): its own relay of the room is the source
        try:
            await cascade.edge_for(room_name, home)
        except CascadeError as exc:
            raise web.HTTPServiceUnavailable(text=f"{exc}\n") from None
        sub = cascade.edges[room_name]
    ws = web.WebSocketResponse(heartbeat=5.0, max_msg_size=MAX_CONTROL)
    await ws.prepare(request)
    sender = Sender(ws)
    link = HomeLink(cascade.endpoint, cascade.secret, (host.strip("[]"), int(port)), sender)
    previous = cascade.home_links.setdefault(room_name, {}).get(node)
    if previous is not None:
        previous.close()
    cascade.home_links[room_name][node] = link
    link.impair(cascade.loss)
    manager = app[ROOMS]
    attached = []

    def rebind(event: str | None = None, track=None) -> None:
        room = manager.rooms.get(room_name)
        link.bind(room.broadcast_tracks(exclude=track if event == "unpublished" else None) if room else {})

    def attach(room) -> None:
        if room.name == room_name and room not in attached:
            room.track_listeners.append(rebind)
            attached.append(room)
            rebind()

    def rebind_onward() -> None:
        link.bind(sub.relay.broadcast_tracks())

    sender({**link.hello, "node": cascade.node_id})
    if sub is not None:
        sub.onward[ws] = rebind_onward
        rebind_onward()
    else:
        manager.room_listeners.append(attach)
        if room_name in manager.rooms:
            attach(manager.rooms[room_name])
        else:
            rebind()
    logger.info("relay: sending room %s to node %s at %s (link %d%s)", room_name, node, udp, link.link,
                f", onward from node {sub.home_id}" if sub is not None else "")
    try:
        async for message in read_messages(ws, EDGE_TO_HOME, f"node {node}"):
            link.on_control(message)
    finally:
        link.close()
        if sub is not None:
            sub.onward.pop(ws, None)
        with contextlib.suppress(ValueError):
            manager.room_listeners.remove(attach)
        for room in attached:
            with contextlib.suppress(ValueError):
                room.track_listeners.remove(rebind)
        if cascade.home_links.get(room_name, {}).get(node) is link:
            del cascade.home_links[room_name][node]
            if not cascade.home_links[room_name]:
                del cascade.home_links[room_name]
        await sender.close()
        await ws.close()
        logger.info("relay: stopped sending room %s to node %s", room_name, node)
    return ws


async def cascade_ctx(app: web.Application):
    settings = app[SETTINGS]
    endpoint = await open_endpoint(settings.host, settings.relay_port)
    host = urlsplit(settings.public_address).hostname or settings.host
    cascade = app[CASCADE] = Cascade(app, endpoint, cluster_secret(settings), node_id=settings.node_id,
                                     advertise=f"{host}:{endpoint.port}")
    with collecting(app, CascadeCollector(cascade)):
        try:
            yield
        finally:
            await cascade.close()


class CascadeCollector:
    """/metrics: the links this node sends as a home (one per room and edge node) and receives as an edge."""

    def __init__(self, cascade: Cascade):
        self.cascade = cascade

    def collect(self):
        links = GaugeMetricFamily("stoa_relay_node_links", "Rooms relayed from this node, per edge node",
                                  labels=["node"])
        sent = CounterMetricFamily("stoa_relay_node_packets", "RTP packets relayed to each edge node (live links)",
                                   labels=["node"])
        per_node: dict[str, list] = {}
        for room_links in self.cascade.home_links.values():
            for node, link in room_links.items():
                per_node.setdefault(node, []).append(link)
        for node, node_links in sorted(per_node.items()):
            links.add_metric([node], len(node_links))
            sent.add_metric([node], sum(link.packets_relayed for link in node_links))
        yield links
        yield sent
        yield CounterMetricFamily("stoa_relay_node_repairs", "Packets resent to edge nodes for their NACK misses "
                                  "(live links)", value=sum(link.describe()["repairs"] for links in
                                                            self.cascade.home_links.values()
                                                            for link in links.values()))
        yield GaugeMetricFamily("stoa_relay_edge_rooms", "Rooms relayed to this node from their home",
                                value=len(self.cascade.edges))
        rejected = CounterMetricFamily("stoa_relay_rejected_datagrams",
                                       "Relay datagrams dropped, by reason: unknown_link (also a link's first "
                                       "datagrams racing its hello), bad_tag, replay, malformed",
                                       labels=["reason"])
        for reason, count in self.cascade.endpoint.rejected.items():
            rejected.add_metric([reason], count)
        yield rejected


def setup(app: web.Application) -> None:
    app.router.add_get("/cluster/relay/{room}", relay_socket)
    app.cleanup_ctx.append(cascade_ctx)
