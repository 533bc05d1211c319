"""Recording through the running server: a synthetic stream published over the room protocol is recorded
without re-encoding, and the files say what was sent."""

from __future__ import annotations

import os

import pytest

from recorder.manifest import read_manifest
from tests.fixtures.recording import read_audio, read_video, record_room

pytestmark = pytest.mark.slow


async def test_ten_seconds_recorded_through_the_sfu(stoa_server):
    result = await record_room(stoa_server, "physics", 10.0, session=False)
    row = result["row"]
    assert row.status == "ready", row.error
    assert row.session_id is None
    manifest = read_manifest(row.directory)
    assert manifest["status"] == "finished"
    tracks = {t["kind"]: t for t in manifest["tracks"]}
    assert set(tracks) == {"video", "audio"}
    assert tracks["video"]["codec"] == "video/VP8" and tracks["audio"]["codec"] == "audio/opus"

    video = read_video(os.path.join(row.directory, tracks["video"]["file"]))
    sent = result["sent_video"]
    assert sent == 300
    assert abs(video["frames"] - sent) <= 0.02 * sent, f"{video['frames']} frames recorded of {sent} sent"
    assert abs(video["duration"] - 10.0) <= 0.1, video["duration"]
    assert video["counters"] == sorted(video["counters"]), "frames in the order sent"
    assert video["counters"][0] <= 3, "the recording starts at the first frames"

    audio = read_audio(os.path.join(row.directory, tracks["audio"]["file"]))
    assert abs(audio["duration"] - 10.0) <= 0.1, audio["duration"]

    skew = abs(tracks["video"]["start_time"] - tracks["audio"]["start_time"])
    assert skew <= 0.040, f"audio and video start {skew * 1000:.0f} ms apart by the manifest"

    assert abs(row.duration_s - 10.0) <= 0.2
    assert row.size_bytes == sum(os.path.getsize(os.path.join(row.directory, f["name"])) for f in row.files)
    assert {f["kind"] for f in row.files} == {"video", "audio"}


async def test_server_shutdown_finishes_the_recording(server_settings):
    import asyncio

    from aiohttp.test_utils import TestServer

    from recorder.service import RECORDINGS
    from recorder.track_recorder import MARKER_SUFFIX
    from stoa.app import build_app
    from storage import open_store
    from storage.recordings import RecordingRepo
    from storage.store import STORE
    from tests.client import RoomClient
    from tests.fixtures.server import RunningServer
    from tests.media import CounterVideoTrack, ToneAudioTrack

    server = TestServer(build_app(server_settings), host="127.0.0.1", port=0)
    # The publisher stays connected through shutdown; don't wait aiohttp's default 60 s for its socket.
    await server.start_server(shutdown_timeout=1.0)
    running = RunningServer(server, server_settings)
    teacher = await RoomClient(running.ws_base, "late", running.token("late", "t", "instructor")).connect()
    try:
        video = CounterVideoTrack()
        await teacher.publish(video, ToneAudioTrack(), sources=["camera", "microphone"])
        reply = await teacher.request({"type": "recording", "action": "start"}, "recording_ok", "error")
        assert reply["type"] == "recording_ok", reply
        manager = server.app[RECORDINGS]
        directory = manager.active["late"].recording.directory
        start = video.count
        while video.count < start + 45:
            await asyncio.sleep(0.05)
        await server.close()  # the cleanup hook stops the recording while the publisher still sends
    finally:
        await teacher.close()
    assert not any(n.endswith(MARKER_SUFFIX) for n in os.listdir(directory))
    assert read_manifest(directory)["status"] == "finished"
    store = await open_store(server_settings.database_url)
    try:
        row = await RecordingRepo(store).get(reply["recording_id"])
    finally:
        await store.close()
    assert row.status == "ready" and row.error is None
    video_file = next(f for f in row.files if f["kind"] == "video")
    assert read_video(os.path.join(directory, video_file["name"]))["duration"] >= 1.0
