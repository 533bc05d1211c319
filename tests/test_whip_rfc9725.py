"""RFC 9725 (WHIP) and WHEP, point by point: each exact request with the expected status and headers.

Real server, real aiortc peers on 127.0.0.1. The server is configured with a TURN URL on a loopback port
where nothing listens (TCP, refused at once), so Link headers and credentials are exercised and no packet
leaves the machine."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import socket
import time

import aiohttp
import pytest
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

from sfu.aiortc_seam import begin_ice_restart, finish_ice_restart, ice_credentials
from sfu.iceserver import IceServer, ice_servers, turn_rest_credentials
from sfu.peer import local_candidates
from shared.config import load_settings
from signaling import sdpfrag
from signaling.room import ROOMS
from signaling.whip import link_header
from tests.client import RoomClient
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.test_whip_whep import WhepViewer, WhipPublisher, assert_counters_healthy, wait_no_peers, wait_until

ROOM = "rfc"
FRAG = sdpfrag.CONTENT_TYPE
SECRET = "north-wind-shared-secret"


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TURN_URL = f"turn:127.0.0.1:{_free_tcp_port()}?transport=tcp"


@pytest.fixture
def server_settings(tmp_path):
    return load_settings(environ={}, overrides={
        "dev": True, "host": "127.0.0.1", "port": 8080, "ice_addresses": ["127.0.0.1"],
        "data_dir": str(tmp_path / "data"), "ice_servers": [TURN_URL], "turn_secret": SECRET, "turn_ttl": 3600,
    })


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


# -- pure parts, byte for byte ------------------------------------------------------------------------------

def test_turn_rest_credentials_are_what_coturn_use_auth_secret_computes():
    # Expected password from `printf %s 1700000000:obs | openssl dgst -sha1 -hmac SECRET -binary | base64`.
    assert turn_rest_credentials(SECRET, "obs", 3600, now=1699996400) == ("1700000000:obs",
                                                                         "QmjfFukVkCiyFDRcdn/U26Vf9s4=")
    servers = ice_servers(["stun:stun.example.org", "turn:turn.example.org:3478"], identity="obs",
                          turn_secret=SECRET, ttl=3600, now=1699996400)
    assert servers == [IceServer("stun:stun.example.org"),
                       IceServer("turn:turn.example.org:3478", "1700000000:obs", "QmjfFukVkCiyFDRcdn/U26Vf9s4=")]
    static = ice_servers(["turn:t.example.org"], identity="obs", username="u", credential="p")
    assert static == [IceServer("turn:t.example.org", "u", "p")]


def test_link_header_values():
    assert link_header(IceServer("stun:stun.example.org")) == '<stun:stun.example.org>; rel="ice-server"'
    assert link_header(IceServer("turn:t.example.org:3478", "1700000000:o\"bs", "cred")) == (
        '<turn:t.example.org:3478>; rel="ice-server"; username="1700000000:o\\"bs"; credential="cred"; '
        'credential-type="password"')


def test_sdpfrag_parse_and_build():
    text = ("a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\na=group:BUNDLE 0\r\n"
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
            "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n"
            "a=end-of-candidates\r\n")
    frag = sdpfrag.parse(text)
    assert (frag.ice_ufrag, frag.ice_pwd, frag.mids, frag.end_of_candidates) == (
        "EsAw", "P2uYro0UCOQ4zxjKXaWCBui1", ["0"], True)
    assert frag.candidates == [("0", "candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0")]
    assert sdpfrag.build("289b", "0b66f472495ef0ccac7bda65", ["candidate:1 1 udp 2130706431 198.51.100.1 39132 typ host"]) == (
        "a=ice-ufrag:289b\r\na=ice-pwd:0b66f472495ef0ccac7bda65\r\n"
        "a=candidate:1 1 udp 2130706431 198.51.100.1 39132 typ host\r\na=end-of-candidates\r\n")
    for bad, why in [("", "empty"), ("hello", "not an SDP line"), ("a=ice-ufrag:ab\r\n", "ice-ufrag"),
                     ("a=ice-ufrag:abcd\r\n", "come together"), ("a=ice-pwd:short\r\na=ice-ufrag:abcd", "ice-pwd"),
                     ("a=candidate:1 1 udp\r\n", "malformed candidate"), ("v=0\r\n", "does not belong"),
                     ("m=audio\r\n", "malformed m= line")]:
        with pytest.raises(sdpfrag.SdpFragError, match=why):
            sdpfrag.parse(bad)


# -- over HTTP ----------------------------------------------------------------------------------------------

def _turn_link(value: str) -> dict:
    return dict(re.findall(r'(\w[\w-]*)="([^"]*)"', value))


def assert_cors(headers) -> None:
    assert headers["Access-Control-Allow-Origin"] == "*"
    exposed = {h.strip() for h in headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "ETag", "Link", "Accept-Patch"} <= exposed


async def test_post_options_and_errors_carry_the_rfc_headers(stoa_server, http):
    base = stoa_server.base
    tok = stoa_server.token(ROOM, "obs", "instructor")
    pub = WhipPublisher(http, base, ROOM, tok)
    before = int(time.time())
    async with http.options(f"{base}/whip/{ROOM}") as r:  # no token: no credentials handed out
        assert r.status == 200 and r.headers["Accept-Post"] == "application/sdp"
        assert "Link" not in r.headers
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert_cors(r.headers)
    async with http.options(f"{base}/whip/{ROOM}", headers={
            "Authorization": f"Bearer {tok}", "Access-Control-Request-Method": "POST",
            "Origin": "https://obs.example"}) as r:  # a CORS preflight never gets them either
        assert r.status == 200 and "Link" not in r.headers
    async with http.options(f"{base}/whip/{ROOM}", headers={"Authorization": f"Bearer {tok}"}) as r:
        assert r.status == 200
        links = r.headers.getall("Link")
        assert len(links) == 1 and links[0].startswith(f"<{TURN_URL}>; rel=\"ice-server\"")

    pub.pc.addTransceiver(CounterVideoTrack(), direction="sendonly")
    from tests.peers import make_offer
    offer = await make_offer(pub.pc)
    async with http.post(f"{base}/whip/{ROOM}", data=offer, headers={
            "Content-Type": "application/sdp", "Authorization": f"Bearer {tok}"}) as r:
        assert r.status == 201, await r.text()
        location, etag = r.headers["Location"], r.headers["ETag"]
        assert re.fullmatch(r'"[0-9a-f]{24}"', etag), "a strong entity-tag"
        assert_cors(r.headers)
        links = r.headers.getall("Link")
        assert len(links) == 1
        params = _turn_link(links[0])
        assert params["rel"] == "ice-server" and params["credential-type"] == "password"
        expiry, identity = params["username"].split(":", 1)
        assert identity == "obs" and before + 3600 <= int(expiry) <= int(time.time()) + 3600
        expected = base64.b64encode(hmac.new(SECRET.encode(), params["username"].encode(), hashlib.sha1).digest())
        assert params["credential"] == expected.decode()
        answer = await r.text()
    from tests.peers import apply_answer
    await apply_answer(pub.pc, answer)
    pub.location = location

    async with http.options(base + location) as r:
        assert r.status == 200 and r.headers["Accept-Patch"] == FRAG and "Accept-Post" not in r.headers
        assert set(r.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) == {"PATCH", "DELETE",
                                                                                                "OPTIONS"}
        assert_cors(r.headers)

    auth = {"Authorization": f"Bearer {tok}"}
    other = {"Authorization": f"Bearer {stoa_server.token(ROOM, 'mallory', 'instructor')}"}
    cand = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
    cases = [
        # (method, path, headers, body, status, headers that must be there, headers that must not)
        ("PATCH", location, {"Content-Type": FRAG}, cand, 401, ["WWW-Authenticate"], []),
        ("PATCH", location, {**other, "Content-Type": FRAG}, cand, 403, [], []),
        ("PATCH", location, {**auth, "Content-Type": FRAG, "If-Match": '"not-the-etag"'}, cand, 412, [], []),
        ("PATCH", location, {**auth, "Content-Type": FRAG, "If-Match": "W/" + etag}, cand, 412, [], []),
        ("PATCH", location, {**auth, "Content-Type": FRAG, "If-Match": etag}, "this is not sdp", 400, [], []),
        ("PATCH", location, {**auth, "Content-Type": FRAG, "If-Match": etag}, "a=candidate:1 1 udp\r\n", 400, [], []),
        ("PATCH", location, {**auth, "Content-Type": FRAG, "If-Match": etag}, "", 400, [], []),
        ("PATCH", location, {**auth, "Content-Type": FRAG, "If-Match": "*"}, cand, 400, [], []),
        ("PATCH", location, {**auth, "Content-Type": FRAG, "If-Match": etag},
         "a=ice-ufrag:zzzz\r\na=ice-pwd:zzzzzzzzzzzzzzzzzzzzzz\r\n" + cand, 422, [], []),
        ("PATCH", location, {**auth, "Content-Type": "text/plain", "If-Match": etag}, cand, 415, [], []),
        ("PATCH", location, {**auth, "Content-Type": FRAG, "If-Match": f'"x", {etag}'}, cand, 204, [], ["ETag"]),
        ("PATCH", location, {**auth, "Content-Type": FRAG}, cand, 204, [], ["ETag"]),
        ("PATCH", f"/whip/{ROOM}/nope", {**auth, "Content-Type": FRAG}, cand, 404, [], []),
        ("DELETE", location, {}, None, 401, ["WWW-Authenticate"], []),
        ("DELETE", location, other, None, 403, [], []),
        ("GET", f"/whip/{ROOM}", {}, None, 405, [], []),
    ]
    for method, path, headers, body, status, present, absent in cases:
        async with http.request(method, base + path, headers=headers, data=body) as r:
            text = await r.text()
            assert r.status == status, f"{method} {path} {headers} {body!r:.40}: {r.status} {text}"
            if status >= 400:
                assert text.strip(), "the error names the problem"
            for name in present:
                assert name in r.headers, (method, status, name)
            for name in absent:
                assert name not in r.headers, (method, status, name)
            assert_cors(r.headers)  # errors too
    assert await pub.stop() == 200
    await wait_no_peers(stoa_server)


async def _restart(http, base: str, location: str, token: str, etag: str, pc) -> tuple[str, dict]:
    """What a WHIP/WHEP client does for an ICE restart: new credentials and its candidates in a PATCH with
    If-Match: *; the server's new fragment applied on 200."""
    ufrag, pwd = begin_ice_restart(pc)
    body = sdpfrag.build(ufrag, pwd, [f"candidate:{candidate_to_sdp(c)}" for c in local_candidates(pc)])
    async with http.patch(base + location, data=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": FRAG, "If-Match": "*"}) as r:
        text = await r.text()
        assert r.status == 200, text
        assert r.content_type == FRAG
        new_etag = r.headers["ETag"]
        assert new_etag != etag and re.fullmatch(r'"[0-9a-f]{24}"', new_etag)
        assert_cors(r.headers)
    answer = sdpfrag.parse(text)
    assert answer.ice_ufrag and answer.ice_pwd and answer.candidates and answer.end_of_candidates
    await finish_ice_restart(pc, answer.ice_ufrag, answer.ice_pwd,
                             [candidate_from_sdp(v[len("candidate:"):]) for _, v in answer.candidates], True)
    return new_etag, {"client_ufrag": ufrag, "server_ufrag": answer.ice_ufrag, "server_pwd": answer.ice_pwd}


async def test_ice_restart_through_patch_restarts_ice_and_media_continues(stoa_server, http):
    base = stoa_server.base
    pub = await WhipPublisher(http, base, ROOM, stoa_server.token(ROOM, "obs", "instructor")) \
        .publish(CounterVideoTrack(), ToneAudioTrack())
    viewer = await WhepViewer(http, base, ROOM, stoa_server.token(ROOM, "v", "viewer")).start()
    await wait_until(lambda: "video" in viewer.collectors, 10, "the video track")
    await viewer.video.wait_frames(20, timeout=15)
    room = stoa_server.app[ROOMS].rooms[ROOM]

    etags = {pub.location: pub.etag, viewer.location: viewer.etag}
    publisher_side = (pub.pc, pub.location, pub.token, lambda: room.participants["obs"].publisher.pc)
    viewer_side = (viewer.pc, viewer.location, viewer.token, lambda: room.participants["v"].subscriber.pc)
    # The publisher twice (a restart of a restarted session), then the viewer.
    for client_pc, location, token, server_pc in (publisher_side, publisher_side, viewer_side):
        etag = etags[location]
        async with http.options(base + location) as r:
            assert r.headers["Accept-Patch"] == FRAG
        before_server, before_client = ice_credentials(server_pc()), ice_credentials(client_pc)
        new_etag, creds = await _restart(http, base, location, token, etag, client_pc)
        etags[location] = new_etag

        after = ice_credentials(server_pc())
        assert after["local_ufrag"] == creds["server_ufrag"] != before_server["local_ufrag"]
        assert after["local_pwd"] == creds["server_pwd"]
        assert after["remote_ufrag"] == creds["client_ufrag"] != before_server["remote_ufrag"]
        # Connectivity checks with the new credentials nominate a new pair on both sides.
        await wait_until(lambda: ice_credentials(server_pc())["pair"] not in (None, before_server["pair"])
                         and ice_credentials(client_pc)["pair"] not in (None, before_client["pair"]),
                         15, "both sides to nominate a pair of the new ICE session")
        frames = viewer.video.frames
        await viewer.video.wait_frames(frames + 30, timeout=15)  # media goes on over the new session

        cand = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
        for if_match, status in ((etag, 412), (new_etag, 204)):  # the old ICE session's tag is stale now
            async with http.patch(base + location, data=cand, headers={
                    "Authorization": f"Bearer {token}", "Content-Type": FRAG, "If-Match": if_match}) as r:
                assert r.status == status, await r.text()

    assert_counters_healthy(viewer.video.counters)
    assert viewer.pc.connectionState == "connected" and pub.pc.connectionState == "connected"
    assert await viewer.stop() == 200
    assert await pub.stop() == 200
    await wait_no_peers(stoa_server)


async def test_room_protocol_joined_carries_the_same_turn_credentials(stoa_server):
    client = await RoomClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, "ada", "student")).connect()
    try:
        assert client.joined["type"] == "joined"
        (server,) = client.joined["ice_servers"]
        assert server["urls"] == TURN_URL
        expiry, identity = server["username"].split(":", 1)
        assert identity == "ada" and int(expiry) > time.time() + 3500
        assert server["credential"] == base64.b64encode(
            hmac.new(SECRET.encode(), server["username"].encode(), hashlib.sha1).digest()).decode()
    finally:
        await client.close()
    await asyncio.sleep(0)
