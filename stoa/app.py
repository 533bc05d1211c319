"""Builds the aiohttp Application: routes, and a startup/cleanup hook for every resource."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from recorder.service import recordings_ctx
from sfu.aiortc_seam import (check_compatibility, enable_simulcast, enable_transport_cc, prefer_aes128_gcm,
                             register_h264_profiles)
from sfu.overload import LoadMonitor, OverloadPolicy
from sfu.peer import IceSettings, PeerFactory
from shared.appkeys import CLOCK, SETTINGS
from shared.clock import SYSTEM_CLOCK, Clock
from shared.config import Settings
from signaling import api, classroom_bridge, debug, drain, metrics, whip, ws
from signaling.room import LOAD, ROOMS, RoomManager
from stoa.workers import workers_ctx
from storage.store import STORE
from web import dashboards, pages, review

logger = logging.getLogger(__name__)
WEB_DIR = Path(pages.__file__).parent


def build_app(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> web.Application:
    """`clock`: what the rooms' timers sleep on (a test's FakeClock moves them by hand)."""
    check_compatibility()
    prefer_aes128_gcm()
    enable_transport_cc()
    enable_simulcast()
    register_h264_profiles()
    app = web.Application(client_max_size=1024 * 1024, middlewares=[whip.cors_middleware])
    app[SETTINGS] = settings
    app[CLOCK] = clock
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(str(WEB_DIR / "templates")),
                         autoescape=jinja2.select_autoescape(["html"]))
    app[aiohttp_jinja2.static_root_key] = "/static"
    app.cleanup_ctx.append(_rooms_ctx)
    app.cleanup_ctx.append(workers_ctx)  # media worker processes for viewers (docs/scaling.md)
    if settings.redis:  # several nodes as one service (docs/scaling.md); no Redis code otherwise
        from signaling import cascade
        from signaling.cluster import cluster_ctx
        app.cleanup_ctx.append(cluster_ctx)
        cascade.setup(app)  # a room's broadcast relayed to the nodes its viewers are on
    drain.setup(app)  # `stoa drain` and SIGTERM: no new joins; the rooms' participants go to other nodes first
    app.on_shutdown.append(_disconnect_everyone)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(api.services_ctx)  # sessions, tutoring, webhooks, notifications (needs the store)

    r = app.router
    r.add_get("/ws/rooms/{room}", ws.room_socket)
    for kind, post in (("whip", whip.whip_post), ("whep", whip.whep_post)):
        r.add_route("OPTIONS", f"/{kind}/{{room}}", whip.options)
        r.add_post(f"/{kind}/{{room}}", post)
        r.add_route("OPTIONS", f"/{kind}/{{room}}/{{session}}", whip.options)
        r.add_delete(f"/{kind}/{{room}}/{{session}}", whip.session_delete)
        r.add_patch(f"/{kind}/{{room}}/{{session}}", whip.session_patch)
    pages.setup_routes(app)
    metrics.setup(app)
    debug.setup(app)  # only with debug_hooks
    classroom_bridge.setup(app)  # chat, Q&A, polls, ... over data channels and the WebSocket
    if settings.redis:
        from signaling import edge_members
        edge_members.setup(app)  # room-protocol participants on other nodes than their room's home
    api.setup(app)  # REST API under /api/, /ws/notify
    dashboards.setup_routes(app)  # /dashboard (tutoring), reads /api/tutoring
    review.setup(app)  # the recordings' review pages (their REST API is in the OPS table)
    # The recorder sees the rooms through recorder.rooms.RoomDirectory, which the RoomManager implements.
    app.cleanup_ctx.append(recordings_ctx(lambda app: app[ROOMS]))
    return app


async def _disconnect_everyone(app: web.Application) -> None:
    # Before cleanup: close WebSockets so shutdown does not wait out aiohttp's 60 s grace period.
    await app[ROOMS].close()


async def _rooms_ctx(app: web.Application):
    settings = app[SETTINGS]
    ice = IceSettings(servers=settings.ice_servers, username=settings.ice_username,
                      credential=settings.ice_credential, addresses=settings.ice_addresses,
                      turn_secret=settings.turn_secret, turn_ttl=settings.turn_ttl,
                      server_identity=settings.node_id or "stoa")
    load = app[LOAD] = LoadMonitor(OverloadPolicy(max_legs=settings.capacity_legs,
                                                      react=settings.overload_control))
    manager = app[ROOMS] = RoomManager(PeerFactory(ice, load, downlink_transport_cc=settings.downlink_transport_cc), max_participants=settings.max_participants,
                                           clock=app[CLOCK], last_n=settings.last_n)
    load.legs, load.leg_count = manager.video_legs, manager.leg_count
    load.peer_count = lambda: len(manager.peers.live)
    load.start()
    yield
    await load.stop()
    await app[ROOMS].close()


async def _store_ctx(app: web.Application):
    from storage import open_store

    settings = app[SETTINGS]
    if not settings.database:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    store = await open_store(settings.database_url, auto_upgrade=not settings.database)
    app[STORE] = store
    yield
    await store.close()
