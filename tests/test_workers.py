"""Media worker processes (docs/scaling.md): real worker processes, real aiortc viewers on 127.0.0.1.

WHEP viewers are placed on two workers; the publisher's packets cross the relay once per worker; the
viewers decode the publisher's frames (the counter read back from each picture)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from sfu.aiortc_seam import simulate_receive_loss
from sfu.pool import RelayStream
from signaling.room import ROOMS, WORKERS
from stoa.app import build_app
from tests.fixtures.recording import read_audio, read_video, record_room
from tests.client import RoomClient
from tests.fixtures.server import RunningServer
from tests.test_classroom_transport import wait_channel, wait_payload
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.test_whip_whep import (OffsetCounterTrack, WhepViewer, WhipPublisher, assert_counters_healthy,
                                  wait_until)

ROOM = "lecture"
pytestmark = pytest.mark.slow  # real worker processes: seconds each


@pytest.fixture
async def workers_server(server_settings):
    server_settings.workers = 2
    server = TestServer(build_app(server_settings), host="127.0.0.1", port=0)
    await server.start_server(shutdown_timeout=2.0)
    try:
        yield RunningServer(server, server_settings)
    finally:
        await server.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def participant(server, identity: str):
    return server.app[ROOMS].rooms[ROOM].participants[identity]


async def viewer(server, http, identity: str) -> WhepViewer:
    return await WhepViewer(http, server.base, ROOM, server.token(ROOM, identity, "viewer")).start()


async def publish(server, http, *, audio: bool = True) -> tuple[WhipPublisher, CounterVideoTrack]:
    video = CounterVideoTrack()
    tracks = (video, ToneAudioTrack()) if audio else (video,)
    pub = await WhipPublisher(http, server.base, ROOM, server.token(ROOM, "obs", "instructor")).publish(*tracks)
    return pub, video


def worker_stats(server, index: int) -> dict:
    return server.app[WORKERS].links[index].stats


async def test_viewers_on_two_workers_decode_and_a_late_viewer_starts_fast(workers_server, http):
    pool = workers_server.app[WORKERS]
    assert len(pool.running()) == 2
    pub, video = await publish(workers_server, http)
    viewers = [await viewer(workers_server, http, f"v{i}") for i in range(3)]
    placed = [participant(workers_server, f"v{i}").subscriber.worker for i in range(3)]
    assert sorted(placed) == [0, 0, 1], "viewers are spread over both workers"
    for v in viewers:
        await wait_until(lambda: "video" in v.collectors and "audio" in v.collectors, 15, "both tracks")
        await v.video.wait_frames(45, timeout=20)
        await v.audio.wait_frames(40, timeout=10)
    sent_before = video.count
    await asyncio.sleep(1.0)
    for v in viewers:
        assert_counters_healthy(v.video.counters)
        assert v.video.counters[-1] >= sent_before - 15, "viewers keep up with the publisher"

    # Once per worker: one relay sink per track, one link per worker that has viewers of it.
    room = workers_server.app[ROOMS].rooms[ROOM]
    for up in room.tracks():
        relays = [s for s in up.sinks if isinstance(s, RelayStream)]
        assert len(relays) == 1
        assert sorted(link.index for link in relays[0].links) == [0, 1]
    relayed = sum(link.packets_relayed for link in pool.running())
    received = sum(up.packets_received for up in room.tracks())
    assert relayed <= 2 * received + 50, "each packet crosses the relay once per worker, not per viewer"

    # A viewer joining late, on the second worker: its first frame follows its connection promptly
    # (the worker asks the main process, which asks the publisher for a keyframe at once).
    late = await viewer(workers_server, http, "late")
    assert participant(workers_server, "late").subscriber.worker == 1
    await late.wait_connected(15)
    await wait_until(lambda: "video" in late.collectors, 10, "the late viewer's video track")
    await late.video.wait_frames(1, timeout=10)
    print(f"late viewer: first frame {late.video.first_frame_at - late.connected_at:.3f} s after connecting")
    assert late.video.first_frame_at - late.connected_at < 1.0
    await late.video.wait_frames(30, timeout=10)
    assert_counters_healthy(late.video.counters)

    # The workers' figures come back in their stats and show in /metrics.
    await wait_until(lambda: all(len(pool.links[i].stats.get("sessions", {})) == 2 for i in (0, 1)), 10,
                     "stats of both workers with their viewers")
    async with http.get(workers_server.base + "/metrics") as resp:
        metrics = await resp.text()
    assert "stoa_media_workers_running 2.0" in metrics
    for i in (0, 1):
        forwarded = re.search(rf'stoa_media_worker_forwarded_packets_total{{worker="{i}"}} (\S+)', metrics)
        assert forwarded and float(forwarded.group(1)) > 100, f"worker {i} forwarded packets, by /metrics"

    for v in [*viewers, late]:
        assert await v.stop() == 200
    assert await pub.stop() == 200
    await wait_until(lambda: all(not link.sessions for link in pool.running()), 10, "sessions to close")
    await wait_until(lambda: not pool.streams, 10, "relay streams to be released")


async def test_a_viewer_on_a_worker_follows_the_broadcast_from_before_publish_to_a_new_source(workers_server, http):
    pool = workers_server.app[WORKERS]
    early = await viewer(workers_server, http, "early")
    await early.wait_connected(15)
    first = OffsetCounterTrack(0)
    token = workers_server.token(ROOM, "obs", "instructor")
    pub = await WhipPublisher(http, workers_server.base, ROOM, token).publish(first, ToneAudioTrack())
    await wait_until(lambda: "video" in early.collectors, 10, "the video track")
    await early.video.wait_frames(30, timeout=15)
    await early.audio.wait_frames(25, timeout=10)
    old_streams = set(pool.streams)

    # OBS restarts: a new WHIP session of the same identity replaces the old one; the worker's leg follows.
    pub2 = await WhipPublisher(http, workers_server.base, ROOM, token).publish(OffsetCounterTrack(10_000),
                                                                              ToneAudioTrack())
    await wait_until(lambda: any(c >= 10_000 for c in early.video.counters), 15, "frames of the new source")
    n_before = sum(1 for c in early.video.counters if c >= 10_000)
    audio_before = early.audio.frames
    await asyncio.sleep(1.5)
    after = [c for c in early.video.counters if c >= 10_000]
    assert len(after) >= n_before + 30, "the same viewer leg keeps decoding after the switch"
    assert_counters_healthy(after)
    assert early.video.counters == [c for c in early.video.counters if c < 10_000] + after
    assert early.audio.frames > audio_before + 40
    assert not old_streams & set(pool.streams), "the old tracks' relay streams were released"
    assert await early.stop() == 200
    assert await pub2.stop() == 200
    await pub.pc.close()
    await wait_until(lambda: not pool.streams, 10, "relay streams to be released")


def rtx_payload_type(sdp: str) -> int:
    return int(re.search(r"a=rtpmap:(\d+) rtx/90000", sdp).group(1))


async def test_nack_repair_across_the_relay_with_loss(workers_server, http):
    pub, _ = await publish(workers_server, http, audio=False)  # the loss counted is all video, all NACKed
    first = await viewer(workers_server, http, "first")
    lossy = await viewer(workers_server, http, "lossy")
    index = participant(workers_server, "lossy").subscriber.worker
    assert index != participant(workers_server, "first").subscriber.worker
    await wait_until(lambda: "video" in lossy.collectors, 15, "the video track")
    await lossy.video.wait_frames(5, timeout=15)

    await wait_until(lambda: worker_stats(workers_server, index).get("sessions"), 10, "worker stats")
    room = workers_server.app[ROOMS].rooms[ROOM]
    video_track_id = next(t.track_id for t in room.tracks() if t.kind == "video")
    session_id = participant(workers_server, "lossy").session_id

    def video_leg() -> dict:
        legs = worker_stats(workers_server, index)["sessions"][session_id]["legs"]
        return next(d for d in legs if d["track_id"] == video_track_id)

    plis_before = video_leg()["keyframe_requests"]
    stats = simulate_receive_loss(lossy.pc, 0.05, spare_payload_types=frozenset(
        {rtx_payload_type(lossy.pc.remoteDescription.sdp)}))
    before = len(lossy.video.counters)
    await asyncio.sleep(5)
    assert stats["dropped"] > 10
    await wait_until(lambda: video_leg()["retransmits"] >= stats["dropped"] * 0.8, 5,
                     f"retransmits for {stats['dropped']} dropped packets")
    got = lossy.video.counters[before:]
    span = got[-1] - got[0] + 1
    assert len(got) >= 0.9 * span, f"decoded {len(got)} of {span} frames"
    assert video_leg()["keyframe_requests"] == plis_before, "no decode errors: the viewer never asked for a keyframe"
    assert first.video.frames > 0
    for v in (first, lossy):
        await v.stop()
    await pub.stop()


async def test_packets_lost_on_the_relay_are_repaired_from_the_main_process(workers_server, http):
    pub, _ = await publish(workers_server, http, audio=False)
    v = await viewer(workers_server, http, "v")
    index = participant(workers_server, "v").subscriber.worker
    await wait_until(lambda: "video" in v.collectors, 15, "the video track")
    await v.video.wait_frames(5, timeout=15)
    link = workers_server.app[WORKERS].links[index]
    link.impair(0.05)
    before = len(v.video.counters)
    await asyncio.sleep(5)
    link.impair(0)
    assert link.impaired_drops > 10
    relay = lambda: worker_stats(workers_server, index)["relay"]  # noqa: E731
    await wait_until(lambda: relay()["repairs"] >= 0.8 * link.impaired_drops, 5,
                     f"repairs of {link.impaired_drops} packets lost on the relay")
    assert relay()["misses_asked"] >= relay()["repairs"]
    got = v.video.counters[before:]
    span = got[-1] - got[0] + 1
    assert len(got) >= 0.9 * span, f"decoded {len(got)} of {span} frames"
    await v.stop()
    await pub.stop()


async def test_recording_while_viewers_are_on_both_workers(workers_server, http):
    viewers = [await viewer(workers_server, http, f"v{i}") for i in range(2)]
    assert {participant(workers_server, f"v{i}").subscriber.worker for i in range(2)} == {0, 1}
    result = await record_room(workers_server, ROOM, 4.0, session=False)
    row = result["row"]
    assert row.status == "ready", row.error
    from recorder.manifest import read_manifest

    tracks = {t["kind"]: t for t in read_manifest(row.directory)["tracks"]}
    recorded = read_video(os.path.join(row.directory, tracks["video"]["file"]))
    sent = result["sent_video"]
    assert abs(recorded["frames"] - sent) <= 0.02 * sent, f"{recorded['frames']} frames recorded of {sent} sent"
    assert recorded["counters"] == sorted(recorded["counters"])
    audio = read_audio(os.path.join(row.directory, tracks["audio"]["file"]))
    assert abs(audio["duration"] - 4.0) <= 0.1, audio["duration"]
    for v in viewers:
        assert v.video.frames >= 0.8 * sent, f"a viewer decoded {v.video.frames} of {sent} frames"
        assert_counters_healthy(v.video.counters)
        await v.stop()


async def test_a_killed_worker_ends_its_sessions_and_is_replaced(workers_server, http, caplog):
    caplog.set_level(logging.INFO, logger="sfu.pool")
    pool = workers_server.app[WORKERS]
    pub, _ = await publish(workers_server, http)
    survivor = await viewer(workers_server, http, "survivor")
    victim = await viewer(workers_server, http, "victim")
    doomed = participant(workers_server, "victim").subscriber.worker
    assert participant(workers_server, "survivor").subscriber.worker != doomed
    for v in (survivor, victim):
        await wait_until(lambda: "video" in v.collectors, 15, "the video track")
        await v.video.wait_frames(10, timeout=15)
    old_pid = pool.links[doomed].pid

    os.kill(old_pid, signal.SIGKILL)
    await wait_until(lambda: "victim" not in workers_server.app[ROOMS].rooms[ROOM].participants, 15,
                     "the killed worker's viewer to be removed")
    auth = {"Authorization": f"Bearer {victim.token}"}
    async with http.delete(workers_server.base + victim.location, headers=auth) as resp:
        assert resp.status == 404, "the session URL of a viewer on a dead worker is gone"
    async with http.patch(workers_server.base + victim.location, data="a=mid:0\r\n",
                          headers={"Content-Type": "application/trickle-ice-sdpfrag", **auth}) as resp:
        assert resp.status == 404

    # The room and the other worker's viewer go on.
    frames = survivor.video.frames
    await survivor.video.wait_frames(frames + 30, timeout=10)
    assert_counters_healthy(survivor.video.counters)

    # The supervisor starts a new worker, and says so.
    await wait_until(lambda: pool.links[doomed] is not None and pool.links[doomed].alive, 60, "a new worker")
    assert pool.links[doomed].pid != old_pid
    assert any("killed by SIGKILL" in r.getMessage() for r in caplog.records)

    # The viewer rejoins and decodes again.
    for c in victim.collectors.values():
        c.stop()
    await victim.pc.close()
    again = await viewer(workers_server, http, "victim")
    await wait_until(lambda: "video" in again.collectors, 15, "the rejoined viewer's video")
    await again.video.wait_frames(30, timeout=15)
    assert_counters_healthy(again.video.counters)
    for v in (survivor, again):
        assert await v.stop() == 200
    await pub.stop()


def test_the_workers_setting_and_flag():
    from shared.config import ConfigError, load_settings
    from stoa.cli import build_parser

    assert load_settings(environ={}, overrides={"dev": True}).workers is None  # stoa serve: one per core
    assert load_settings(environ={"STOA_WORKERS": "3"}, overrides={"dev": True}).workers == 3
    with pytest.raises(ConfigError, match="workers must be between 0 and 64, got -1"):
        load_settings(environ={"STOA_WORKERS": "-1"}, overrides={"dev": True})
    assert build_parser().parse_args(["serve", "--workers", "0"]).workers == 0
    assert build_parser().parse_args(["serve"]).workers is None


async def test_one_worker_means_in_process_and_no_running_worker_keeps_viewers_in_process(server_settings):
    from sfu.peer import IceSettings
    from sfu.pool import WorkerPool

    server_settings.workers = 1
    server = TestServer(build_app(server_settings), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        assert server.app.get(WORKERS) is None
    finally:
        await server.close()
    # A pool whose workers are all down (restarting) places nobody: whip.py keeps the viewer in-process.
    assert WorkerPool(2, IceSettings()).subscriber("v", room=ROOM, session_id="s") is None


async def test_a_worker_dying_before_it_answers_gets_a_503_and_nothing_is_half_joined(workers_server, http):
    pool = workers_server.app[WORKERS]
    first = await viewer(workers_server, http, "first")  # on worker 0: the next one goes to worker 1
    target = pool.links[1]
    os.kill(target.pid, signal.SIGSTOP)  # it takes the offer and never answers
    try:
        pc_viewer = WhepViewer(http, workers_server.base, ROOM, workers_server.token(ROOM, "second", "viewer"))
        posting = asyncio.ensure_future(pc_viewer.start())
        await wait_until(lambda: "second" in workers_server.app[ROOMS].rooms[ROOM].participants, 10,
                         "the POST to reach the worker")
        assert participant(workers_server, "second").subscriber.worker == 1
        os.kill(target.pid, signal.SIGKILL)
        with pytest.raises(AssertionError, match="WHEP POST answered 503: media worker unavailable"):
            await asyncio.wait_for(posting, 20)
    finally:
        try:
            os.kill(target.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "second" not in workers_server.app[ROOMS].rooms[ROOM].participants, "nothing is half-joined"
    await pc_viewer.pc.close()
    await wait_until(lambda: pool.links[1] is not None and pool.links[1].alive, 60, "a new worker")
    again = await viewer(workers_server, http, "second")
    await again.wait_connected(15)
    assert await again.stop() == 200
    assert await first.stop() == 200


async def test_a_hung_worker_is_killed_and_replaced(workers_server, http, caplog):
    caplog.set_level(logging.WARNING, logger="sfu.pool")
    pool = workers_server.app[WORKERS]
    pool.hung_after = 2.0  # 30 s in production
    v = await viewer(workers_server, http, "v")
    index = participant(workers_server, "v").subscriber.worker
    old_pid = pool.links[index].pid
    os.kill(old_pid, signal.SIGSTOP)
    await wait_until(lambda: pool.links[index] is not None and pool.links[index].pid != old_pid
                     and pool.links[index].alive, 60, "the hung worker to be replaced")
    assert any("killing it as hung" in r.getMessage() for r in caplog.records)
    rooms = workers_server.app[ROOMS].rooms
    await wait_until(lambda: ROOM not in rooms or "v" not in rooms[ROOM].participants, 10,
                     "the hung worker's viewer to be removed")
    await v.pc.close()


async def test_room_participants_on_two_workers_decode_chat_once_and_hear_of_their_quality(workers_server, http):
    """The room protocol with media workers: each participant's subscriber connection (the server-offered
    one, data channel included) runs on a worker; the teacher publishes after the students joined."""
    pool = workers_server.app[WORKERS]

    async def join(identity: str, role: str) -> RoomClient:
        client = await RoomClient(workers_server.ws_base, ROOM, workers_server.token(ROOM, identity, role)).connect()
        assert client.joined["type"] == "joined", client.joined
        return client

    teacher = await join("teacher", "instructor")
    students = [await join(f"s{i}", "student") for i in range(2)]
    try:
        workers = {c: participant(workers_server, c).subscriber.worker for c in ("teacher", "s0", "s1")}
        assert {workers["s0"], workers["s1"]} == {0, 1}, f"students spread over both workers: {workers}"
        video = CounterVideoTrack()
        reply = await teacher.publish(video, ToneAudioTrack(), sources=["camera", "microphone"])
        assert reply["type"] == "answer", reply
        # The workers offer the new tracks to the students' existing connections (a renegotiation).
        for s in students:
            await (await s.wait_track("video", 15)).wait_frames(45, timeout=20)
            await (await s.wait_track("audio", 10)).wait_frames(25, timeout=10)
            assert {t["source"] for t in s.track_info.values()} >= {"camera", "microphone"}, s.track_info
        sent_before = video.count
        await asyncio.sleep(1.0)
        for s in students:
            assert_counters_healthy(s.video().counters)
            assert s.video().counters[-1] >= sent_before - 15, "students keep up with the teacher"

        # A chat line from a worker-hosted student, over its data channel, reaches each other member once.
        for c in (teacher, *students):
            await wait_channel(c, 10)
        students[0].data_channel.send(json.dumps({"v": 1, "type": "chat.send", "id": "m1",
                                                  "data": {"text": "Is the homework due Friday?"}}))
        ack = await wait_payload(students[0], lambda p: p.get("type") == "ack" and p.get("id") == "m1")
        assert ack["data"]
        for other in (teacher, students[1]):
            await wait_payload(other, lambda p: "Friday" in json.dumps(p) and p.get("type") != "ack")
        await asyncio.sleep(0.5)
        for other in (teacher, students[1]):
            over_channel = [m for m in other.data_messages if "Friday" in json.dumps(m)]
            over_socket = [e for e in other.events if e["type"] == "data" and "Friday" in json.dumps(e)]
            assert len(over_channel) == 1 and not over_socket, (over_channel, over_socket)
        await wait_until(lambda: all(pool.links[i].stats.get("data", {}).get("sent") for i in (0, 1)), 5,
                         "both workers' stats to count the classroom messages they carried")

        # Heavy loss on one student's link: its worker's leg judges it, and the room and /metrics hear of it.
        simulate_receive_loss(students[1].sub, 0.4)
        await wait_until(lambda: any(e["type"] == "connection_quality" and e["quality"] == "bad"
                                     for e in students[1].events), 15, "connection_quality bad")
        assert workers_server.app[ROOMS].quality_changes["bad"] >= 1
        async with http.get(workers_server.base + "/metrics") as resp:
            metrics = await resp.text()
        bad = re.search(r'stoa_subscriber_quality_changes_total{quality="bad"} (\S+)', metrics)
        assert bad and float(bad.group(1)) >= 1
        legs = re.search(r"^stoa_subscriber_legs (\S+)", metrics, re.M)
        assert legs and float(legs.group(1)) >= 4, "the workers' legs are counted in /metrics"

        # The teacher stops its camera: the students' connections are renegotiated without it, and the
        # relay lets go of the track once no worker carries it.
        offers = [sum(e["type"] == "offer" for e in s.events) for s in students]
        video_id = next(t.track_id for t in workers_server.app[ROOMS].rooms[ROOM].tracks() if t.kind == "video")
        await teacher.send({"type": "unpublish", "track_id": video_id})
        for s, before in zip(students, offers):
            await wait_until(lambda s=s, before=before: sum(e["type"] == "offer" for e in s.events) > before, 10,
                             "a new offer without the video")
        await wait_until(lambda: all(s.uptrack.kind == "audio" for s in pool.streams.values()), 10,
                         "the video relay stream to be released")
    finally:
        for c in (*students, teacher):
            await c.close()
    await wait_until(lambda: all(not link.sessions for link in pool.running()), 15, "sessions to close")


async def test_each_worker_keeps_its_capacity_and_a_join_none_can_take_is_refused(server_settings, http):
    """capacity_legs holds per worker (each has its own load monitor): viewers go to a worker that admits,
    and when none does the join gets 503 / at capacity, nothing half-joined, until a seat frees."""
    server_settings.workers = 2
    server_settings.capacity_legs = 2  # one viewer of video + audio per worker
    server = TestServer(build_app(server_settings), host="127.0.0.1", port=0)
    await server.start_server(shutdown_timeout=2.0)
    running = RunningServer(server, server_settings)
    pool = running.app[WORKERS]
    try:
        pub, _ = await publish(running, http)
        viewers = [await viewer(running, http, f"v{i}") for i in range(2)]
        assert {participant(running, f"v{i}").subscriber.worker for i in range(2)} == {0, 1}
        await wait_until(lambda: all(link.refusing() for link in pool.running()), 10,
                         "both workers to report they are at capacity")
        extra = WhepViewer(http, running.base, ROOM, running.token(ROOM, "extra", "viewer"))
        with pytest.raises(AssertionError, match="503: room full: this server is at capacity"):
            await extra.start()
        await extra.pc.close()
        assert "extra" not in running.app[ROOMS].rooms[ROOM].participants, "nothing is half-joined"
        freed = participant(running, "v0").subscriber.worker
        assert await viewers[0].stop() == 200
        await wait_until(lambda: pool.links[freed].refusing() is None, 10, "the freed worker to admit again")
        again = await viewer(running, http, "extra")
        assert participant(running, "extra").subscriber.worker == freed
        await wait_until(lambda: "video" in again.collectors, 15, "the video track")
        await again.video.wait_frames(10, timeout=15)
        for v in (viewers[1], again):
            assert await v.stop() == 200
        await pub.stop()
    finally:
        await server.close()


async def test_a_room_participant_whose_worker_dies_stays_and_resubscribes(workers_server, http):
    """A killed worker carried a student's subscriber connection: the student stays in the room, classroom
    messages reach it over the WebSocket meanwhile, and its resubscribe lands on a running worker."""
    pool = workers_server.app[WORKERS]
    teacher = await RoomClient(workers_server.ws_base, ROOM, workers_server.token(ROOM, "teacher", "instructor")).connect()
    student = await RoomClient(workers_server.ws_base, ROOM, workers_server.token(ROOM, "stu", "student")).connect()
    try:
        await teacher.publish(CounterVideoTrack(), sources=["camera"])
        await (await student.wait_track("video", 15)).wait_frames(10, timeout=15)
        doomed = participant(workers_server, "stu").subscriber.worker
        assert participant(workers_server, "teacher").subscriber.worker != doomed
        os.kill(pool.links[doomed].pid, signal.SIGKILL)
        await wait_until(lambda: participant(workers_server, "stu").subscriber.lost, 15, "the loss to be seen")
        assert "stu" in workers_server.app[ROOMS].rooms[ROOM].participants, "the student stays in the room"

        await wait_channel(teacher, 10)
        teacher.data_channel.send(json.dumps({"v": 1, "type": "chat.send", "id": "t1",
                                              "data": {"text": "still with us?"}}))
        await wait_payload(student, lambda p: "still with us?" in json.dumps(p) and p.get("type") != "ack")
        assert any(e["type"] == "data" and "still with us?" in json.dumps(e) for e in student.events), \
            "it came over the WebSocket: the data channel went with the worker"

        await student.resubscribe()
        assert participant(workers_server, "stu").subscriber.link.alive
        await (await student.wait_track("video", 15)).wait_frames(30, timeout=15)
        assert_counters_healthy(student.video().counters)
        await wait_channel(student, 10)
    finally:
        await student.close()
        await teacher.close()


@pytest.mark.browser
async def test_the_room_page_on_a_worker_decodes_and_chats(workers_server, chromium, artifacts_dir):
    """Chromium's room page with its subscriber connection on a media worker (what `scripts/serve --dev`
    runs on a 2-core box): it decodes the teacher's video and its chat goes both ways over the data channel."""
    from tests.browser import screenshot, wait_frames_decoded, wait_js

    teacher = await RoomClient(workers_server.ws_base, ROOM, workers_server.token(ROOM, "prof", "instructor")).connect()
    try:
        await teacher.publish(CounterVideoTrack(), ToneAudioTrack(), sources=["camera", "microphone"])
        token = workers_server.token(ROOM, "stu", "student", name="Stu")
        page = await chromium.page(f"{workers_server.base}/rooms/{ROOM}?token={token}", label="stu")
        await wait_js(page, "window.stoa.state.dataChannel && window.stoa.state.dataChannel.readyState === 'open'",
                      timeout=20)
        assert isinstance(participant(workers_server, "stu").subscriber.worker, int)
        await wait_frames_decoded(page, minimum=30, timeout=20)
        await page.fill("#chat-input", "Can you repeat the last slide?")
        await page.click("#chat-send")
        await wait_payload(teacher, lambda p: "repeat the last slide" in json.dumps(p) and p.get("type") != "ack")
        assert any("repeat the last slide" in json.dumps(m) for m in teacher.data_messages)
        await wait_channel(teacher, 10)
        teacher.data_channel.send(json.dumps({"v": 1, "type": "chat.send", "id": "t1", "data": {"text": "Sure"}}))
        await wait_js(page, "[...document.querySelectorAll('#chat-list .msg')].some("
                            "(li) => li.textContent.includes('Sure') && li.dataset.identity === 'prof')")
        await screenshot(page, artifacts_dir, "room-page-on-a-media-worker")
        assert not chromium.errors(), chromium.errors()
    finally:
        await teacher.close()


