"""WHIP ingest (RFC 9725) and WHEP egress over HTTP."""

from __future__ import annotations

import logging

from aiohttp import web

from sfu.peer import SdpError, add_remote_candidate, check_sdp_text, negotiated_codecs
from sfu.peer import UnsupportedCodec, check_forwardable
from sfu.subscriber import Subscriber
from signaling.api import roomhooks
from signaling.api.identity import active_api_keys
from signaling.auth import Grants, TokenError, verify_token
from signaling.room import Participant, RoomFull
from signaling.schemas import ProtocolError
from stoa.appkeys import ROOMS

logger = logging.getLogger(__name__)

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link",
}
MAX_BODY = 64 * 1024


def problem(status: int, message: str, **headers) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain",
                        headers={**CORS, **headers})


async def _grants(request: web.Request, room: str) -> Grants:
    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("bearer "):
        raise TokenError("missing 'Authorization: Bearer <token>' header")
    return verify_token(auth[7:].strip(), await active_api_keys(request.app), room=room)


async def _sdp_body(request: web.Request) -> str:
    if request.content_type != "application/sdp":
        raise web.HTTPUnsupportedMediaType(text="the body must be application/sdp\n", headers=CORS)
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length,
                                            headers=CORS)
    body = await request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(body), headers=CORS)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="the SDP is not UTF-8\n", headers=CORS) from None


async def options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={**CORS, "Accept-Post": "application/sdp"})


async def whip_post(request: web.Request) -> web.Response:
    return await _create(request, "whip")


async def whep_post(request: web.Request) -> web.Response:
    return await _create(request, "whep")


async def _create(request: web.Request, kind: str) -> web.Response:
    room_name = request.match_info["room"]
    try:
        grants = await _grants(request, room_name)
    except TokenError as exc:
        return problem(401, f"unauthorized: {exc.reason}", **{"WWW-Authenticate": "Bearer"})
    if kind == "whip" and not grants.can_publish:
        return problem(403, "forbidden: this token is not allowed to publish")
    if kind == "whep" and not grants.can_subscribe:
        return problem(403, "forbidden: this token is not allowed to subscribe")
    offer = await _sdp_body(request)
    try:
        _check_offer(offer)
    except SdpError as exc:
        # Before joining: a bad offer must not replace a live session of the same identity.
        return _sdp_problem(exc)
    # A session's room checks status, bans and capacity here as on the WebSocket.
    try:
        admission = await roomhooks.admit(request.app, room_name, grants, request.query.get("password"))
    except ProtocolError as exc:
        if exc.code == "session_full":
            return problem(503, f"{exc.code}: {exc.message}", **{"Retry-After": "30"})
        return problem(403, f"{exc.code}: {exc.message}")
    session = admission.session if admission is not None else None
    room = request.app[ROOMS].get_or_create(room_name)
    participant = Participant(grants, transport=kind)
    participant.classroom_session = session
    try:
        await roomhooks.enter(request.app, room, participant, admission)  # a refusal gives the seat back
    except RoomFull as exc:
        return problem(503, f"room full: {exc}", **{"Retry-After": "30"})
    await roomhooks.joined(request.app, session, participant)
    try:
        if kind == "whip":
            answer = await room.publisher_for(participant).negotiate(offer)
        else:
            participant.subscriber = Subscriber(participant.identity, room.peers, _no_offer,
                                                data_channel_label=None)
            answer = await participant.subscriber.answer(offer, room.broadcast_tracks())
    except SdpError as exc:
        await room.leave(participant.identity, session_id=participant.session_id)
        await roomhooks.left(request.app, session, participant)
        return _sdp_problem(exc)
    location = f"/{kind}/{room_name}/{participant.session_id}"
    logger.info("%s session %s for %s in %s", kind.upper(), participant.session_id, grants.identity, room_name)
    return web.Response(status=201, text=answer, content_type="application/sdp",
                        headers={**CORS, "Location": location, "ETag": f'"{participant.session_id}"'})


def _check_offer(sdp: str) -> None:
    check_sdp_text(sdp)
    try:
        sections = negotiated_codecs(sdp)
    except Exception as exc:
        raise SdpError(f"the SDP cannot be parsed: {exc}") from None
    if not sections:
        raise SdpError("the offer has no audio or video section")
    check_forwardable(sdp)


def _sdp_problem(exc: SdpError) -> web.Response:
    if isinstance(exc, UnsupportedCodec):
        return problem(406, f"not acceptable: {exc}")
    return problem(400, f"bad SDP: {exc}")


async def _no_offer(sdp: str, tracks: list[dict]) -> None:
    raise SdpError("a WHEP session cannot be renegotiated by the server")


def _session(request: web.Request) -> tuple[object, Participant] | None:
    room = request.app[ROOMS].rooms.get(request.match_info["room"])
    if room is None:
        return None
    sid = request.match_info["session"]
    for participant in room.participants.values():
        if participant.session_id == sid:
            return room, participant
    return None


async def session_delete(request: web.Request) -> web.Response:
    found = _session(request)
    if found is None:
        return problem(404, "no such session")
    room, participant = found
    await room.leave(participant.identity, session_id=participant.session_id)
    await roomhooks.left(request.app, getattr(participant, "classroom_session", None), participant)
    return web.Response(status=200, headers=CORS)


async def session_patch(request: web.Request) -> web.Response:
    """Trickle ICE: an application/trickle-ice-sdpfrag body with a=candidate lines."""
    found = _session(request)
    if found is None:
        return problem(404, "no such session")
    if request.content_type != "application/trickle-ice-sdpfrag":
        return problem(415, "the body must be application/trickle-ice-sdpfrag")
    _, participant = found
    pc = participant.publisher.pc if participant.publisher else participant.subscriber.pc
    body = (await request.content.read(MAX_BODY)).decode("utf-8", "replace")
    mid = None
    try:
        for line in body.splitlines():
            line = line.strip()
            if line.startswith("a=mid:"):
                mid = line[6:]
            elif line.startswith("a=candidate:"):
                await add_remote_candidate(pc, {"candidate": line[2:], "sdpMid": mid})
    except SdpError as exc:
        return problem(400, f"bad candidate: {exc}")
    return web.Response(status=204, headers=CORS)
