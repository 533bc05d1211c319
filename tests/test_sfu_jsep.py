"""sfu/jsep.py byte for byte, and the aiortc renegotiation fixes of sfu/aiortc_seam.py with real aiortc peers."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from sfu.jsep import conform_answer, rejected_mids
from sfu.peer import IceSettings, IdleTrack, PeerFactory

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)

OFFER = (
    "v=0\r\no=- 1 3 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\n"
    "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=inactive\r\n"
)
ANSWER = (
    "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n"
    "m=audio 40000 UDP/TLS/RTP/SAVPF 111\r\na=candidate:1 1 udp 1 127.0.0.1 40000 typ host\r\na=mid:0\r\na=recvonly\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=candidate:1 1 udp 1 127.0.0.1 40000 typ host\r\na=end-of-candidates\r\n"
    "a=mid:2\r\na=inactive\r\n"
)


def test_rejected_m_line_is_rejected_and_left_out_of_the_bundle():
    assert conform_answer(OFFER, ANSWER) == (
        "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
        "m=audio 40000 UDP/TLS/RTP/SAVPF 111\r\na=candidate:1 1 udp 1 127.0.0.1 40000 typ host\r\na=mid:0\r\n"
        "a=recvonly\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n"
        "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=inactive\r\n"
    )
    assert rejected_mids(OFFER) == {"2"}


def test_every_m_line_rejected_means_no_bundle_group():
    offer = "v=0\r\ns=-\r\nt=0 0\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=inactive\r\n"
    answer = "v=0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=inactive\r\n"
    assert conform_answer(offer, answer) == (
        "v=0\r\ns=-\r\nt=0 0\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=inactive\r\n")


def test_an_answer_with_nothing_rejected_is_unchanged():
    offer = OFFER.replace("m=video 0 ", "m=video 9 ").replace("BUNDLE 0 1", "BUNDLE 0 1 2")
    assert conform_answer(offer, ANSWER) == ANSWER


async def test_a_second_video_section_of_a_first_offer_gets_the_bundle_transport():
    # aiortc's balanced policy left it on a transport that the answer's BUNDLE stopped (rebundle_orphans).
    peers = PeerFactory(IceSettings(addresses=["127.0.0.1"]))
    server = peers.create()
    server.createDataChannel("stoa")
    for kind in ("audio", "video", "video"):
        server.addTransceiver(IdleTrack(kind), direction="sendonly")
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await client.setRemoteDescription(RTCSessionDescription(sdp=await peers.offer(server), type="offer"))
        await client.setLocalDescription(await client.createAnswer())
        await peers.set_remote(server, client.localDescription.sdp, "answer")
        transports = {id(t.sender.transport) for t in server.getTransceivers()}
        assert len(transports) == 1
        for _ in range(200):
            if all(t.sender.transport.state == "connected" for t in server.getTransceivers()):
                break
            await asyncio.sleep(0.05)
        assert [t.sender.transport.state for t in server.getTransceivers()] == ["connected"] * 3
    finally:
        await client.close()
        await peers.close_all()


async def connected_on_one_transport(pc: RTCPeerConnection) -> None:
    assert len({id(t.receiver.transport) for t in pc.getTransceivers()}) == 1
    for _ in range(200):
        if all(t.receiver.transport.state == "connected" for t in pc.getTransceivers()):
            break
        await asyncio.sleep(0.05)
    assert [t.receiver.transport.state for t in pc.getTransceivers()] == ["connected"] * len(pc.getTransceivers())


async def test_a_viewer_offered_two_new_videos_at_once_receives_both_on_the_bundle_transport():
    # The viewer joined an empty room (a data channel only); two cameras come in one renegotiation. The second
    # video section kept a transport aiortc stopped, so its receiver never started (tests/peers.set_remote).
    from tests.peers import answer_offer

    peers = PeerFactory(IceSettings(addresses=["127.0.0.1"]))
    server = peers.create()
    server.createDataChannel("stoa")
    viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await peers.set_remote(server, await answer_offer(viewer, await peers.offer(server)), "answer")
        for kind in ("video", "audio", "video", "audio"):
            server.addTransceiver(IdleTrack(kind), direction="sendonly")
        await peers.set_remote(server, await answer_offer(viewer, await peers.offer(server)), "answer")
        await connected_on_one_transport(viewer)
    finally:
        await viewer.close()
        await peers.close_all()


async def test_a_publisher_offer_with_two_sections_of_each_kind_is_received_on_the_bundle_transport():
    # Camera, microphone, screen, screen audio in one offer: the server's second audio section was orphaned.
    from tests.peers import apply_answer, make_offer

    peers = PeerFactory(IceSettings(addresses=["127.0.0.1"]))
    server = peers.create()
    publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for kind in ("video", "audio", "video", "audio"):
            publisher.addTransceiver(IdleTrack(kind), direction="sendonly")
        await apply_answer(publisher, await peers.answer(server, await make_offer(publisher)))
        await connected_on_one_transport(server)
    finally:
        await publisher.close()
        await peers.close_all()
