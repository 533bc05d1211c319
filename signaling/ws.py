"""The room protocol over WebSocket (/ws/rooms/{room}); see docs/protocol.md."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import WSCloseCode, WSMsgType, web

from sfu.peer import IceRestartRefused, SdpError, add_remote_candidate
from sfu.pool import RemoteSubscriber
from shared.appkeys import SETTINGS, active_api_keys
from shared.auth import TokenError, verify_token
from shared.ratelimit import TokenBucket
from signaling.api import roomhooks
from signaling.cascade import CascadeError
from signaling.classroom_bridge import DATA_HANDLER
from signaling.drain import draining
from signaling.room import ROOMS, Participant, RoomFull
from signaling.routing import CASCADE, CLOSE_REDIRECT, CLUSTER, Redirected, remote_home
from signaling.schemas import MAX_FRAME_BYTES, ProtocolError, parse_client_message

logger = logging.getLogger(__name__)

JOIN_TIMEOUT = 10.0
# A join refused with one of these closes the socket (bad_password keeps it: the page asks and sends again).
REFUSALS = ("unauthorized", "room_full", "session_full", "banned", "session_not_live", "forbidden", "draining")
# How long a resumable participant whose socket dropped keeps its place, tracks and classroom state.
RESUME_GRACE = 20.0
MAX_PINS = 16  # pinned cameras are sent whatever the N: bounded, so a page cannot pin the whole class


class RoomWebSocket(web.WebSocketResponse):
    """aiohttp closes a socket whose message exceeds max_msg_size (1009) before the handler sees it; this
    says why first, in the room protocol's own words."""

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not self.closed:
            text = f"a message over {MAX_FRAME_BYTES // 1024} KiB closes the connection"
            try:
                await self.send_str(json.dumps(error("too_large", text)))
            except Exception:  # the peer may be gone already
                pass
            message = message or text.encode()
        return await super().close(code=code, message=message, drain=drain)


def error(code: str, message: str, ref=None, **extra) -> dict:
    out = {"type": "error", "code": code, "message": message, **extra}
    if ref is not None:
        out["ref"] = ref
    return out


async def room_socket(request: web.Request) -> web.StreamResponse:
    app = request.app
    room_name = request.match_info["room"]
    settings = app[SETTINGS]
    ws = RoomWebSocket(heartbeat=20.0, max_msg_size=MAX_FRAME_BYTES)
    await ws.prepare(request)
    send_lock = asyncio.Lock()

    async def send(message: dict | bytes) -> None:
        if ws.closed:
            return
        async with send_lock:
            if isinstance(message, bytes):  # already encoded (a classroom fan-out: once for every member)
                await ws.send_frame(message, WSMsgType.TEXT)
            else:
                await ws.send_str(json.dumps(message))

    async def disconnect(note: dict, code: int = WSCloseCode.OK) -> None:
        await send(note)  # {"type": "left", "code": ..., "reason": ...} (Participant.disconnect)
        reason = note["reason"]
        # A close reason is at most 123 bytes of UTF-8: cut on a character boundary.
        await ws.close(code=code, message=reason.encode()[:120].decode("utf-8", "ignore").encode())

    participant: Participant | None = None
    room = None
    left_on_purpose = False
    bucket = TokenBucket(rate=50, depth=200, now=time.monotonic())  # frames per second, burst
    token = request.query.get("token")
    try:
        if token:
            participant, room = await _join(app, room_name, token, send, disconnect=disconnect)
        while True:
            try:
                msg = await asyncio.wait_for(ws.receive(), None if participant else JOIN_TIMEOUT)
            except asyncio.TimeoutError:
                await send(error("join_timeout", f"send a join message within {JOIN_TIMEOUT:.0f} s"))
                break
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            if participant is not None and participant.replaced:
                break  # a newer connection is this identity now; this one is being closed
            if not bucket.take(1, time.monotonic()):
                await send(error("rate_limited", "too many messages; slow down (50/s)"))
                continue
            try:
                message = parse_client_message(msg.data)
                if message["type"] == "join":
                    if participant is not None:
                        raise ProtocolError("already_joined", "this connection has already joined")
                    participant, room = await _join(app, room_name, message["token"], send,
                                                    password=message.get("password"), disconnect=disconnect,
                                                    resumable=message.get("resumable", False),
                                                    resume=message.get("resume"), lost=message.get("lost"))
                    continue
                if participant is None:
                    raise ProtocolError("not_joined", "send a join message with a token first")
                if not participant.owned_by(send):
                    break  # a newer socket resumed this participant
                if message["type"] == "leave":
                    left_on_purpose = True
                    break
                await _handle(app, room, participant, message, send, msg.data)
            except ProtocolError as exc:
                await send(error(exc.code, exc.message, ref=_ref(msg.data), **exc.extra))
                if participant is None and exc.code in REFUSALS:
                    break
            except IceRestartRefused as exc:
                await send(error("ice_restart_refused", str(exc), ref=_ref(msg.data)))
            except SdpError as exc:
                await send(error("bad_sdp", str(exc), ref=_ref(msg.data)))
            except Redirected:
                raise
            except Exception:
                logger.exception("room %s: handling a message from %s failed", room_name,
                                 participant.identity if participant else "?")
                await send(error("internal", "the server failed to handle that message; it was logged"))
    except Redirected as moved:  # the room lives on another node: the page follows `redirect`
        await send(moved.message())
        await ws.close(code=CLOSE_REDIRECT, message=b"redirect")
    finally:
        if participant is not None and room is not None and participant.owned_by(send):
            # Shielded: aiohttp may cancel this handler when the peer vanishes mid-cleanup.
            async def leave(participant=participant, room=room) -> None:
                await room.leave(participant.identity, session_id=participant.session_id)
                await roomhooks.left(app, participant.classroom_session, participant)
                handler = app.get(DATA_HANDLER)
                if handler is not None:
                    await handler.on_leave(room, participant)

            if participant.resumable and not left_on_purpose:
                room.suspend(participant, RESUME_GRACE, leave)
            else:
                await asyncio.shield(room.spawn(leave()))
        await ws.close()
    return ws


