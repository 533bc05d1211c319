"""Several Stoa nodes as one service, with Redis as the shared state (docs/scaling.md, "Several nodes").

Imported only when `redis` is set: one node without Redis never loads this module or redis-py.

Keys (every one behind the `redis_prefix` setting, so deployments and test runs can share a server):
- `{prefix}nodes` (hash) node id -> JSON node record, refreshed every REFRESH_S; a record older than
  GONE_S is a node that is gone (LiveKit's `nodes` hash and its 2 s / 5 s figures).
- `{prefix}room_node_map` (hash) room -> home node id, set by one Lua script, so two nodes placing the
  same room at once agree on one home (LiveKit's `room_node_map`).

A heartbeat PINGs Redis every HEARTBEAT_S with its own timeout: redis-py alone never notices a Redis that
accepts connections but stops answering (SIGSTOP). After DOWN_AFTER_S without an answer the node says so
(log, /readyz) and serves the rooms it hosts, and new ones, on its own until Redis answers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from signaling.routing import ClusterError

logger = logging.getLogger(__name__)

REFRESH_S = 2.0        # the node record is rewritten this often
GONE_S = 5.0           # ... and a record this old is a node that is gone
STALE_S = REFRESH_S + 1.0  # a home whose record is this old missed a refresh: probed before a join goes there
HEARTBEAT_S = 1.0      # PING this often
PING_TIMEOUT_S = 1.0   # a PING not answered within this is a failure
DOWN_AFTER_S = 3.0     # no answer for this long: Redis is down (detected within 3-4 s, under the 5 s asked)
ROUTE_TIMEOUT_S = 1.0  # a join waits at most this long for Redis before the room is served here
PROBE_TIMEOUT_S = 0.5  # a node suspected gone must answer its /healthz within this, or it counts as gone
BUSY_NODE = 0.8        # a node whose event loop is this busy is placed on last
RELEASE_AFTER_S = 15.0  # a claimed room with nobody in it on its home is given back after this long

# KEYS[1] room_node_map, KEYS[2] nodes; ARGV room, now, candidate, gone_s. Returns the room's home: the one
# recorded if that node is alive and not draining, else the candidate, recorded.
PLACE = """
local home = redis.call('HGET', KEYS[1], ARGV[1])
if home then
  local record = redis.call('HGET', KEYS[2], home)
  if record then
    local node = cjson.decode(record)
    if tonumber(ARGV[2]) - node.updated_at < tonumber(ARGV[4]) and not node.draining then return home end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return ARGV[3]
