"""Draining this node (docs/scaling.md, "Draining a node"): `stoa drain`, `POST /api/node/drain`, SIGTERM.

A drain stops new joins here, sends each room's room-protocol participants to the room's new home (`redirect`,
close 4307) and ends its WHIP and WHEP sessions there (their clients POST again and are placed elsewhere), when
another node takes the room. A room no other node takes (one node, or every other one draining) goes on until its
participants leave. The node exits when nobody is left, or at the deadline; the usual shutdown then finalizes
the recordings and disconnects whoever stayed. SIGTERM is a drain with no deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from aiohttp import web

from recorder.service import RECORDINGS
from shared.appkeys import DRAIN, SETTINGS
from signaling.room import ROOMS
from signaling.routing import CASCADE, CLOSE_REDIRECT, CLUSTER, Redirected, remote_home

logger = logging.getLogger(__name__)

POLL_S = 0.5            # how often a drain looks whether the node is empty
DEFAULT_DEADLINE_S = 60.0
MAX_DEADLINE_S = 86400.0


class NodeDrain:
    """app[DRAIN] (shared.appkeys.NodeState): whether this node drains, since when, until when, and what is
    left on it."""

    def __init__(self, app: web.Application):
        self.app = app
        self.started: float | None = None   # monotonic
        self.deadline: float | None = None  # monotonic
        self.moved = 0                      # participants sent to other nodes, sessions ended for them
        # How this process stops once drained: `stoa serve` sets it (SIGTERM to itself, so the usual shutdown
        # runs); an app built without it (the test suite's in-process servers) only logs that it is drained.
        self.exit: Callable[[], None] | None = None
        self._task: asyncio.Task | None = None

    @property
    def draining(self) -> bool:
        return self.started is not None

    async def start(self, deadline_s: float) -> dict:
        """Begin draining (a second call only brings the deadline closer); returns status()."""
        now = time.monotonic()
        if self.draining:
            self.deadline = min(self.deadline, now + deadline_s)
            return self.status()
        self.started, self.deadline = now, now + deadline_s
        logger.warning("drain: node %s takes no new joins and exits when empty or in %.0f s",
                       self.node_id, deadline_s)
        await self.move_everyone()
        self._task = asyncio.ensure_future(self._wait())
        return self.status()

    @property
    def node_id(self) -> str:
        return self.app[SETTINGS].node_id

    async def move_everyone(self) -> int:
        """Send every participant of a room another node takes to that node; returns how many moved."""
        cluster = self.app.get(CLUSTER)
        if cluster is None:
            return 0  # one node: its rooms go on here
        await cluster.mark_draining()  # placement skips this node from now on
        if not cluster.healthy:
            return 0  # no Redis to place the rooms with: they go on here
        cascade = self.app.get(CASCADE)
        from signaling import whip  # whip imports this module to refuse joins while draining

        moved = 0
        try:
            for name, room in list(self.app[ROOMS].rooms.items()):
                if not room.participants:
                    continue
                relayed = cascade is not None and cascade.is_edge(name)
                home = None if relayed else await remote_home(self.app, name)
                if home is None and not relayed:
                    continue  # no other node takes rooms: this one goes on here until it ends
                for participant in list(room.participants.values()):
                    to = home or participant.edge_home  # an edge member goes to its room's home
                    if participant.transport == "ws" and to is not None:
                        await participant.send(Redirected(to, name).message())
                        await participant.disconnect(f"moved to node {to.id}", code=CLOSE_REDIRECT)
                    else:  # WHIP and WHEP have no signaling channel: their clients POST again, elsewhere
                        await whip.end_session(self.app, name, participant.session_id,
                                               reason="this node is draining")
                    moved += 1
        except (OSError, asyncio.TimeoutError) as exc:
            logger.warning("drain: cannot place node %s's rooms elsewhere (%r): they go on here",
                           self.node_id, exc)
        self.moved += moved
        if moved:
            logger.info("drain: node %s sent %d participant(s) to other nodes", self.node_id, moved)
        return moved

    def status(self) -> dict:
        rooms = {name: len(room.participants) for name, room in self.app[ROOMS].rooms.items() if room.participants}
        recordings = self.app.get(RECORDINGS)
        now = time.monotonic()
        return {"node": self.node_id, "draining": self.draining,
                "elapsed_s": round(now - self.started, 1) if self.started is not None else None,
                "deadline_in_s": round(max(0.0, self.deadline - now), 1) if self.deadline is not None else None,
                "rooms": rooms, "participants": sum(rooms.values()), "moved": self.moved,
                "recordings": len(recordings.active) if recordings is not None else 0}

    async def _wait(self) -> None:
        while True:
            status = self.status()
            if not status["participants"]:
                logger.warning("drain: node %s is empty after %.1f s; exiting", self.node_id, status["elapsed_s"])
                break
            if time.monotonic() >= self.deadline:
                logger.warning("drain: node %s reached its deadline with %d participant(s) left in %s; exiting",
                               self.node_id, status["participants"], ", ".join(sorted(status["rooms"])))
                break
            await asyncio.sleep(POLL_S)
        if self.exit is not None:
            self.exit()  # the shutdown finalizes recordings and disconnects whoever is left
        else:
            logger.warning("drain: node %s is drained (this process has no exit hook; stop it)", self.node_id)

    async def close(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def setup(app: web.Application) -> None:
    app[DRAIN] = NodeDrain(app)
    app.on_shutdown.append(_on_shutdown)


async def _on_shutdown(app: web.Application) -> None:
    """SIGTERM (or the end of a drain), before everyone is disconnected: whoever is still here and has another
    node to go to goes there."""
    drain = app[DRAIN]
    await drain.close()
    if not drain.draining:
        drain.started = drain.deadline = time.monotonic()
    await drain.move_everyone()


def draining(app: web.Application) -> bool:
    drain = app.get(DRAIN)
    return drain is not None and drain.draining
