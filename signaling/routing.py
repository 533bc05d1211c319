"""Which node serves a room (docs/scaling.md, "Several nodes"). Without Redis there is one node and the
answer is always "here"; this module then never loads the cluster code or redis-py."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

from shared.appkeys import Placement
from signaling.room import ROOMS

if TYPE_CHECKING:
    from signaling.cascade import Cascade
    from signaling.cluster import Cluster

# This node in a cluster of nodes on Redis (signaling/cluster.py); absent without `redis`.
CLUSTER = web.AppKey("cluster", "Cluster")
# The relay of rooms' broadcasts between nodes (signaling/cascade.py); absent without `redis`.
CASCADE = web.AppKey("cascade", "Cascade")

class ClusterError(Exception):
    """This node cannot join the cluster (Redis unreachable at start-up); the message says what to do."""


# A WebSocket closed because the room lives on another node (after a `redirect` message).
CLOSE_REDIRECT = 4307


async def remote_home(app: web.Application, room: str):
    """The room's home node when that is another node (a signaling.cluster.Node), else None: serve here.
    A room with participants here is served here whatever Redis says (it kept going through an outage), unless
    this node drains."""
    cluster = app.get(CLUSTER)
    if cluster is None:
        return None
    local = app[ROOMS].rooms.get(room)
    cascade = app.get(CASCADE)
    relayed = cascade is not None and cascade.is_edge(room)
    if local is not None and local.participants and not relayed and not cluster.draining:
        return None
    return await cluster.home(room)


def elsewhere(node, path: str, query: str = "") -> str:
    """The URL of `path` (already quoted) on `node`, keeping the query string."""
    return node.address + path + (f"?{query}" if query else "")


class Redirected(Exception):
    """A join that belongs on another node: the room protocol sends `redirect` and closes (CLOSE_REDIRECT)."""

    def __init__(self, node, room: str):
        super().__init__(f"room {room} is served by node {node.id}")
        self.node, self.room = node, room

    def message(self) -> dict:
        ws = "wss" + self.node.address[5:] if self.node.address.startswith("https") else "ws" + self.node.address[4:]
        return {"type": "redirect", "node": self.node.id, "reason": str(self),
                "page": self.node.address + room_page_path(self.room),
                "url": f"{ws}/ws/rooms/{quote(self.room, safe='')}"}


def room_page_path(room: str) -> str:
    return f"/rooms/{quote(room, safe='')}"


class ClusterPlacement(Placement):
    """app[PLACEMENT] on a node in a cluster: what web/ pages need of the routing above."""

    def __init__(self, app: web.Application):
        self.app = app

    def health(self) -> dict:
        return self.app[CLUSTER].health()

    async def elsewhere(self, room: str, path: str, query: str = "", grants=None) -> str | None:
        home = await remote_home(self.app, room)
        if home is None:
            return None
        from signaling.edge_members import spread_here  # the same decision as the page's join will get

        if grants is not None and spread_here(self.app, home, grants):
            return None
        return elsewhere(home, path, query)
