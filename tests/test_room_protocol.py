"""End to end over the room protocol: real WebSocket, real aiortc peers on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from sfu.aiortc_seam import decoder_running, simulate_receive_loss
from tests.client import RoomClient
from tests.fixtures.clock import FakeClock
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.serve import eventually

ROOM = "physics"


async def join(server, identity, role, room=ROOM, **kw) -> RoomClient:
    return await RoomClient(server.ws_base, room, server.token(room, identity, role, **kw)).connect()


@pytest.fixture
def server_clock():
    """The room timers (resume grace, empty-room drop) run when a test advances this clock."""
    return FakeClock()


def room_of(server, name=ROOM):
    from signaling.room import ROOMS
    return server.app[ROOMS].rooms.get(name)


async def room_dropped(server, clock: FakeClock, name=ROOM) -> None:
    """The empty room goes at once, or a second later on the server's clock when broadcasts were pending."""
    await eventually(lambda: room_of(server, name) is None or clock.sleepers, 10, "the room's drop timer")
    clock.advance(1.0)
    await eventually(lambda: room_of(server, name) is None, 10, "the room to close")


async def test_broadcast_reaches_three_subscribers_with_the_frames_sent(stoa_server):
    teacher = await join(stoa_server, "teacher", "instructor")
    students = [await join(stoa_server, f"s{i}", "student") for i in range(3)]
    video = CounterVideoTrack()
    reply = await teacher.publish(video, ToneAudioTrack(), sources=["camera", "microphone"])
    assert reply["type"] == "answer"
    published = await students[0].expect("track_published")
    assert published["track"]["participant"] == "teacher"

    for s in students:
        vid = await s.wait_track("video")
        await vid.wait_frames(60, timeout=20)
        aud = await s.wait_track("audio")
        await aud.wait_frames(50, timeout=10)
    sent_before = video.count
    await asyncio.sleep(1.0)

    room = room_of(stoa_server)
    for track in room.tracks():
        assert not decoder_running(track.receiver), "the SFU must not decode forwarded tracks"
    for s in students:
        counters = s.video().counters
        assert counters == sorted(counters), "frames arrive in the order sent"
        assert len(set(counters)) == len(counters)
        span = counters[-1] - counters[0] + 1
        assert len(counters) >= 0.9 * span, f"decoded {len(counters)} of {span} frames sent"
        assert counters[-1] >= sent_before - 15
        info = s.track_info
        assert {t["source"] for t in info.values()} == {"camera", "microphone"}
    for c in [teacher, *students]:
        await c.close()


async def test_late_subscriber_gets_a_keyframe_quickly(stoa_server):
    teacher = await join(stoa_server, "teacher", "instructor")
    await teacher.publish(CounterVideoTrack(), sources=["camera"])
    await asyncio.sleep(2.5)  # well past the publisher's first keyframe
    late = await join(stoa_server, "late", "student")
    loop = asyncio.get_event_loop()
    connected_at = None
    for _ in range(200):
        if late.sub.connectionState == "connected" and late.video() is not None:
            connected_at = loop.time()
            break
        await asyncio.sleep(0.01)
    assert connected_at is not None
    vid = late.video()
    await vid.wait_frames(1, timeout=5)
    # Joining (signaling, ICE, DTLS) aside, the first frame must follow within 1 s: the leg waits
    # for a keyframe and the SFU asks the publisher for one at once.
    assert vid.first_frame_at - connected_at < 1.0
    up = room_of(stoa_server).tracks()[0]
    assert up.plis_sent >= 1
    await late.close()
    await teacher.close()


async def test_nack_repairs_loss_on_a_subscriber_leg(stoa_server):
    teacher = await join(stoa_server, "teacher", "instructor")
    lossy = await join(stoa_server, "lossy", "student")
    await teacher.publish(CounterVideoTrack(), sources=["camera"])
    vid = await lossy.wait_track("video")
    await vid.wait_frames(5, timeout=10)
    room = room_of(stoa_server)
    leg = room.participants["lossy"].subscriber.legs[0][1]
    stats = simulate_receive_loss(lossy.sub, 0.05, spare_payload_types=frozenset(
        {leg.seam.params.rtx_payload_type}))
    before = len(vid.counters)
    plis_before = leg.keyframe_requests
    await asyncio.sleep(5)
    assert stats["dropped"] > 10
    assert leg.retransmits >= stats["dropped"] * 0.8
    got = vid.counters[before:]
    span = got[-1] - got[0] + 1
    assert len(got) >= 0.9 * span
    assert leg.keyframe_requests == plis_before, "no decode errors: the viewer never asked for a keyframe"
    # 5% loss is repairable: the viewer is not judged unable to keep up, so retransmission goes on.
    assert leg.quality.level != "bad" and not leg.retransmit.suspended, leg.stats()
    assert leg.retransmit.rtt is not None, "the seam hands the leg its receiver reports (RTT from LSR/DLSR)"
    await lossy.close()
    await teacher.close()