def _ref(raw) -> str | None:
    try:
        msg = json.loads(raw)
        return msg.get("type") if isinstance(msg, dict) and isinstance(msg.get("type"), str) else None
    except Exception:
        return None


async def _join(app: web.Application, room_name: str, token: str, send, password: str | None = None,
                disconnect=None, resumable: bool = False, resume: str | None = None, lost: str | None = None):
    try:
        grants = verify_token(token, await active_api_keys(app), room=room_name)
    except TokenError as exc:
        raise ProtocolError("unauthorized", exc.reason, reason=exc.kind) from None
    cluster = app.get(CLUSTER)
    if lost is not None and cluster is not None:
        # A page whose node stopped answering: that node's rooms are placed again if it is gone, and the page
        # reloads from the room's home (this node too), whose address it then talks to (docs/scaling.md).
        await cluster.forget_if_gone(lost)
        raise Redirected(await cluster.home(room_name) or cluster.record(), room_name)
    home = await remote_home(app, room_name)
    relay = None
    if home is not None:
        from signaling import edge_members  # with `redis` only (its code needs redis-py)

        if not edge_members.spread_here(app, home, grants) or draining(app):
            raise Redirected(home, room_name)
        # An edge member: its media from the room's relay, its classroom over Redis (docs/scaling.md).
        try:
            relay = await app[CASCADE].edge_for(room_name, home)
        except CascadeError as exc:
            if await cluster.forget_if_gone(home.id):  # the home died: the room is placed again, maybe here
                raise Redirected(await cluster.home(room_name) or cluster.record(), room_name) from None
            logger.warning("room %s: serving %s on its home instead: %s", room_name, grants.identity, exc)
            raise Redirected(home, room_name) from None
    if resume is not None:
        resumed = await _resume(app, room_name, grants, resume, send, disconnect)
        if resumed is not None:
            return resumed
        # Not there any more (grace over, server restarted): an ordinary join follows.
    if draining(app):
        raise ProtocolError("draining", "this node is draining and takes no new joins; try again in a moment")
    # A session's room: status, bans, password and capacity are checked before anything joins.
    admission = await roomhooks.admit(app, room_name, grants, password)
    session = admission.session if admission is not None else None
    room = app[ROOMS].get_or_create(room_name)
    participant = Participant(grants, transport="ws", send=send, disconnect=disconnect)
    participant.classroom_session = session
    participant.resumable = resumable
    participant.edge_home = home if relay is not None else None
    try:
        await roomhooks.enter(app, room, participant, admission)  # a refusal gives the seat back
    except RoomFull as exc:
        raise ProtocolError("room_full", str(exc)) from None
    await roomhooks.joined(app, session, participant)  # recorded before it is acknowledged
    await send({
        "type": "joined",
        "participant": participant.describe(),
        **({"resume": participant.session_id} if resumable else {}),
        "grants": {"can_publish": grants.can_publish, "can_subscribe": grants.can_subscribe,
                   "can_publish_data": grants.can_publish_data},
        "room": room.state() if relay is None else edge_state(room, relay),
        "ice_servers": [s.to_json() for s in app[ROOMS].peers.ice.for_identity(grants.identity)],
        **({"session": {"id": session.id, "title": session.title, "type": session.type,
                        "status": session.status}} if session is not None else {}),
        # Where to go when this node stops answering: the page joins one of these with `lost` (scaling.md).
        **({"cluster": {"node": cluster.node_id, "nodes": await cluster.others(),
                        **({"home": home.id} if relay is not None else {})}} if cluster is not None else {}),
        "recording": recording_state(app, room_name),
    })
    if relay is not None:
        from signaling import edge_members

        await edge_members.start_subscriber(room, participant, relay.broadcast_tracks())
    else:
        await room.start_subscriber(participant)  # creates the data channel the classroom uses
    handler = app.get(DATA_HANDLER)
    if handler is not None:
        await handler.on_join(room, participant)
    return participant, room


