"""WHIP ingest (RFC 9725) and WHEP egress over HTTP.

A session is `/{whip|whep}/{room}/{session}`. PATCH (trickle ICE, ICE restart) and DELETE on it need the
Bearer token of the identity that created it. Every response under /whip/ and /whep/, errors included,
carries the CORS headers (`cors_middleware`).
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web
from multidict import CIMultiDict

from sfu.aiortc_seam import ice_credentials
from sfu.iceserver import IceServer
from sfu.peer import SdpError, UnsupportedCodec, add_remote_candidate, check_forwardable, check_sdp_text
from sfu.peer import OtherIceSession, negotiated_codecs, parse_candidate, restart_ice_from
from sfu.pool import RemoteSubscriber, WorkerUnavailable
from sfu.subscriber import Subscriber
from shared.appkeys import active_api_keys
from shared.auth import Grants, TokenError, bearer_token, verify_token
from signaling import sdpfrag
from signaling.api import roomhooks
from signaling.cascade import CASCADE, CascadeError
from signaling.drain import draining
from signaling.room import ROOMS, WORKERS, Participant, RoomFull
from signaling.routing import elsewhere, remote_home
from signaling.schemas import ProtocolError

logger = logging.getLogger(__name__)

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Post, Accept-Patch",
}
ENDPOINT_METHODS = "POST, OPTIONS"
SESSION_METHODS = "PATCH, DELETE, OPTIONS"
MAX_BODY = 64 * 1024
OTHER_ICE_SESSION = ("these candidates are for another ICE session (ice-ufrag differs); "
                     "an ICE restart needs If-Match: *")


def _methods(request: web.Request) -> str:
    return SESSION_METHODS if "session" in request.match_info else ENDPOINT_METHODS


@web.middleware
async def cors_middleware(request: web.Request, handler):
    """CORS on every WHIP/WHEP response, errors too, so browser clients can read what went wrong."""
    if not request.path.startswith(("/whip/", "/whep/")):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(CORS)
        exc.headers.setdefault("Access-Control-Allow-Methods", _methods(request))
        raise
    response.headers.update(CORS)
    response.headers.setdefault("Access-Control-Allow-Methods", _methods(request))
    return response


def problem(status: int, message: str, **headers) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain", headers=headers)


def link_header(server: IceServer) -> str:
    """RFC 9725 4.6: `<url>; rel="ice-server"`, with username and credential for TURN."""
    value = f'<{server.url}>; rel="ice-server"'
    if server.username is not None and server.credential is not None:
        value += (f'; username="{_quoted(server.username)}"; credential="{_quoted(server.credential)}"'
                  '; credential-type="password"')
    return value


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _ice_links(request: web.Request, identity: str) -> list[str]:
    return [link_header(s) for s in request.app[ROOMS].peers.ice.for_identity(identity)]


async def _grants(request: web.Request, room: str) -> Grants:
    token = bearer_token(request.headers.get("Authorization", ""))
    if not token:
        raise TokenError("missing 'Authorization: Bearer <token>' header")
    return verify_token(token, await active_api_keys(request.app), room=room)


async def _sdp_body(request: web.Request) -> str:
    if request.content_type != "application/sdp":
        raise web.HTTPUnsupportedMediaType(text="the body must be application/sdp\n")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    body = await request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(body))
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="the SDP is not UTF-8\n") from None


async def options(request: web.Request) -> web.Response:
    """200 (RFC 9725 4.1, 4.3): endpoints accept POST of application/sdp, sessions PATCH of
    trickle-ice-sdpfrag. A non-preflight OPTIONS to an endpoint with a valid Bearer token also gets the
    ICE servers (Link rel="ice-server"); preflights never do (RFC 9725 4.6: they carry no credentials)."""
    headers = CIMultiDict({"Access-Control-Allow-Methods": _methods(request), "Allow": _methods(request)})
    if "session" in request.match_info:
        headers["Accept-Patch"] = sdpfrag.CONTENT_TYPE
    else:
        headers["Accept-Post"] = "application/sdp"
        if "Access-Control-Request-Method" not in request.headers and "Authorization" in request.headers:
            try:
                grants = await _grants(request, request.match_info["room"])
            except TokenError:
                grants = None  # no credentials for a bad token; OPTIONS itself still succeeds
            if grants is not None:
                for link in _ice_links(request, grants.identity):
                    headers.add("Link", link)
    return web.Response(status=200, headers=headers)


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
    home = await remote_home(request.app, room_name)
    edge = None
    cascade = request.app.get(CASCADE)
    if home is None and draining(request.app):
        return problem(503, "draining: this node takes no new joins; try again in a moment", **{"Retry-After": "5"})
    if home is not None and kind == "whep" and cascade is not None and not draining(request.app):
        # A viewer is served where it lands; the broadcast is relayed here from the home (docs/scaling.md).
        try:
            edge = await cascade.edge_for(room_name, home)
        except CascadeError as exc:
            return problem(503, f"relay unavailable: {exc}; try again", **{"Retry-After": "1"})
    elif home is not None:  # RFC 9725 4.5: the client repeats the POST there; its session URL is on that node
        location = elsewhere(home, request.rel_url.raw_path, request.rel_url.raw_query_string)
        return problem(307, f"room {room_name} is served by node {home.id}: {location}", Location=location)
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
            participant.subscriber = _viewer_subscriber(request.app, room, participant, relayed=edge is not None)
            tracks = edge.broadcast_tracks() if edge is not None else room.broadcast_tracks()
            answer = await participant.subscriber.answer(offer, tracks)
    except SdpError as exc:
        await room.leave(participant.identity, session_id=participant.session_id)
        await roomhooks.left(request.app, session, participant)
        return _sdp_problem(exc)
    except WorkerUnavailable as exc:
        await room.leave(participant.identity, session_id=participant.session_id)
        await roomhooks.left(request.app, session, participant)
        return problem(503, f"media worker unavailable: {exc}; try again", **{"Retry-After": "1"})
    location = f"/{kind}/{room_name}/{participant.session_id}"
    participant.ice_etag = _new_etag()
    logger.info("%s session %s for %s in %s", kind.upper(), participant.session_id, grants.identity, room_name)
    headers = CIMultiDict({"Location": location, "ETag": participant.ice_etag})
    for link in _ice_links(request, grants.identity):
        headers.add("Link", link)
    return web.Response(status=201, text=answer, content_type="application/sdp", headers=headers)


def _new_etag() -> str:
    """A strong entity-tag for one ICE session (RFC 9725 4.3.1); replaced by each ICE restart."""
    return f'"{secrets.token_hex(12)}"'


def _if_match(header: str, etag: str) -> bool:
    """RFC 9110 13.1.1: strong comparison against a list of entity-tags (a weak tag never matches)."""
    return any(tag.strip() == etag for tag in header.split(","))


def _viewer_subscriber(app: web.Application, room, participant: Participant, *, relayed: bool = False):
    """A WHEP viewer's connection: on a media worker when the server runs them (docs/scaling.md), except
    for a room relayed from another node, whose MirrorTracks live in this process."""
    pool = app.get(WORKERS)
    remote = None
    on_quality = room.quality_listener(participant)
    if pool is not None and not relayed:
        remote = pool.subscriber(participant.identity, room=room.name, session_id=participant.session_id,
                                 on_quality=on_quality)
    return remote or Subscriber(participant.identity, room.peers, _no_offer, data_channel_label=None,
                                on_quality=on_quality)


async def end_session(app: web.Application, room_name: str, session_id: str, *, reason: str) -> None:
    """End a session from the server side (its media worker died): its URL answers 404 from now on."""
    room = app[ROOMS].rooms.get(room_name)
    participant = next((p for p in room.participants.values() if p.session_id == session_id), None) \
        if room is not None else None
    if participant is None:
        return
    logger.info("%s session %s of %s in %s ended: %s", participant.transport.upper(), session_id,
                participant.identity, room_name, reason)
    await room.leave(participant.identity, session_id=session_id)
    await roomhooks.left(app, participant.classroom_session, participant)


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
    kind = request.path.split("/", 2)[1]
    for participant in room.participants.values():
        if participant.session_id == sid and participant.transport == kind:
            return room, participant
    return None


async def _owned_session(request: web.Request) -> tuple[object, Participant] | web.Response:
    """The session, when the request carries a valid Bearer token of the identity that created it."""
    try:
        grants = await _grants(request, request.match_info["room"])
    except TokenError as exc:
        return problem(401, f"unauthorized: {exc.reason}", **{"WWW-Authenticate": "Bearer"})
    found = _session(request)
    if found is None:
        return problem(404, "no such session")
    if found[1].identity != grants.identity:
        return problem(403, "forbidden: this token is not for the identity that created this session")
    return found


async def session_delete(request: web.Request) -> web.Response:
    found = await _owned_session(request)
    if isinstance(found, web.Response):
        return found
    room, participant = found
    await room.leave(participant.identity, session_id=participant.session_id)
    await roomhooks.left(request.app, participant.classroom_session, participant)
    return web.Response(status=200)


async def session_patch(request: web.Request) -> web.Response:
    """RFC 9725 4.3: trickle ICE (If-Match: the session's ETag, or none; 204) or an ICE restart
    (If-Match: *, new ice-ufrag/ice-pwd; 200 with the server's new fragment and a new ETag)."""
    found = await _owned_session(request)
    if isinstance(found, web.Response):
        return found
    _, participant = found
    if request.content_type != sdpfrag.CONTENT_TYPE:
        return problem(415, f"the body must be {sdpfrag.CONTENT_TYPE}")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        return problem(413, f"the fragment is larger than {MAX_BODY} bytes")
    try:
        frag = sdpfrag.parse(raw.decode("utf-8"))
        # Parsed before anything is applied: one bad candidate line refuses the whole fragment.
        candidates = [parse_candidate(value, mid) for mid, value in frag.candidates]
    except UnicodeDecodeError:
        return problem(400, "malformed sdpfrag: the body is not UTF-8")
    except (sdpfrag.SdpFragError, SdpError) as exc:
        return problem(400, f"malformed sdpfrag: {exc}")
    if_match = request.headers.get("If-Match")
    # A viewer whose connection runs in a media worker: the PATCH is applied there (docs/scaling.md).
    remote = participant.subscriber if participant.publisher is None and isinstance(
        participant.subscriber, RemoteSubscriber) else None
    if if_match is not None and if_match.strip() == "*":
        return await _ice_restart(participant, frag, candidates, remote)
    if if_match is not None and not _if_match(if_match, participant.ice_etag):
        return problem(412, f"precondition failed: If-Match {if_match[:80]} is not this ICE session's "
                            f"entity-tag {participant.ice_etag}")
    if remote is not None:
        try:
            await remote.trickle([{"candidate": value, "sdpMid": mid} for mid, value in frag.candidates],
                                 ufrag=frag.ice_ufrag)
        except OtherIceSession:
            return problem(422, OTHER_ICE_SESSION)
        except SdpError as exc:
            return problem(400, f"bad candidate: {exc}")
        except WorkerUnavailable:
            return problem(404, "no such session (its media worker stopped)")
        return web.Response(status=204)
    pc = participant.publisher.pc if participant.publisher else participant.subscriber.pc
    if frag.ice_ufrag is not None and frag.ice_ufrag != ice_credentials(pc).get("remote_ufrag"):
        return problem(422, OTHER_ICE_SESSION)
    try:
        for mid, value in frag.candidates:
            await add_remote_candidate(pc, {"candidate": value, "sdpMid": mid})
    except SdpError as exc:
        return problem(400, f"bad candidate: {exc}")
    return web.Response(status=204)


async def _ice_restart(participant: Participant, frag: sdpfrag.SdpFrag, candidates: list,
                       remote: RemoteSubscriber | None) -> web.Response:
    if frag.ice_ufrag is None:
        return problem(400, "an ICE restart (If-Match: *) needs the client's new a=ice-ufrag and a=ice-pwd")
    try:
        if remote is not None:
            ufrag, pwd, local = await remote.restart_ice_from(
                frag.ice_ufrag, frag.ice_pwd, [{"candidate": value, "sdpMid": mid} for mid, value in frag.candidates],
                frag.end_of_candidates)
        else:
            pc = participant.publisher.pc if participant.publisher else participant.subscriber.pc
            ufrag, pwd, local = await restart_ice_from(pc, frag.ice_ufrag, frag.ice_pwd, candidates,
                                                       frag.end_of_candidates)
    except SdpError as exc:
        return problem(400, str(exc))
    except WorkerUnavailable:
        return problem(404, "no such session (its media worker stopped)")
    participant.ice_etag = _new_etag()
    logger.info("%s session %s of %s: ICE restart", participant.transport.upper(), participant.session_id,
                participant.identity)
    return web.Response(status=200, text=sdpfrag.build(ufrag, pwd, local), content_type=sdpfrag.CONTENT_TYPE,
                        headers={"ETag": participant.ice_etag})