async def test_publisher_leaving_is_told_and_cleaned_up(stoa_server, server_clock):
    teacher = await join(stoa_server, "teacher", "instructor")
    student = await join(stoa_server, "student", "student")
    await teacher.publish(CounterVideoTrack(), ToneAudioTrack(), sources=["camera", "microphone"])
    await (await student.wait_track("video")).wait_frames(3)
    left = asyncio.ensure_future(student.wait_for("participant_left"))
    await teacher.close()
    assert (await left)["identity"] == "teacher"
    assert any(e["type"] == "track_unpublished" for e in student.events)
    room = room_of(stoa_server)
    assert room.tracks() == []
    await student.close()
    from signaling.room import ROOMS
    manager = stoa_server.app[ROOMS]
    for _ in range(100):
        if not manager.peers.live:
            break
        await asyncio.sleep(0.05)
    assert not manager.peers.live, "no peer connection is left after everyone leaves"
    await room_dropped(stoa_server, server_clock)


@pytest.mark.parametrize("raw, code", [
    ("not json", "bad_json"),
    ('{"type": "teleport"}', "unknown_type"),
    ('[1, 2]', "invalid"),
    ('{"type": "publish"}', "invalid"),
    ('{"type": "mute", "track_id": "x", "muted": "yes"}', "invalid"),
    ('{"type": "publish", "sdp": "hello"}', "bad_sdp"),
    ('{"type": "publish", "sdp": "v=0\\r\\nnonsense"}', "bad_sdp"),
])
async def test_bad_messages_get_named_errors_and_the_room_keeps_serving(stoa_server, raw, code):
    teacher = await join(stoa_server, "teacher", "instructor")
    watcher = await join(stoa_server, "watcher", "student")
    await teacher.publish(CounterVideoTrack(), sources=["camera"])
    vid = await watcher.wait_track("video")
    await vid.wait_frames(3)
    reply = await teacher.request(raw, "error")
    assert reply["code"] == code and reply["message"]
    frames = vid.frames
    pong = await teacher.request({"type": "ping"}, "pong")
    assert pong["type"] == "pong"
    await asyncio.sleep(0.5)
    assert vid.frames > frames, "the room keeps forwarding after a bad message"
    await teacher.close()
    await watcher.close()


async def test_oversized_message_is_refused(stoa_server):
    client = await join(stoa_server, "big", "student")
    reply = await client.request('{"type": "ping", "pad": "' + "x" * 200_000 + '"}', "error")
    assert reply["code"] == "too_large"
    await client.close()


async def test_tokens_are_checked(stoa_server):
    import time

    async def attempt(token, room=ROOM):
        c = RoomClient(stoa_server.ws_base, room, token)
        await c.connect(join=False)
        reply = await c.request({"type": "join", "token": token}, "joined", "error")
        await c.close()
        return reply

    bad = await attempt("garbage")
    assert bad["code"] == "unauthorized" and "JWT" in bad["message"]
    expired = await attempt(stoa_server.token(ROOM, "x", "student", now=time.time() - 7200, ttl=60))
    assert expired["code"] == "unauthorized" and "expired" in expired["message"]
    wrong = await attempt(stoa_server.token("other", "x", "student"))
    assert wrong["code"] == "unauthorized" and "other" in wrong["message"]
    from shared.auth import mint_token
    forged = mint_token("devkey", "a-different-secret-0123456789-abcdef", room=ROOM, identity="x", role="student")
    assert (await attempt(forged))["code"] == "unauthorized"

    viewer = await join(stoa_server, "viewer", "viewer")
    reply = await viewer.publish(CounterVideoTrack())
    assert reply["type"] == "error" and reply["code"] == "forbidden"
    student = await join(stoa_server, "student", "student")
    assert (await student.publish(CounterVideoTrack()))["code"] == "forbidden"
    await viewer.close()
    await student.close()


async def test_messages_before_join_are_refused(stoa_server):
    c = RoomClient(stoa_server.ws_base, ROOM, "")
    await c.connect(join=False)
    reply = await c.request({"type": "ping"}, "error")
    assert reply["code"] == "not_joined"
    await c.close()