async def _resume(app: web.Application, room_name: str, grants, resume: str, send, disconnect):
    """Give a kept participant (same identity, same resume token) to this socket, with its peer
    connections, tracks, subscriptions and classroom state; None if there is none to resume."""
    room = app[ROOMS].rooms.get(room_name)
    participant = room.participants.get(grants.identity) if room is not None else None
    if participant is None or participant.transport != "ws" or participant.session_id != resume:
        return None
    participant.rebind(send, disconnect)
    participant.resumable = True
    logger.info("%s resumed in room %s", participant.identity, room_name)
    edge = app[CASCADE].edges.get(room_name) if participant.edge_home is not None else None
    relay = edge.relay if edge is not None else None  # an edge member's tracks come from the room's relay
    await send({
        "type": "joined",
        "resumed": True,
        "resume": participant.session_id,
        "participant": participant.describe(),
        "grants": {"can_publish": participant.grants.can_publish, "can_subscribe": participant.grants.can_subscribe,
                   "can_publish_data": participant.grants.can_publish_data},
        "room": room.state() if relay is None else edge_state(room, relay),
        "ice_servers": [s.to_json() for s in app[ROOMS].peers.ice.for_identity(grants.identity)],
        "recording": recording_state(app, room_name),
    })
    if participant.subscriber is not None:
        await participant.subscriber.resend_offer()  # the first copy may have gone to the dropped socket
        room.select_videos(participant, tell=True)  # a change of `forwarded` meanwhile went nowhere
    return participant, room