"""
# KEYS[1] nodes; ARGV node, record: delete a node's record only if it is still the one read (not refreshed since).
EVICT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""
# KEYS[1] room_node_map; ARGV room, node: delete the mapping only if it still names this node.
RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


@dataclass
class Node:
    id: str
    address: str  # public base URL, e.g. https://node-a.example.org
    capacity: int
    participants: int
    rooms: dict[str, int]
    load: float
    busy: float
    draining: bool
    updated_at: float

    @classmethod
    def from_json(cls, text: str | bytes) -> "Node":
        data = json.loads(text)
        return cls(id=str(data["id"]), address=str(data["address"]), capacity=int(data.get("capacity", 0)),
                   participants=int(data.get("participants", 0)), rooms=dict(data.get("rooms", {})),
                   load=float(data.get("load", 0.0)), busy=float(data.get("busy", 0.0)),
                   draining=bool(data.get("draining", False)), updated_at=float(data["updated_at"]))

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    def alive(self, now: float) -> bool:
        return now - self.updated_at < GONE_S


def connect(url: str) -> aioredis.Redis:
    """A client tuned for an outage: redis-py's defaults (no socket timeout, no health checks) wait forever
    on a hung server and hand back connections that died while idle (issue 13 lost 66 messages that way)."""
    return aioredis.Redis.from_url(
        url, socket_timeout=2.0, socket_connect_timeout=2.0, socket_keepalive=True,
        health_check_interval=5, retry_on_timeout=True,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2), decode_responses=True)


def node_load(participants: int, capacity: int) -> float:
    """What placement compares: the share of its capacity a node carries (participants when unknown)."""
    return participants / capacity if capacity > 0 else float(participants)


class Cluster:
    """This node's view of the others: its record, the heartbeat, and where rooms live."""

    def __init__(self, redis: aioredis.Redis, *, node_id: str, address: str, prefix: str = "stoa:",
                 capacity: int = 0, census: Callable[[], dict[str, int]] = dict,
                 busy: Callable[[], float] = lambda: 0.0, clock: Callable[[], float] = time.time):
        self.redis = redis
        self.node_id, self.address, self.capacity = node_id, address.rstrip("/"), capacity
        self.nodes_key, self.map_key = prefix + "nodes", prefix + "room_node_map"
        self.census, self.busy, self.clock = census, busy, clock
        self.is_edge: Callable[[str], bool] = lambda room: False  # rooms relayed here from their home
        self.relaying: Callable[[str], bool] = lambda room: False  # rooms relayed from here to edges
        self.draining = False
        self.healthy = False
        self.last_ok = time.monotonic()
        self.down_since: float | None = None
        self.last_error = ""
        self.claimed: dict[str, float] = {}  # rooms this node was made home of (monotonic time)
        self._place = redis.register_script(PLACE)
        self._release = redis.register_script(RELEASE)
        self._evict = redis.register_script(EVICT)
        self.peers: dict[str, Node] = {}  # the other live nodes, as of the last refresh
        self._tasks: list[asyncio.Task] = []

    # ---- life ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Register (failing loudly if Redis cannot be reached at start-up), then keep it up."""
        try:
            await asyncio.wait_for(self.redis.ping(), 5.0)
            await self.refresh()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            await self.redis.aclose()
            raise ClusterError(f"cannot reach Redis ({exc!r}): is it running, and is --redis (or STOA_REDIS) "
                               "right?") from None
        self.healthy = True
        logger.info("cluster: node %s (%s) registered in Redis", self.node_id, self.address)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat(), name="stoa-redis-heartbeat"),
                       loop.create_task(self._refresher(), name="stoa-node-refresh")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self._leave(), 2.0)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            logger.warning("cluster: could not remove node %s from Redis (%s); it expires in %.0f s",
                           self.node_id, exc, GONE_S)
        await self.redis.aclose()

    async def _leave(self) -> None:
        for room in list(self.claimed):
            await self._release(keys=[self.map_key], args=[room, self.node_id])
        await self.redis.hdel(self.nodes_key, self.node_id)

    # ---- the node record -------------------------------------------------------------------------------
    def record(self) -> Node:
        rooms = self.census()
        participants = sum(rooms.values())
        return Node(id=self.node_id, address=self.address, capacity=self.capacity, participants=participants,
                    rooms=rooms, load=node_load(participants, self.capacity), busy=round(self.busy(), 3),
                    draining=self.draining, updated_at=self.clock())

    async def refresh(self) -> None:
        record = self.record()
        await self.redis.hset(self.nodes_key, self.node_id, record.to_json())
        self.peers = {k: n for k, n in (await self.nodes()).items() if k != self.node_id}
        # Rooms served here stay in the map (a restarted Redis forgot them), unless another node has them.
        for room, participants in record.rooms.items():
            if participants and not self.is_edge(room):
                await self._claim(room)
        await self._release_empty(record.rooms)

    async def _release_empty(self, rooms: dict[str, int]) -> None:
        now = time.monotonic()
        for room, since in list(self.claimed.items()):
            if rooms.get(room) or self.relaying(room):  # an edge's viewers wait here for the teacher
                self.claimed[room] = now
            elif now - since > RELEASE_AFTER_S:
                del self.claimed[room]
                await self._release(keys=[self.map_key], args=[room, self.node_id])

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            if not self.healthy:
                continue  # the heartbeat brings the record back as soon as Redis answers
            try:
                await asyncio.wait_for(self.refresh(), REFRESH_S)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                logger.debug("cluster: refresh failed: %r", exc)

    async def _heartbeat(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.redis.ping(), PING_TIMEOUT_S)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                silent = time.monotonic() - self.last_ok
                if self.healthy and silent >= DOWN_AFTER_S:
                    self.healthy, self.down_since = False, self.last_ok
                    logger.error("cluster: Redis is not answering (%s, nothing for %.1f s); node %s keeps "
                                 "serving the rooms it hosts and places new rooms here until it is back",
                                 self.last_error, silent, self.node_id)
            else:
                self.last_ok = time.monotonic()
                if not self.healthy:
                    await self._recover()
            await asyncio.sleep(max(0.0, HEARTBEAT_S - (time.monotonic() - started)))

    async def _recover(self) -> None:
        try:
            await asyncio.wait_for(self.refresh(), REFRESH_S)  # also claims the rooms it served meanwhile
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            logger.debug("cluster: re-registering failed: %r", exc)
            return
        outage = time.monotonic() - (self.down_since or self.last_ok)
        self.healthy, self.down_since = True, None
        logger.warning("cluster: Redis answers again after %.1f s; node %s is registered again",
                       outage, self.node_id)

    async def mark_draining(self) -> None:
        """Placement skips this node from now on, and its rooms lose it as their home."""
        self.draining = True
        try:
            await asyncio.wait_for(self.refresh(), ROUTE_TIMEOUT_S)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            logger.warning("cluster: could not mark node %s draining in Redis (%r)", self.node_id, exc)

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node_id, "redis": "ok" if self.healthy else "down",
                               "draining": self.draining}
        if not self.healthy:
            out["redis_silent_s"] = round(time.monotonic() - self.last_ok, 1)
            out["redis_error"] = self.last_error
        return out

    # ---- rooms -----------------------------------------------------------------------------------------
    async def nodes(self) -> dict[str, Node]:
        """The nodes that are alive now (records refreshed within GONE_S)."""
        now = self.clock()
        raw = await self.redis.hgetall(self.nodes_key)
        out = {}
        for node_id, text in raw.items():
            try:
                node = Node.from_json(text)
            except (ValueError, KeyError, TypeError):
                logger.warning("cluster: ignoring a malformed node record %r", node_id)
                continue
            if node.alive(now):
                out[node_id] = node
        return out

    def choose(self, nodes: dict[str, Node]) -> str:
        """The least loaded node that takes new rooms; this one on a tie (no redirect)."""
        mine = self.record()
        candidates = {**nodes, self.node_id: mine}
        usable = [n for n in candidates.values() if not n.draining] or [mine]
        # A loop near saturation counts against a node; small differences in busy are noise, not load.
        return min(usable, key=lambda n: (n.load, n.busy > BUSY_NODE, n.id != self.node_id, n.id)).id

    async def home(self, room: str) -> Node | None:
        """Where `room` is served: None for here, else the home node. Placed by load the first time."""
        if not self.healthy:
            return None
        try:
            return await asyncio.wait_for(self._home(room), ROUTE_TIMEOUT_S)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            logger.warning("cluster: routing room %s without Redis (%r): serving it here", room, exc)
            return None

    async def _home(self, room: str) -> Node | None:
        nodes = await self.nodes()
        home = await self._place(keys=[self.map_key, self.nodes_key],
                                 args=[room, self.clock(), self.choose(nodes), GONE_S])
        if home == self.node_id:
            self.claimed[room] = time.monotonic()
            return None
        node = nodes.get(home)
        if node is None:  # placed by another node a moment ago: read its record
            text = await self.redis.hget(self.nodes_key, home)
            node = Node.from_json(text) if text else None
        elif self.clock() - node.updated_at > STALE_S and await self.forget_if_gone(home):
            return await self._home(room)  # its record missed a refresh and it does not answer: place again
        return node

    async def others(self) -> list[str]:
        """The addresses of the other live nodes that take joins (what a page fails over to): read now, or as of
        the last refresh when Redis is slow or down."""
        if self.healthy:
            try:
                self.peers = {k: n for k, n in (await asyncio.wait_for(self.nodes(), ROUTE_TIMEOUT_S)).items()
                              if k != self.node_id}
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                logger.debug("cluster: reading the nodes failed: %r", exc)
        return sorted(n.address for n in self.peers.values() if not n.draining)

    async def forget_if_gone(self, node_id: str) -> bool:
        """A participant lost `node_id` (its page's socket to it broke): if that node's /healthz does not answer,
        its record goes now instead of GONE_S after its last refresh, so its rooms are placed again at once.
        True when the node counts as gone. A record refreshed meanwhile is kept (it was a blip)."""
        if node_id == self.node_id or not self.healthy:
            return False
        try:
            text = await asyncio.wait_for(self.redis.hget(self.nodes_key, node_id), ROUTE_TIMEOUT_S)
            if text is None or not Node.from_json(text).alive(self.clock()):
                return True
            node = Node.from_json(text)
            problem = await probe(node.address)
            if problem is None:
                return False
            if await asyncio.wait_for(self._evict(keys=[self.nodes_key], args=[node_id, text]), ROUTE_TIMEOUT_S):
                logger.warning("cluster: node %s (%s) does not answer (%s) after a participant lost it; it counts "
                               "as gone and its rooms are placed again", node_id, node.address, problem)
            return True
        except (RedisError, OSError, asyncio.TimeoutError, ValueError, KeyError) as exc:
            logger.warning("cluster: could not check on node %s (%r)", node_id, exc)
            return False

    async def _claim(self, room: str) -> None:
        home = await self._place(keys=[self.map_key, self.nodes_key],
                                 args=[room, self.clock(), self.node_id, GONE_S])
        if home == self.node_id:
            self.claimed[room] = time.monotonic()