async def test_mute_stops_forwarding_and_tells_everyone(stoa_server):
    teacher = await join(stoa_server, "teacher", "instructor")
    student = await join(stoa_server, "student", "student")
    await teacher.publish(CounterVideoTrack(), sources=["camera"])
    vid = await student.wait_track("video")
    await vid.wait_frames(3)
    track_id = room_of(stoa_server).tracks()[0].track_id
    await teacher.send({"type": "mute", "track_id": track_id, "muted": True})
    event = await student.expect("track_muted")
    assert event["muted"] is True
    await asyncio.sleep(0.3)
    frames = vid.frames
    await asyncio.sleep(0.7)
    assert vid.frames - frames <= 1
    await teacher.send({"type": "mute", "track_id": track_id, "muted": False})
    await vid.wait_frames(frames + 5)
    await teacher.close()
    await student.close()


async def test_metrics_endpoint_reports_forwarding(stoa_server):
    import aiohttp

    teacher = await join(stoa_server, "teacher", "instructor")
    student = await join(stoa_server, "student", "student")
    await teacher.publish(CounterVideoTrack(), sources=["camera"])
    await (await student.wait_track("video")).wait_frames(5)
    async with aiohttp.ClientSession() as http:
        async with http.get(stoa_server.base + "/metrics") as resp:
            text = await resp.text()
    assert resp.status == 200
    assert 'stoa_participants{transport="ws"} 2.0' in text
    assert "stoa_subscriber_legs 1.0" in text
    forwarded = next(l for l in text.splitlines() if l.startswith("stoa_rtp_forwarded_packets_total"))
    assert float(forwarded.split()[-1]) > 0
    # Per-viewer connection quality: a gauge of legs per level, and a counter of changes (0 so far).
    assert 'stoa_subscriber_legs_by_quality{quality="good"} 1.0' in text
    assert 'stoa_subscriber_legs_by_quality{quality="bad"} 0.0' in text
    assert 'stoa_subscriber_quality_changes_total{quality="bad"} 0.0' in text
    await teacher.close()
    await student.close()


async def test_metrics_counters_keep_the_totals_of_closed_tracks_and_viewers(stoa_server, server_clock):
    """Prometheus counters only grow: a track that closes and a viewer that leaves keep their counts."""
    import aiohttp

    names = ("stoa_rtp_received_packets_total", "stoa_rtp_forwarded_packets_total",
             "stoa_keyframe_requests_sent_total", "stoa_rtp_retransmitted_packets_total", "stoa_nack_misses_total")

    async def counters() -> dict[str, float]:
        async with aiohttp.ClientSession() as http:
            async with http.get(stoa_server.base + "/metrics") as resp:
                text = await resp.text()
        return {l.split()[0]: float(l.split()[-1]) for l in text.splitlines() if l.split()[:1] and l.split()[0] in names}

    teacher = await join(stoa_server, "teacher", "instructor")
    student = await join(stoa_server, "student", "student")
    await teacher.publish(CounterVideoTrack(), sources=["camera"])
    await (await student.wait_track("video")).wait_frames(10)
    before = await counters()
    assert before["stoa_rtp_received_packets_total"] > 0 and before["stoa_rtp_forwarded_packets_total"] > 0
    await student.close()
    await teacher.close()
    await room_dropped(stoa_server, server_clock)
    after = await counters()
    for name in names:
        assert after[name] >= before[name], f"{name} went down from {before[name]} to {after[name]}"


async def test_sender_reports_on_subscriber_legs_are_coherent(stoa_server):
    """Each leg's SRs carry real NTP time and packet counts, so players can sync audio and video."""
    import datetime

    teacher = await join(stoa_server, "teacher", "instructor")
    student = await join(stoa_server, "student", "student")
    await teacher.publish(CounterVideoTrack(), ToneAudioTrack(), sources=["camera", "microphone"])
    await (await student.wait_track("video")).wait_frames(5)
    await asyncio.sleep(3.5)  # SRs go out every 0.5-1.5 s
    now = datetime.datetime.now(datetime.timezone.utc)
    seen = {}
    for receiver in student.sub.getReceivers():
        stats = await receiver.getStats()
        for s in stats.values():
            if s.type == "remote-outbound-rtp":
                seen[s.kind] = s
    assert set(seen) == {"audio", "video"}
    for kind, s in seen.items():
        assert s.packetsSent > 0 and s.bytesSent > 0
        assert abs((s.remoteTimestamp - now).total_seconds()) < 5, f"{kind} SR NTP time is off"
    await teacher.close()
    await student.close()
