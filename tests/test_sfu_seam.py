"""The aiortc seam: version and shape checks, and its behaviour with real peers."""

from __future__ import annotations

import asyncio

import pytest

import sfu.aiortc_seam as seam
from sfu.aiortc_seam import SeamError, check_compatibility, restrict_ice_gathering
from tests.peers import answer_offer, apply_answer, client_pc, make_offer

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)


def test_installed_aiortc_is_the_one_the_seam_knows():
    check_compatibility()


def test_a_different_aiortc_version_fails_loudly(monkeypatch):
    monkeypatch.setattr(seam, "SUPPORTED_AIORTC", "0.0.1")
    with pytest.raises(SeamError, match="aiortc .* was written for 0.0.1"):
        check_compatibility()


def test_a_missing_internal_fails_loudly(monkeypatch):
    from aiortc import RTCRtpReceiver
    monkeypatch.delattr(RTCRtpReceiver, "_send_rtcp_pli")
    with pytest.raises(SeamError, match="RTCRtpReceiver lacks _send_rtcp_pli"):
        check_compatibility()


async def test_gathering_can_be_limited_to_loopback():
    pc = client_pc()
    pc.createDataChannel("x")
    offer = await pc.createOffer()
    restrict_ice_gathering(pc, ["127.0.0.1"])
    await pc.setLocalDescription(offer)
    candidates = [l for l in pc.localDescription.sdp.splitlines() if l.startswith("a=candidate")]
    assert candidates and all(" 127.0.0.1 " in c for c in candidates)
    await pc.close()


def test_no_ice_servers_by_default():
    from sfu.peer import IceSettings
    from shared.config import load_settings
    assert load_settings(environ={"STOA_DEV": "1"}).ice_servers == []
    assert IceSettings().rtc_servers() == []
    servers = IceSettings(servers=["turn:turn.example.org"], username="u", credential="c").rtc_servers()
    assert servers[0].urls == "turn:turn.example.org" and servers[0].username == "u"


async def test_a_client_reads_its_socket_in_batches():
    """tests/peers.py's peers drain their ICE socket per wakeup (seam.read_in_batches): asyncio's one datagram
    per socket and loop iteration overflowed a viewer's socket when its loop also ran the server and four
    encoding publishers (tests/test_lastn.py)."""
    import socket

    a, b, channel, received = await _channel_pair()  # ICE, DTLS and SCTP through the batched reader
    try:
        channel.send("hello")
        await _wait_for(lambda: received == ["hello"])
        port = next(int(line.split()[5]) for line in b.localDescription.sdp.splitlines()
                    if line.startswith("a=candidate") and " 127.0.0.1 " in line)
        wakeups, datagrams = seam.batched_reads(b)
        assert datagrams > 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(20):  # queued at once: no loop iteration runs between them
                sender.sendto(b"\x00" * 40, ("127.0.0.1", port))  # neither STUN, DTLS nor RTP: ignored
            await _wait_for(lambda: seam.batched_reads(b)[1] >= datagrams + 20)
        more_wakeups, more = (n - m for n, m in zip(seam.batched_reads(b), (wakeups, datagrams)))
        assert more >= 20 and more_wakeups <= 2  # stock asyncio: 20 (an SCTP packet may add one)
        channel.send("still open")
        await _wait_for(lambda: received == ["hello", "still open"])
    finally:
        await a.close()
        await b.close()


# --- DataChannelSender: the synchronous data-channel path -------------------------------------------

async def _channel_pair(**options):
    """A real aiortc pair on loopback with one data channel; returns (a, b, channel, received list)."""
    a, b = client_pc(), client_pc()
    channel = a.createDataChannel("stoa", **options)
    received: list = []
    b.on("datachannel", lambda ch: ch.on("message", received.append))
    await apply_answer(a, await answer_offer(b, await make_offer(a)))
    for _ in range(200):
        if channel.readyState == "open":
            break
        await asyncio.sleep(0.05)
    assert channel.readyState == "open"
    return a, b, channel, received


async def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_data_channel_fast_path_delivers_in_order():
    a, b, channel, received = await _channel_pair()
    try:
        sender = seam.DataChannelSender(channel)
        expected = []
        for i in range(300):
            # Every 50th message is over one SCTP chunk, so it takes aiortc's own path (fragmented).
            text = f"{i}:" + ("x" * 3000 if i % 50 == 0 else "é")
            expected.append(text)
            sender.send(text, text.encode() if i % 2 else None)  # a fan-out hands its bytes, encoded once
            if i % 10 == 0:
                await asyncio.sleep(0.005)  # let SACKs in and the congestion window reopen, as in a live room
        await _wait_for(lambda: len(received) == len(expected))
        assert received == expected
        assert sender.fast_sends > 150  # the rest waited behind a full window or a fragmented message
        assert channel.bufferedAmount == 0
    finally:
        await a.close()
        await b.close()


