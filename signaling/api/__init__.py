"""The REST API (/api/...), the notification channel (/ws/notify) and the classroom services on the app.

In stoa/app.py: `app.cleanup_ctx.append(api.services_ctx)` after the store, then `api.setup(app)`.
Shared helpers for other HTTP modules: `signaling.api.problems` (problem+json) and
`signaling.api.identity` (`authenticate`, `KeyRing`, `Principal`, `join_link`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from classroom.sessions import SESSIONS, SessionService
from classroom.tutoring import TutoringService
from classroom.webhooks import WebhookDispatcher
from shared.appkeys import KEYRING, SETTINGS
from signaling.api.problems import problem_middleware
from storage.store import STORE

log = logging.getLogger(__name__)

# The classroom services, created by services_ctx below.
TUTORING = web.AppKey("tutoring", TutoringService)
WEBHOOKS = web.AppKey("webhooks", WebhookDispatcher)


def setup(app: web.Application) -> None:
    from signaling.api.routes import add_routes

    app.middlewares.append(problem_middleware)
    add_routes(app)
    app.router.add_get("/ws/notify", _notify_socket)


async def _notify_socket(request: web.Request) -> web.StreamResponse:
    from signaling.notify import NOTIFY

    return await request.app[NOTIFY].handler(request)


async def sync_config_webhooks(dispatcher, configured: list[dict]) -> None:
    """Make the webhooks table hold the ones from the settings (matched by URL)."""
    existing = {h.url: h for h in await dispatcher.list_webhooks()}
    for hook in configured:
        events = list(hook.get("events") or ["*"])
        have = existing.get(hook["url"])
        if have is not None:
            if set(have.events) == set(events) and (hook.get("secret") in (None, have.secret)) and have.active:
                continue
            await dispatcher.remove_webhook(have.id)
        await dispatcher.add_webhook(hook["url"], events, hook.get("secret"))


async def services_ctx(app: web.Application):
    from signaling.api.identity import KeyRing
    from signaling.api.roomhooks import transport_observer
    from signaling.notify import NOTIFY, NotifyHub

    settings, store = app[SETTINGS], app[STORE]
    closed = await store.sessions.close_open_intervals(now=time.time())
    if closed:
        log.info("closed %d presence intervals left open by a previous run", closed)
    dispatcher = WebhookDispatcher(store)
    await sync_config_webhooks(dispatcher, settings.webhooks)
    hub = NotifyHub(app)
    sessions = SessionService(store, observers=[dispatcher.emit, transport_observer(app)])
    tutoring = TutoringService(store, sessions, ttl_s=settings.tutoring_ttl, observers=[hub.observe])
    app[KEYRING] = KeyRing(settings, store)
    app[WEBHOOKS], app[NOTIFY], app[SESSIONS], app[TUTORING] = dispatcher, hub, sessions, tutoring
    dispatcher.start()
    hub.start()
    expiry = asyncio.create_task(_expire_loop(tutoring, settings.tutoring_expire_interval), name="stoa-expiry")
    try:
        yield
    finally:
        expiry.cancel()
        await asyncio.gather(expiry, return_exceptions=True)
        await hub.close()
        await dispatcher.stop()


async def _expire_loop(tutoring, interval: float) -> None:
    while True:
        await tutoring.clock.sleep(interval)  # on the service's clock, the one its TTLs are measured on
        try:
            await tutoring.expire_due()
        except Exception:
            log.exception("expiring tutoring requests failed")