async def _handle(app, room, participant: Participant, message: dict, send, raw: str | bytes) -> None:
    kind = message["type"]
    if kind == "ping":
        await send({"type": "pong", "t": message.get("t")})
    elif kind == "publish":
        if not participant.grants.can_publish:
            raise ProtocolError("forbidden", "this token is not allowed to publish")
        if participant.edge_home is not None:  # a publisher's media belongs on the room's home
            moved = Redirected(participant.edge_home, room.name).message()
            raise ProtocolError("publish_on_home", f"{room.name} is hosted on node {moved['node']}: join there "
                                "to publish", page=moved["page"], url=moved["url"], node=moved["node"])
        if message.get("reset"):
            await room.replace_publisher(participant)
        sources = {t["mid"]: t["source"] for t in message.get("tracks", [])}
        answer = await room.publisher_for(participant).negotiate(message["sdp"], sources)
        await send({"type": "answer", "sdp": answer})
    elif kind == "resubscribe":
        await send({"type": "resubscribed"})  # offers before this one belong to the old connection
        if participant.edge_home is not None and room.name in app[CASCADE].edges:  # its media: the relay's
            from signaling import edge_members

            await participant.subscriber.close()
            await edge_members.start_subscriber(room, participant, app[CASCADE].edges[room.name].relay
                                                .broadcast_tracks())
        else:
            await room.restart_subscriber(participant)
        handler = app.get(DATA_HANDLER)
        if handler is not None:
            handler.on_subscriber(participant)
    elif kind == "restart_ice":
        if participant.subscriber is None:
            raise ProtocolError("invalid", "there is no subscriber connection to restart")
        await participant.subscriber.restart_ice()  # its offer follows, with new ICE credentials
    elif kind == "answer":
        if participant.subscriber is None:
            raise ProtocolError("invalid", "there is no subscriber connection to answer for")
        await participant.subscriber.on_answer(message["sdp"])
    elif kind == "ice":
        target = participant.publisher if message["target"] == "publisher" else participant.subscriber
        if target is None:
            raise ProtocolError("invalid", f"there is no {message['target']} connection yet")
        if isinstance(target, RemoteSubscriber):  # its connection runs in a media worker
            await target.trickle([message["candidate"]])
        else:
            await add_remote_candidate(target.pc, message["candidate"])
    elif kind == "mute":
        if not message["muted"] and room.locked_by(participant, message["track_id"]):
            raise ProtocolError("muted_by_moderator", "the teacher muted this track; send unmute_request "
                                "and unmute once they allow it", track_id=message["track_id"])
        if not await room.set_muted(participant, message["track_id"], message["muted"]):
            raise ProtocolError("not_found", f"you publish no track {message['track_id']!r}")
    elif kind == "video_size":
        # Simulcast layer choice (sfu/allocator.py; on a media worker, the worker's). A track that just
        # ended is no error: it is ignored.
        sub = participant.subscriber
        if sub is not None:
            sub.set_video_size(message["track_id"], message["width"], message["height"])
    elif kind == "last_n":
        room.set_last_n(participant, message["n"])  # answered with `forwarded`
    elif kind in ("pin", "unpin"):
        pinning = kind == "pin"
        if pinning and message["participant"] not in room.participants:
            raise ProtocolError("not_found", f"no participant {message['participant']!r} is in the room")
        if pinning and len(participant.pins) >= MAX_PINS and message["participant"] not in participant.pins:
            raise ProtocolError("too_many_pins", f"at most {MAX_PINS} participants can be pinned; unpin one first")
        room.pin(participant, message["participant"], pinning)
    elif kind == "unmute_request":
        await roomhooks.request_unmute(room, participant, message["track_id"])
        await send({"type": "unmute_requested", "track_id": message["track_id"], "ref": message.get("id")})
    elif kind == "unpublish":
        if participant.publisher is None or not participant.publisher.unpublish(message["track_id"]):
            raise ProtocolError("not_found", f"you publish no track {message['track_id']!r}")
    elif kind == "recording":
        await _recording(app, room, participant, message, send)
    elif kind == "moderate":
        await send({**await roomhooks.moderate(app, room, participant, message), "ref": message.get("id")})
    elif kind == "data":
        handler = app.get(DATA_HANDLER)
        if handler is None:
            raise ProtocolError("unavailable", "classroom messages are not enabled on this server")
        # The frame's size bounds the payload's: the classroom need not encode it again to measure it.
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
        await handler.on_message(room, participant, message["payload"], size)


def edge_state(room, relay) -> dict:
    """An edge member's `joined.room`: this node's room, with the home's tracks it is offered (the relayed
    broadcast: the teacher's camera or screen and microphone), so its page lists them as on."""
    state = room.state()
    known = {t["track_id"] for t in state["tracks"]}
    state["tracks"] += [t.describe() for t in relay.broadcast_tracks().values() if t.track_id not in known]
    return state


def recording_state(app, room_name: str) -> dict | None:
    """{"recording_id", "started_at"} while the room records (the page shows its indicator), else None."""
    from recorder.service import RECORDINGS

    manager = app.get(RECORDINGS)
    status = manager.status(room_name) if manager is not None else None
    return {"recording_id": status["recording_id"], "started_at": status["started_at"]} if status else None


async def _recording(app, room, participant: Participant, message: dict, send) -> None:
    from recorder.service import RecordingError
    from recorder.service import RECORDINGS

    if not participant.grants.is_moderator:
        raise ProtocolError("forbidden", "only instructors and moderators start and stop recordings")
    manager = app.get(RECORDINGS)
    if manager is None:
        raise ProtocolError("unavailable", "recording is not enabled on this server")
    try:
        if message["action"] == "start":
            row = await manager.start(room.name, by=participant.identity)
        else:
            row = await manager.stop(room.name, reason=f"stopped by {participant.identity}")
    except RecordingError as exc:
        raise ProtocolError("recording_failed", exc.message) from None
    await send({"type": "recording_ok", "action": message["action"], "recording_id": row.id,
                "status": row.status})
