"""Benchmark-only reference relay built the way aiortc's examples do it: aiortc's MediaRelay, so the
publisher's media is decoded once and re-encoded for every viewer. It exists only to be measured
against Stoa by bench/fanout.py; it is not product code and has no authentication.

  python bench/mediarelay_ref.py --port P

Same HTTP shape as Stoa: POST /whip/{room} and POST /whep/{room} (application/sdp, 201 +
Location), DELETE on the Location.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import uuid

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from sfu.aiortc_seam import restrict_ice_gathering

LOOPBACK = ["127.0.0.1"]
BITRATE = 1_500_000
BUFFERED = os.environ.get("REF_BUFFERED", "0") == "1"


class RefState:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: dict[str, dict[str, object]] = {}  # room -> kind -> remote track
        self.sessions: dict[str, RTCPeerConnection] = {}


STATE = web.AppKey("state", RefState)


async def _answer(pc: RTCPeerConnection, offer: str) -> str:
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    answer = await pc.createAnswer()
    restrict_ice_gathering(pc, LOOPBACK)
    await pc.setLocalDescription(answer)
    return pc.localDescription.sdp


def _created(request: web.Request, pc: RTCPeerConnection, sdp: str, kind: str) -> web.Response:
    state = request.app[STATE]
    sid = uuid.uuid4().hex
    state.sessions[sid] = pc
    return web.Response(status=201, text=sdp, content_type="application/sdp",
                        headers={"Location": f"/{kind}/{request.match_info['room']}/{sid}"})


async def whip(request: web.Request) -> web.Response:
    state = request.app[STATE]
    room = request.match_info["room"]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    @pc.on("track")
    def on_track(track) -> None:
        state.tracks.setdefault(room, {})[track.kind] = track

    sdp = await _answer(pc, await request.text())
    return _created(request, pc, sdp, "whip")


async def whep(request: web.Request) -> web.Response:
    state = request.app[STATE]
    tracks = state.tracks.get(request.match_info["room"], {})
    if "video" not in tracks:
        return web.Response(status=409, text="nothing is published in this room yet\n")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
    for kind, track in tracks.items():
        # Unbuffered: a viewer whose encoder falls behind skips frames instead of queueing them.
        pc.addTrack(state.relay.subscribe(track, buffered=BUFFERED))
    answer = await pc.createAnswer()
    restrict_ice_gathering(pc, LOOPBACK)
    await pc.setLocalDescription(answer)
    return _created(request, pc, pc.localDescription.sdp, "whep")


async def delete(request: web.Request) -> web.Response:
    pc = request.app[STATE].sessions.pop(request.match_info["session"], None)
    if pc is None:
        return web.Response(status=404)
    await pc.close()
    return web.Response(status=200)


async def _lifetime(app: web.Application):
    app[STATE] = RefState()
    yield
    await asyncio.gather(*(pc.close() for pc in app[STATE].sessions.values()), return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import aiortc.codecs.vpx as vpx

    # Hold every VP8 encoder at 1.5 Mbps whatever REMB says (aiortc re-creates the encoder, with a
    # keyframe, whenever REMB moves the target by 10%), so every run carries the same stream.
    vpx.Vp8Encoder.target_bitrate = property(lambda self: BITRATE, lambda self, value: None)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    app = web.Application()
    app.cleanup_ctx.append(_lifetime)
    for kind, handler in (("whip", whip), ("whep", whep)):
        app.router.add_post(f"/{kind}/{{room}}", handler)
        app.router.add_delete(f"/{kind}/{{room}}/{{session}}", delete)
    print(f"MediaRelay reference listening on http://127.0.0.1:{args.port}/", flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