async def test_data_channel_fast_path_survives_loss():
    a, b, channel, received = await _channel_pair()
    try:
        stats = seam.simulate_data_loss(b, 0.2, seed=7)
        sender = seam.DataChannelSender(channel)
        expected = [f"m{i}" for i in range(150)]
        for text in expected:
            sender.send(text)
            await asyncio.sleep(0.002)
        await _wait_for(lambda: len(received) == len(expected), timeout=60)
        assert received == expected
        assert stats["dropped"] > 0 and sender.fast_sends > 0
    finally:
        await a.close()
        await b.close()


async def test_partially_reliable_channels_take_the_stock_path():
    a, b, channel, received = await _channel_pair(maxRetransmits=0)
    try:
        sender = seam.DataChannelSender(channel)
        for i in range(20):
            sender.send(f"u{i}")
        await _wait_for(lambda: len(received) == 20)
        assert sender.fast_sends == 0
    finally:
        await a.close()
        await b.close()


async def test_a_closed_channel_refuses_like_aiortc():
    from aiortc.exceptions import InvalidStateError
    a, b, channel, _ = await _channel_pair()
    sender = seam.DataChannelSender(channel)
    await a.close()
    await b.close()
    with pytest.raises(InvalidStateError):
        sender.send("late")


# --- ICE restart ---------------------------------------------------------------------------------------------

async def test_ice_restart_in_place_nominates_a_new_pair_and_the_fast_path_follows():
    from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

    from sfu.peer import local_candidates

    a, b, channel, received = await _channel_pair()
    try:
        sender = seam.DataChannelSender(channel)
        sender.send("before")
        await _wait_for(lambda: received == ["before"])
        old_a, old_b = seam.ice_credentials(a), seam.ice_credentials(b)

        def candidates(pc):  # what the other side would read from a trickle-ice-sdpfrag
            return [candidate_from_sdp(candidate_to_sdp(c)) for c in local_candidates(pc)]

        ufrag_a, pwd_a = seam.begin_ice_restart(a)  # a's offer fragment
        ufrag_b, pwd_b = seam.begin_ice_restart(b)  # b's answer to it
        await seam.finish_ice_restart(b, ufrag_a, pwd_a, candidates(a), True)
        await seam.finish_ice_restart(a, ufrag_b, pwd_b, candidates(b), True)
        new_a, new_b = seam.ice_credentials(a), seam.ice_credentials(b)
        assert (new_a["local_ufrag"], new_a["remote_ufrag"]) == (ufrag_a, ufrag_b)
        assert (new_b["local_ufrag"], new_b["remote_ufrag"]) == (ufrag_b, ufrag_a)
        assert ufrag_a != old_a["local_ufrag"] and ufrag_b != old_b["local_ufrag"]
        await _wait_for(lambda: seam.ice_credentials(a)["pair"] not in (None, old_a["pair"])
                        and seam.ice_credentials(b)["pair"] not in (None, old_b["pair"]))
        fast = sender.fast_sends
        for i in range(20):
            sender.send(f"after {i}")
        await _wait_for(lambda: len(received) == 21)
        assert received[1:] == [f"after {i}" for i in range(20)]
        assert sender.fast_sends > fast, "the synchronous path resolved the new pair"
        assert a.connectionState == b.connectionState == "connected"
    finally:
        await a.close()
        await b.close()


async def test_an_ice_restart_the_other_side_never_completes_closes_the_connection(monkeypatch):
    monkeypatch.setattr(seam, "ICE_RESTART_TIMEOUT", 1.0)
    a, b, channel, received = await _channel_pair()
    try:
        # b restarts with credentials a never learns: no check can succeed, consent is gone.
        seam.begin_ice_restart(b)
        await seam.finish_ice_restart(b, "abcd", "abcdefghijklmnopqrstuv", [], False)
        await _wait_for(lambda: b.iceConnectionState in ("failed", "closed"), timeout=15)
    finally:
        await a.close()
        await b.close()


async def test_transport_feedback_is_taken_out_of_the_viewers_rtcp():
    """watch_transport_feedback: FMT 15 packets go to the callback as raw bytes, the rest to aiortc."""
    import types

    from sfu.twcc import build_feedback

    given: list[bytes] = []

    async def stock(data: bytes) -> None:
        given.append(data)

    dtls = types.SimpleNamespace(_handle_rtcp_data=stock)
    seen: list[bytes] = []
    assert seam.watch_transport_feedback(dtls, seen.append)
    assert not seam.watch_transport_feedback(dtls, seen.append)  # once per transport
    rr = bytes.fromhex("81c90007") + b"\x00" * 28
    fb = build_feedback(1, 2, 0, 10, [1000, 2000, None, 3000])
    await dtls._handle_rtcp_data(rr + fb)
    await dtls._handle_rtcp_data(fb)
    await dtls._handle_rtcp_data(rr)
    assert seen == [fb, fb] and given == [rr, rr]

    def broken(data: bytes) -> None:
        raise RuntimeError("a bug in the handler")

    other = types.SimpleNamespace(_handle_rtcp_data=stock)
    seam.watch_transport_feedback(other, broken)
    await other._handle_rtcp_data(fb + rr)  # logged; the receive loop goes on
    assert given == [rr, rr, rr]