async def test_a_resumed_participant_gets_its_pending_offer_again_from_its_worker(workers_server, http):
    """The first offer went to a socket that dropped before it was answered: on resume the worker sends
    the same offer again (`resend`), and answering it connects the same subscriber connection."""
    from tests.peers import answer_offer, client_pc
    from tests.test_room_resume import recv_type

    url = f"{workers_server.ws_base}/ws/rooms/{ROOM}"
    token = workers_server.token(ROOM, "ann", "student")
    ws = await http.ws_connect(url)
    await ws.send_json({"type": "join", "token": token, "resumable": True})
    resume = (await recv_type(ws, "joined"))["resume"]
    first = await recv_type(ws, "offer")
    await ws.close()
    kept = participant(workers_server, "ann")
    await wait_until(lambda: kept.suspended is not None, 10, "the participant to be kept")
    ws = await http.ws_connect(url)
    pc = client_pc()
    try:
        await ws.send_json({"type": "join", "token": token, "resumable": True, "resume": resume})
        assert (await recv_type(ws, "joined"))["resumed"] is True
        again = await recv_type(ws, "offer")
        assert again["sdp"] == first["sdp"], "the offer in flight, sent again"
        await ws.send_json({"type": "answer", "sdp": await answer_offer(pc, again["sdp"])})
        await wait_until(lambda: pc.connectionState == "connected", 15, "the subscriber connection")
        assert participant(workers_server, "ann") is kept
    finally:
        await pc.close()
        await ws.close()


