"""Overload control: the lag probe's decisions (driven with a fake clock), capacity refusal over WHEP and
the room protocol with nothing half-joined, and a real `stoa serve` whose loop is starved on purpose."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import aiohttp
import pytest

from sfu.aiortc_seam import harden_consent
from sfu.overload import AT_CAPACITY, LoadMonitor, OverloadPolicy, burn_loop
from signaling.room import LOAD, ROOMS
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.peers import FrameCollector, apply_answer, client_pc, make_offer
from tests.serve import ServeProcess, eventually
from tests.test_whip_whep import WhipPublisher

SDP = "application/sdp"


# -- the monitor's decisions -------------------------------------------------------------------------------

class FakeLeg:
    def __init__(self, name: str):
        self.name, self.paused, self.resumed = name, False, 0

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.resumed += 1


def drive(monitor: LoadMonitor, lag: float, seconds: float, start: float, step: float = 0.05) -> float:
    t = start
    while t < start + seconds:
        t += step + lag
        monitor.observe(lag, t, step + lag)
    return t


def test_monitor_sheds_retransmits_then_newest_video_and_recovers(caplog):
    legs = [FakeLeg(f"leg{i}") for i in range(20)]  # oldest first
    monitor = LoadMonitor(OverloadPolicy())
    monitor.legs = lambda: legs
    caplog.set_level(logging.WARNING, logger="sfu.overload")

    t = drive(monitor, 0.001, 3, 0.0)
    assert monitor.level == 0 and monitor.admit() is None and not monitor.in_episode

    t = drive(monitor, 0.4, 1.5, t)  # the loop is 400 ms behind
    assert monitor.shedding_retransmits and not any(leg.paused for leg in legs)
    refusal = monitor.admit()
    assert refusal is not None and refusal.startswith(AT_CAPACITY) and "ms behind" in refusal
    t = drive(monitor, 0.4, 8, t)
    paused = [leg.name for leg in legs if leg.paused]
    assert paused and len(paused) < len(legs)
    assert paused == [leg.name for leg in legs[len(legs) - len(paused):]], "the newest legs are shed first"

    t = drive(monitor, 0.001, 15, t)  # load gone
    assert monitor.level == 0 and not any(leg.paused for leg in legs)
    assert all(leg.resumed for leg in legs[len(legs) - len(paused):])
    assert monitor.admit() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # once when it starts, once when it ends
    assert re.search(r"overload: media is \d+ ms behind", warnings[0])
    assert re.search(r"overload over after [\d.]+ s: worst lag \d+ ms, shed level up to \d+ \(\d+ video legs "
                     r"paused at most\), .* 1 joins refused", warnings[1])
    assert monitor.episodes_total == 1 and monitor.joins_refused == 1


def test_monitor_refuses_beyond_configured_legs():
    monitor = LoadMonitor(OverloadPolicy(max_legs=4))
    count = {"n": 3}
    monitor.leg_count = lambda: count["n"]
    assert monitor.admit() is None
    count["n"] = 4
    assert "the configured capacity is 4" in monitor.admit()
    assert monitor.joins_refused == 1


# -- capacity refusal: 503 / room_full, nothing half-joined -------------------------------------------------

@pytest.fixture
def server_settings(tmp_path):
    from shared.config import load_settings
    return load_settings(environ={}, overrides={
        "dev": True, "host": "127.0.0.1", "port": 8080, "ice_addresses": ["127.0.0.1"],
        "data_dir": str(tmp_path / "data"), "capacity_legs": 2, "overload_control": False})


async def whep_post(http, base: str, room: str, token: str, offer: str, kind: str = "whep"):
    async with http.post(f"{base}/{kind}/{room}", data=offer, headers={
            "Content-Type": SDP, "Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def test_joins_beyond_capacity_are_refused_cleanly_and_admitted_again_later(stoa_server):
    room_name = "capacity"
    manager = stoa_server.app[ROOMS]
    async with aiohttp.ClientSession() as http:
        pub = await WhipPublisher(http, stoa_server.base, room_name,
                                  stoa_server.token(room_name, "teacher", "instructor")).publish(
            CounterVideoTrack(), ToneAudioTrack())
        room = manager.rooms[room_name]
        await eventually(lambda: len(room.tracks()) == 2)

        first = client_pc()
        first.addTransceiver("video", direction="recvonly")
        first.addTransceiver("audio", direction="recvonly")
        collector = {}
        first.on("track", lambda track: collector.setdefault(track.kind, FrameCollector(track)))
        status, body, headers = await whep_post(http, stoa_server.base, room_name,
                                                stoa_server.token(room_name, "v1", "viewer"), await make_offer(first))
        assert status == 201, body
        await apply_answer(first, body)
        await eventually(lambda: "video" in collector)
        await collector["video"].wait_frames(5, timeout=20)
        assert manager.leg_count() == 2

        # Beyond capacity: WHEP answers 503 with the reason, and nothing of the refused viewer remains.
        participants, pcs = set(room.participants), len(manager.peers.live)
        second = client_pc()
        second.addTransceiver("video", direction="recvonly")
        status, body, headers = await whep_post(http, stoa_server.base, room_name,
                                                stoa_server.token(room_name, "v2", "viewer"), await make_offer(second))
        assert status == 503
        assert AT_CAPACITY in body and "configured capacity is 2" in body
        assert headers.get("Retry-After")
        assert set(room.participants) == participants and len(manager.peers.live) == pcs
        await second.close()

        # The room protocol says room_full with the same message and closes; nothing joined either.
        ws = await http.ws_connect(f"{stoa_server.ws_base}/ws/rooms/{room_name}")
        await ws.send_json({"type": "join", "token": stoa_server.token(room_name, "s1", "student")})
        reply = await ws.receive_json(timeout=10)
        assert reply["type"] == "error" and reply["code"] == "room_full"
        assert AT_CAPACITY in reply["message"]
        await ws.close()
        assert set(room.participants) == participants and len(manager.peers.live) == pcs

        # The teacher is always let in (a publisher is not refused); the metrics count the refusals.
        assert stoa_server.app[LOAD].joins_refused == 2
        async with http.get(f"{stoa_server.base}/metrics") as resp:
            text = await resp.text()
        assert re.search(r"^stoa_joins_refused_total 2\.0$", text, re.M)

        # Capacity comes back when a viewer leaves.
        location = [p.session_id for p in room.participants.values() if p.identity == "v1"][0]
        async with http.delete(f"{stoa_server.base}/whep/{room_name}/{location}",
                               headers={"Authorization": f"Bearer {stoa_server.token(room_name, 'v1', 'viewer')}"}) as resp:
            assert resp.status == 200
        await first.close()
        await eventually(lambda: manager.leg_count() == 0)
        third = client_pc()
        third.addTransceiver("video", direction="recvonly")
        status, body, _ = await whep_post(http, stoa_server.base, room_name,
                                          stoa_server.token(room_name, "v3", "viewer"), await make_offer(third))
        assert status == 201, body
        await third.close()
        await pub.stop()


# -- a real server whose loop is starved on purpose -----------------------------------------------------

@pytest.mark.slow
async def test_a_starved_loop_keeps_its_connections_and_media_comes_back(tmp_path):
    """The server's loop is blocked 0.7 s out of every 0.707 s for 14 s: media stops, but STUN, consent and
    DTLS keep the sessions, and the same connections carry media again once the loop is free. One process (--workers 0): the viewer shares the starved loop, as in issue 9."""
    room = "starved"
    server = ServeProcess(tmp_path, "--workers", "0", env={"STOA_DEBUG_HOOKS": "true"})
    pcs = []
    try:
        async with aiohttp.ClientSession() as http:
            await server.wait_up(http)
            publisher = client_pc()
            pcs.append(publisher)
            publisher.addTransceiver(CounterVideoTrack(), direction="sendonly")
            publisher.addTransceiver(ToneAudioTrack(), direction="sendonly")
            offer = await make_offer(publisher)
            harden_consent(publisher)  # the clients are robust peers, as browsers are (a 30 s window)
            async with http.post(f"{server.base}/whip/{room}", data=offer, headers={
                    "Content-Type": SDP, "Authorization": f"Bearer {server.token(room, 'teacher', 'instructor')}"}) as resp:
                assert resp.status == 201, await resp.text()
                await apply_answer(publisher, await resp.text())
            viewer = client_pc()
            pcs.append(viewer)
            viewer.addTransceiver("video", direction="recvonly")
            viewer.addTransceiver("audio", direction="recvonly")
            frames = {}
            viewer.on("track", lambda track: frames.setdefault(track.kind, FrameCollector(track)))
            offer = await make_offer(viewer)
            harden_consent(viewer)
            status, body, _ = await whep_post(http, server.base, room, server.token(room, "v1", "viewer"), offer)
            assert status == 201, body
            await apply_answer(viewer, body)
            await eventually(lambda: "video" in frames, 20)
            await frames["video"].wait_frames(10, timeout=20)

            async with http.post(server.base + "/debug/burn?seconds=14&duty=0.99&slice=0.7") as resp:
                assert resp.status == 202, await resp.text()
            states = set()
            end = time.monotonic() + 15
            while time.monotonic() < end:
                states |= {pc.connectionState for pc in pcs}
                await asyncio.sleep(0.2)
            assert states == {"connected"}, states

            # The burn is over: the same connections carry media again (decoded frames advance).
            before = frames["video"].frames
            await eventually(lambda: frames["video"].frames >= before + 30, 30)
            assert {pc.connectionState for pc in pcs} == {"connected"}
            async with http.get(server.base + "/metrics") as resp:
                metrics = await resp.text()
            assert re.search(r"^stoa_peer_connections 2\.0$", metrics, re.M), metrics
            lag_total = float(re.search(r"^stoa_event_loop_lag_seconds_total (\S+)$", metrics, re.M).group(1))
            assert lag_total > 5, "the probe measured the starved loop"
            assert float(re.search(r"^stoa_overload_episodes_total (\S+)$", metrics, re.M).group(1)) >= 1

            log = server.log.read_text()
            assert "ICE consent expired" not in log and "Consent to send expired" not in log
            await eventually(lambda: "overload over after" in server.log.read_text(), 30)
            log = server.log.read_text()
            assert re.search(r"WARNING sfu.overload: overload: media is \d+ ms behind", log), log
            assert re.search(r"overload over after [\d.]+ s: worst lag \d+ ms", log), log
    finally:
        for pc in pcs:
            await pc.close()
        server.stop()


async def test_hardened_consent_keeps_being_answered_across_a_stalled_loop():
    """Two peers in this process; one checks consent every 0.2 s with a 1.5 s expiry. A 2 s stall of the
    whole loop (longer than the expiry) neither expires consent nor stops the checks being answered."""
    from sfu.aiortc_seam import consent_answers

    a, b = client_pc(), client_pc()
    try:
        a.addTransceiver(CounterVideoTrack(), direction="sendonly")
        offer = await make_offer(a)
        harden_consent(a, interval=0.2, expiry=1.5)
        from tests.peers import answer_offer
        frames = {}
        b.on("track", lambda track: frames.setdefault(track.kind, FrameCollector(track)))
        await apply_answer(a, await answer_offer(b, offer))
        await eventually(lambda: consent_answers(a) >= 3, 20)
        time.sleep(2.0)  # the loop stalls, as under overload: nothing is read or answered meanwhile
        answered = consent_answers(a)
        await eventually(lambda: consent_answers(a) >= answered + 3, 20)
        assert a.connectionState == "connected" and b.connectionState == "connected"
        before = frames["video"].frames
        await eventually(lambda: frames["video"].frames > before + 10, 20)
    finally:
        await a.close()
        await b.close()


@pytest.mark.slow
@pytest.mark.parametrize("hardened", [False, True], ids=["stock-consent", "hardened-consent"])
async def test_consent_under_a_starved_loop_needs_the_hardening(stoa_server, monkeypatch, caplog, hardened):
    """The server's loop is starved (burn_loop, what POST /debug/burn runs) with consent checks every 0.5 s.
    Stock aioice sends each check once with a 0.5 s timeout: the loop answers it one turn (0.7 s) late, six
    checks fail and the server closes its own publisher connection, as in the 250-viewer runs of issue 9.
    Hardened (same interval, and the same 3 s budget as six stock checks), the publisher stays connected
    and a viewer decodes its frames once the loop is free. The clients are robust peers, as browsers are."""
    import functools

    import aioice.ice

    import sfu.peer

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.5)
    # The server reads one datagram per socket and loop turn, as before read_in_batches: a consent answer
    # then waits behind media and loses to aioice's 0.5 s timer. Read in batches on the stock loop, it is
    # read in the turn before that timer runs; uvloop (stoa serve) runs due timers first, so there it loses.
    monkeypatch.setattr(sfu.peer, "read_in_batches", lambda pc: None)
    monkeypatch.setattr(sfu.peer, "harden_consent",
                        functools.partial(harden_consent, interval=0.5, expiry=3.0) if hardened else lambda pc: None)
    caplog.set_level(logging.INFO, logger="aioice.ice")
    room_name = "consent"
    pcs = []
    try:
        async with aiohttp.ClientSession() as http:
            publisher = client_pc()
            pcs.append(publisher)
            publisher.addTransceiver(CounterVideoTrack(), direction="sendonly")
            offer = await make_offer(publisher)
            harden_consent(publisher)
            status, body, _ = await whep_post(http, stoa_server.base, room_name,
                                              stoa_server.token(room_name, "teacher", "instructor"), offer, "whip")
            assert status == 201, body
            await apply_answer(publisher, body)
            room = stoa_server.app[ROOMS].rooms[room_name]
            server_pc = room.participants["teacher"].publisher.pc
            await eventually(lambda: server_pc.connectionState == "connected", 10)

            # Six stock checks take about 12 loop turns (8.4 s) to fail; 14 s leaves a margin on a busy box.
            burn = burn_loop(14.0, duty=0.9999, slice_s=0.7)
            await burn
            if not hardened:
                await eventually(lambda: server_pc.connectionState in ("failed", "closed"), 10)
                assert any("Consent to send expired" in r.getMessage() for r in caplog.records)
                return
            assert server_pc.connectionState == "connected"
            assert not any("Consent to send expired" in r.getMessage() for r in caplog.records)
            viewer = client_pc()
            pcs.append(viewer)
            viewer.addTransceiver("video", direction="recvonly")
            frames = {}
            viewer.on("track", lambda track: frames.setdefault(track.kind, FrameCollector(track)))
            offer = await make_offer(viewer)
            harden_consent(viewer)
            status, body, _ = await whep_post(http, stoa_server.base, room_name,
                                              stoa_server.token(room_name, "v1", "viewer"), offer)
            assert status == 201, body
            await apply_answer(viewer, body)
            await eventually(lambda: "video" in frames, 10)
            await frames["video"].wait_frames(20, timeout=15)
            assert server_pc.connectionState == "connected"
    finally:
        for pc in pcs:
            await pc.close()

