"""The notification channel: `/ws/notify?token=...` pushes tutoring events to dashboards (no polling).

Token: a JWT with role instructor or student (room claim may be "*"). Instructors hear every tutoring event
(the pending queue is shared); a student hears only events about their own requests. Every message carries
the recipient's fresh dashboard view, so a page just re-renders:

    {"type": "ready", "role": "instructor", "identity": "...", "view": {...}}              on connect
    {"type": "tutoring", "event": "tutoring.accepted", "request": {...}, "room": "tutoring-ab12",
     "view": {...}, "join": {"room", "token", "url"}}     join: only for the student and accepting instructor

Clients may send {"type": "ping"} and get {"type": "pong"}. Events are queued and sent in order by one
worker, so a slow socket never delays the API call that caused the event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from shared.appkeys import KEYRING, SETTINGS
from shared.auth import TokenError
from shared.roles import DASHBOARD_ROLES
from signaling.api import TUTORING
from signaling.api.identity import Principal

log = logging.getLogger(__name__)

@dataclass(eq=False)
class _Conn:
    principal: Principal
    ws: web.WebSocketResponse
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message: dict) -> None:
        if self.ws.closed:
            return
        async with self.lock:
            try:
                await self.ws.send_str(json.dumps(message, default=str))
            except (ConnectionError, RuntimeError) as exc:
                log.debug("notify: send to %s failed: %s", self.principal.identity, exc)


class NotifyHub:
    def __init__(self, app: web.Application):
        self.app = app
        self.conns: set[_Conn] = set()
        self._queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="stoa-notify")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for conn in list(self.conns):
            await conn.ws.close(code=1001, message=b"server shutting down")

    # -- observer (TutoringService) ------------------------------------------------------------------------
    def observe(self, event: str, data: dict) -> None:
        if event.startswith("tutoring."):
            self._queue.put_nowait((event, data))

    async def _run(self) -> None:
        while True:
            event, data = await self._queue.get()
            try:
                await self._deliver(event, data)
            except Exception:
                log.exception("notify: delivering %s failed", event)

    async def _deliver(self, event: str, data: dict) -> None:
        request = data["request"]
        room = data.get("room")
        for conn in list(self.conns):
            p = conn.principal
            if p.role == "student" and p.identity != request["student"]:
                continue
            message = {"type": "tutoring", "event": event, "request": request, "room": room,
                       "view": await self.view(p)}
            if event == "tutoring.accepted" and room and p.identity in (request["student"],
                                                                         request["instructor"]):
                message["join"] = self.join_link(room, p, request)
            await conn.send(message)

    # -- helpers --------------------------------------------------------------------------------------------
    async def view(self, principal: Principal) -> dict:
        tutoring = self.app[TUTORING]
        if principal.role == "instructor":
            return await tutoring.instructor_view(principal.actor)
        return await tutoring.student_view(principal.actor)

    def join_link(self, room: str, principal: Principal, request: dict) -> dict:
        from signaling.api.identity import join_link

        student = principal.identity == request["student"]
        return join_link(self.app[SETTINGS], room, principal.identity,
                         "student" if student else "instructor", name=principal.name,
                         can_publish=True)

    # -- the endpoint ---------------------------------------------------------------------------------------
    async def handler(self, request: web.Request) -> web.StreamResponse:
        from signaling.api.problems import problem

        try:
            grants = await self.app[KEYRING].verify(request.query.get("token", ""))
        except TokenError as exc:
            return problem(401, "unauthorized", exc.reason)
        if grants.role not in DASHBOARD_ROLES:
            return problem(403, "forbidden", f"the notification channel is for instructors and students, "
                                             f"not {grants.role}")
        principal = Principal(identity=grants.identity, role=grants.role, name=grants.name, room=grants.room,
                              grants=grants)
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
        await ws.prepare(request)
        conn = _Conn(principal, ws)
        self.conns.add(conn)
        try:
            await conn.send({"type": "ready", "role": principal.role, "identity": principal.identity,
                             "view": await self.view(principal)})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    kind = json.loads(msg.data).get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind == "ping":
                    await conn.send({"type": "pong"})
                else:
                    await conn.send({"type": "error", "code": "invalid",
                                     "message": "this channel only pushes; the only message it takes is ping"})
        finally:
            self.conns.discard(conn)
        return ws


NOTIFY = web.AppKey("notify", NotifyHub)  # created by signaling.api.services_ctx