async def test_a_whep_viewer_on_a_worker_restarts_ice_through_patch(workers_server, http):
    """RFC 9725 4.3 on a worker: PATCH with If-Match: * and new credentials gets the worker's new fragment
    and ETag; both sides nominate a pair of the new ICE session and decoded frames go on, same session."""
    from signaling import sdpfrag
    from sfu.aiortc_seam import ice_credentials
    from tests.test_whip_rfc9725 import _restart

    pub, _ = await publish(workers_server, http)
    v = await viewer(workers_server, http, "v")
    try:
        await wait_until(lambda: "video" in v.collectors, 15, "the video track")
        await v.video.wait_frames(20, timeout=15)
        kept = participant(workers_server, "v")
        assert isinstance(kept.subscriber.worker, int)
        before = ice_credentials(v.pc)
        etag, creds = await _restart(http, workers_server.base, v.location, v.token, v.etag, v.pc)
        assert creds["server_ufrag"] != before["remote_ufrag"], "the worker kept its old credentials"
        await wait_until(lambda: ice_credentials(v.pc)["pair"] not in (None, before["pair"]), 15,
                         "the viewer to nominate a pair of the new ICE session")
        await v.video.wait_frames(v.video.frames + 30, timeout=15)
        assert_counters_healthy(v.video.counters)
        assert participant(workers_server, "v") is kept

        headers = {"Authorization": f"Bearer {v.token}", "Content-Type": sdpfrag.CONTENT_TYPE}
        cand = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
        stale = f"a=ice-ufrag:{before['local_ufrag']}\r\na=ice-pwd:{before['local_pwd']}\r\n" + cand
        same = f"a=ice-ufrag:{creds['client_ufrag']}\r\na=ice-pwd:{ice_credentials(v.pc)['local_pwd']}\r\n" + cand
        for if_match, body, status, says in ((v.etag, cand, 412, "precondition failed"),
                                             (etag, stale, 422, "another ICE session"),
                                             ("*", same, 400, "these are the current ones"),
                                             (etag, cand, 204, "")):
            async with http.patch(workers_server.base + v.location, data=body,
                                  headers={**headers, "If-Match": if_match}) as r:
                assert r.status == status and says in await r.text(), (if_match, status, await r.text())
        assert v.pc.connectionState == "connected"
    finally:
        assert await v.stop() == 200
        await pub.stop()