async def probe(address: str) -> str | None:
    """None when the node at `address` answers /healthz within PROBE_TIMEOUT_S, else what went wrong."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as http:
            async with http.get(address + "/healthz") as resp:
                return None if resp.status == 200 else f"/healthz answered {resp.status}"
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def cluster_ctx(app):
    """cleanup_ctx of an app with `redis` set: register this node, keep it registered, leave on shutdown."""
    from shared.appkeys import PLACEMENT, SETTINGS
    from signaling.room import LOAD, ROOMS
    from signaling.routing import CASCADE, CLUSTER, ClusterPlacement

    settings = app[SETTINGS]

    def census() -> dict[str, int]:
        return {name: len(room.participants) for name, room in app[ROOMS].rooms.items()}

    cluster = Cluster(connect(settings.redis), node_id=settings.node_id, address=settings.public_address,
                      prefix=settings.redis_prefix, capacity=settings.node_capacity, census=census,
                      busy=lambda: app[LOAD].busy)
    cluster.is_edge = lambda room: CASCADE in app and app[CASCADE].is_edge(room)
    cluster.relaying = lambda room: CASCADE in app and bool(app[CASCADE].home_links.get(room))
    await cluster.start()
    app[CLUSTER] = cluster
    app[PLACEMENT] = ClusterPlacement(app)
    try:
        yield
    finally:
        await cluster.close()
