"""ICE restart over the room protocol (docs/protocol.md, "ICE restart"): a renegotiation offer with new ICE
credentials on the publisher connection, and `restart_ice` on the subscriber connection, are answered with
new server credentials on the same connections; frames keep coming, read back from decoded video."""

from __future__ import annotations

import asyncio

from aiortc.sdp import SessionDescription

from sfu.aiortc_seam import begin_ice_restart, ice_credentials
from sfu.peer import description_ice
from tests.client import RoomClient
from tests.media import CounterVideoTrack
from tests.peers import apply_answer, make_offer
from tests.serve import eventually

ROOM = "restart"


async def join(server, identity, role) -> RoomClient:
    return await RoomClient(server.ws_base, ROOM, server.token(ROOM, identity, role)).connect()


def ufrag(sdp: str) -> str:
    return description_ice(SessionDescription.parse(sdp))[0]


async def frames_go_on(collector, more: int = 30) -> None:
    await collector.wait_frames(collector.frames + more, timeout=15)


async def test_ice_restart_on_both_connections_keeps_the_participant_and_its_media(stoa_server):
    from signaling.room import ROOMS

    teacher = await join(stoa_server, "teacher", "instructor")
    student = await join(stoa_server, "student", "student")
    try:
        video = CounterVideoTrack()
        first = await teacher.publish(video, sources=["camera"])
        viewer = await student.wait_track("video")
        await viewer.wait_frames(30, timeout=20)
        room = stoa_server.app[ROOMS].rooms[ROOM]
        publisher, kept = room.participants["teacher"], room.participants["student"]
        track_ids = {t.track_id for t in publisher.publisher.tracks.values()}
        server_pub = publisher.publisher.pc
        old_pair = ice_credentials(server_pub)["pair"]
        assert old_pair is not None
        seen = len(teacher.events), len(student.events)

        # Publisher: the client's offer carries new credentials (what restartIce() makes).
        client_ufrag, _ = begin_ice_restart(teacher.pub)
        offer = await make_offer(teacher.pub)
        assert ufrag(offer) == client_ufrag
        reply = await teacher.request({"type": "publish", "sdp": offer, "tracks": [{"mid": "0", "source": "camera"}]},
                                      "answer", "error")
        assert reply["type"] == "answer", reply
        assert ufrag(reply["sdp"]) not in (None, ufrag(first["sdp"])), "the server kept its old credentials"
        assert ice_credentials(server_pub)["pair"] is old_pair  # media stays on it until checks end
        await apply_answer(teacher.pub, reply["sdp"])
        await eventually(lambda: ice_credentials(server_pub)["pair"] not in (None, old_pair), timeout=10,
                         what="a pair of the new ICE session")
        assert ice_credentials(server_pub)["remote_ufrag"] == client_ufrag
        await frames_go_on(viewer)
        assert publisher.publisher.pc is server_pub
        assert {t.track_id for t in publisher.publisher.tracks.values()} == track_ids

        # Subscriber: the client asks, the server offers with new credentials on the same connection.
        server_sub = kept.subscriber.pc
        sub_pair = ice_credentials(server_sub)["pair"]
        old_offer_ufrag = ufrag(server_sub.localDescription.sdp)
        offer_msg = await student.request({"type": "restart_ice"}, "offer", "error")
        assert offer_msg["type"] == "offer", offer_msg
        assert ufrag(offer_msg["sdp"]) not in (None, old_offer_ufrag)
        await eventually(lambda: ice_credentials(server_sub)["pair"] not in (None, sub_pair), timeout=10,
                         what="a pair of the subscriber's new ICE session")
        assert ice_credentials(server_sub)["remote_ufrag"] == ufrag(student.sub.localDescription.sdp)
        await frames_go_on(viewer)
        counters = viewer.counters
        assert counters == sorted(counters), "frames arrive in the order sent, across both restarts"

        assert room.participants["student"] is kept and kept.subscriber.pc is server_sub
        assert room.participants["teacher"] is publisher
        later = teacher.events[seen[0]:] + student.events[seen[1]:]
        assert not [e for e in later if e["type"] in ("participant_left", "participant_joined")]
    finally:
        await teacher.close()
        await student.close()


async def test_restart_ice_before_ice_is_up_is_refused_by_name(stoa_server):
    student = RoomClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, "early", "student"))
    student._answer = lambda event: asyncio.sleep(0)  # never answers: its subscriber ICE never starts
    await student.connect()
    try:
        reply = await student.request({"type": "restart_ice"}, "error")
        assert reply["code"] == "ice_restart_refused" and reply["ref"] == "restart_ice", reply
        assert "make a new connection" in reply["message"]
        pong = await student.request({"type": "ping", "t": 2}, "pong")  # the socket stays up
        assert pong["t"] == 2
    finally:
        await student.close()