async def test_a_room_participant_on_a_worker_restarts_ice_and_keeps_its_media(workers_server, http):
    """The room protocol's `restart_ice` for a subscriber connection on a worker: the worker offers new ICE
    credentials on the same connection, the client nominates a pair of the new session, frames go on, and
    the participant stays; before its ICE is up, the restart is refused by name (ice_restart_refused)."""
    from aiortc.sdp import SessionDescription

    from sfu.aiortc_seam import ice_credentials
    from sfu.peer import description_ice

    def ufrag(sdp: str) -> str:
        return description_ice(SessionDescription.parse(sdp))[0]

    early = RoomClient(workers_server.ws_base, ROOM, workers_server.token(ROOM, "early", "student"))
    early._answer = lambda event: asyncio.sleep(0)  # never answers: its subscriber ICE never starts
    teacher = await RoomClient(workers_server.ws_base, ROOM,
                               workers_server.token(ROOM, "teacher", "instructor")).connect()
    student = await RoomClient(workers_server.ws_base, ROOM, workers_server.token(ROOM, "stu", "student")).connect()
    try:
        await early.connect()
        assert isinstance(participant(workers_server, "early").subscriber.worker, int)
        reply = await early.request({"type": "restart_ice"}, "error")
        assert reply["code"] == "ice_restart_refused" and reply["ref"] == "restart_ice", reply
        assert "make a new connection" in reply["message"]

        await teacher.publish(CounterVideoTrack(), sources=["camera"])
        video = await student.wait_track("video", 15)
        await video.wait_frames(30, timeout=15)
        kept = participant(workers_server, "stu")
        remote = kept.subscriber
        assert isinstance(remote.worker, int)
        before = ice_credentials(student.sub)
        old_ufrag = ufrag(student.sub.remoteDescription.sdp)
        seen = len(student.events)
        offer = await student.request({"type": "restart_ice"}, "offer", "error")
        assert offer["type"] == "offer", offer
        assert ufrag(offer["sdp"]) not in (None, old_ufrag), "the worker kept its old credentials"
        await wait_until(lambda: ice_credentials(student.sub)["pair"] not in (None, before["pair"])
                         and ice_credentials(student.sub)["remote_ufrag"] == ufrag(offer["sdp"]), 15,
                         "the student to nominate a pair of the new ICE session")
        await video.wait_frames(video.frames + 30, timeout=15)
        assert_counters_healthy(video.counters)
        assert participant(workers_server, "stu") is kept and kept.subscriber is remote
        assert not [e for e in student.events[seen:] if e["type"] in ("participant_left", "participant_joined",
                                                                      "error")]
        assert student.sub.connectionState == "connected"
    finally:
        for c in (student, teacher, early):
            await c.close()
