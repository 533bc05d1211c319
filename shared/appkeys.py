"""The app keys every layer reads: the settings, the API key ring and the clock (aiohttp `web.AppKey`s, typed).

Every other key lives in the layer that owns its resource, beside its cleanup context (or, when the
composition root in stoa/app.py creates it, beside the class it holds), so a layer only ever reads keys
from itself or below: `storage.store.STORE`, `signaling.room.ROOMS`/`LOAD`/`WORKERS`,
`recorder.service.RECORDINGS`, `signaling.api.SESSIONS`/`TUTORING`/`WEBHOOKS`, `signaling.notify.NOTIFY`,
`signaling.classroom_bridge.DATA_HANDLER`, `signaling.metrics.METRICS_REGISTRY`.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from shared.auth import Grants
from shared.clock import Clock
from shared.config import Settings


class KeySource(Protocol):
    """The API keys in force (settings plus the `api_keys` table, minus revoked): signaling.api.identity.KeyRing,
    created by signaling.api.services_ctx."""

    async def active(self) -> dict[str, str]: ...

    async def verify(self, token: str, *, room: str | None = None) -> Grants: ...


class Placement(Protocol):
    """Which node serves a room when several nodes share Redis (signaling.routing.ClusterPlacement); the
    key is absent on a single node. web/ pages read it to redirect and to answer /readyz."""

    def health(self) -> dict: ...

    async def elsewhere(self, room: str, path: str, query: str = "", grants=None) -> str | None:
        """The URL of `path` on the room's home node when that is another node, else None (serve here).
        With `grants` (a room page's token): None too when this node would serve that join as an edge member."""


class NodeState(Protocol):
    """Whether this node drains (signaling.drain.NodeDrain, always present in an app from stoa.app): web/
    pages read it to answer /readyz."""

    @property
    def draining(self) -> bool: ...

    def status(self) -> dict: ...


SETTINGS = web.AppKey("settings", Settings)
KEYRING = web.AppKey("keyring", KeySource)
PLACEMENT = web.AppKey("placement", Placement)
DRAIN = web.AppKey("drain", NodeState)
CLOCK = web.AppKey("clock", Clock)  # set by stoa.app.build_app: what the room timers sleep on (SYSTEM_CLOCK)


async def active_api_keys(app: web.Application) -> dict[str, str]:
    """The API keys whose tokens and Basic credentials are good now: the app's key ring (revocations
    applied), or the configured keys in an app built without one."""
    return await app[KEYRING].active() if KEYRING in app else app[SETTINGS].all_api_keys()
