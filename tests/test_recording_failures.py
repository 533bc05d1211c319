"""Storage failures while a room is recorded, through the running server: a track whose file cannot be written
any more is reported at once (row, API, room), the other tracks keep recording, forwarding goes on; when every
track has failed the recording stops and says why; a manifest.json that cannot be written fails the row."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import aiohttp
import pytest

from recorder.service import RECORDINGS
from tests.client import RoomClient
from tests.fixtures.recording import basic
from tests.media import CounterVideoTrack, ToneAudioTrack

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/dev/full"),
                                 reason="fills the disk through /proc/self/fd and /dev/full")]

ROOM = "lab"


def fill_disk_under(path: str) -> None:
    """A full disk for one file only: FFmpeg's write descriptor of `path` is pointed at /dev/full, so the next
    write to it fails in the kernel with ENOSPC, as on a full disk. Nothing else in the process is touched."""
    path = os.path.realpath(path)
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != path:
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                flags = int(info.read().split("flags:")[1].split()[0], 8)
        except OSError:
            continue
        if flags & os.O_ACCMODE != os.O_RDONLY:
            full = os.open("/dev/full", os.O_WRONLY)
            try:
                os.dup2(full, int(fd))
            finally:
                os.close(full)
            return
    raise AssertionError(f"nothing writes {path}")


async def until(predicate, what: str, timeout: float = 15.0):
    """Poll `predicate` (sync or async) until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def note(client: RoomClient, state: str) -> dict | None:
    return next((e for e in client.events if e["type"] == "recording" and e.get("state") == state), None)


async def started(server, room: str = ROOM):
    """Ada (instructor) publishes counter video and a tone, Sam (student) watches, and the room is recorded
    until both recorders write. Returns (ada, sam, manager, active)."""
    ada = await RoomClient(server.ws_base, room, server.token(room, "ada", "instructor")).connect()
    sam = await RoomClient(server.ws_base, room, server.token(room, "sam", "student")).connect()
    reply = await ada.publish(CounterVideoTrack(), ToneAudioTrack(), sources=["camera", "microphone"])
    assert reply["type"] == "answer", reply
    await (await sam.wait_track("video")).wait_frames(10, timeout=20)
    reply = await ada.request({"type": "recording", "action": "start"}, "recording_ok", "error")
    assert reply["type"] == "recording_ok", reply
    manager = server.app[RECORDINGS]
    active = manager.active[room]
    await until(lambda: len(active.tracks) == 2 and all(r.frames_written >= 10 for _, r in active.tracks.values()),
                "both tracks recording")
    return ada, sam, manager, active


def recorder_of(active, kind: str):
    return next(r for _, r in active.tracks.values() if r.kind == kind)


async def test_a_full_disk_under_one_track_is_reported_at_once_and_the_rest_goes_on(stoa_server):
    ada, sam, manager, active = await started(stoa_server)
    rec_id = active.row.id
    admin = {"Authorization": basic(stoa_server.settings)}
    teacher = {"Authorization": f"Bearer {stoa_server.token(ROOM, 'ada', 'instructor')}"}
    expected = "video track of ada: No space left on device"
    try:
        video, audio = recorder_of(active, "video"), recorder_of(active, "audio")
        video_track_id = next(tid for tid, (_, r) in active.tracks.items() if r is video)
        fill_disk_under(video.path)

        async with aiohttp.ClientSession() as http:
            async def room_status():
                async with http.get(f"{stoa_server.base}/api/rooms/{ROOM}/recording", headers=teacher) as resp:
                    assert resp.status == 200
                    return (await resp.json())["recording"]

            async def row():
                async with http.get(f"{stoa_server.base}/api/recordings/{rec_id}", headers=admin) as resp:
                    assert resp.status == 200
                    return await resp.json()

            # While the recording runs: the room's status and the row both say what failed.
            status = await until(lambda: _with_error(room_status()), "the room status to show the error")
            assert status["recording_id"] == rec_id and status["error"] == expected
            detail = await until(lambda: _with_error(row()), "the row to show the error")
            assert detail["status"] == "recording" and detail["error"] == expected

            # The room is told.
            failed = await until(lambda: note(ada, "error"), "the failure broadcast")
            assert failed == {"type": "recording", "state": "error", "recording_id": rec_id,
                              "error": expected, "track_id": video_track_id}
            assert await until(lambda: note(sam, "error"), "the broadcast to reach the student") == failed

            # The video file stopped, the audio keeps recording, forwarding goes on.
            assert video.status == "failed" and "No space left on device" in video.error
            assert manager.status(ROOM) is not None
            audio_frames = audio.frames_written
            await until(lambda: audio.frames_written >= audio_frames + 25, "audio to keep recording")
            assert audio.status == "recording"
            watched = sam.video().frames
            await sam.video().wait_frames(watched + 30, timeout=20)

            # The disk fills for the audio as well: nothing is recorded any more, so the recording stops.
            fill_disk_under(audio.path)
            stopped = await until(lambda: note(ada, "stopped"), "the recording to stop", timeout=30)
            assert stopped["recording_id"] == rec_id and stopped["reason"] == "every recorded track failed"
            assert stopped["error"] == expected + "; audio track of ada: No space left on device"
            final = await until(lambda: _settled(row()), "the row to settle", timeout=30)
            assert final["error"] == stopped["error"]
            assert final["status"] == "ready"  # what reached the files before the disk filled is kept
            assert {f["status"] for f in final["files"]} == {"failed"}
            assert await room_status() is None

            # Forwarding is still untouched.
            watched = sam.video().frames
            await sam.video().wait_frames(watched + 30, timeout=20)
            assert sam.audio().frames > 0
    finally:
        await sam.close()
        await ada.close()


async def _with_error(pending):
    value = await pending
    return value if value and value.get("error") else None


async def _settled(pending):
    value = await pending
    return value if value["status"] not in ("recording", "processing") else None


async def test_a_manifest_that_cannot_be_written_fails_the_row(stoa_server):
    ada, sam, manager, active = await started(stoa_server, "chem")
    rec_id = active.row.id
    expected = "manifest.json could not be written: Is a directory"
    try:
        # manifest.json becomes a directory: every later atomic replace of it fails (EISDIR), root or not.
        path = os.path.join(active.recording.directory, "manifest.json")
        while not os.path.isdir(path):
            try:
                os.unlink(path)
                os.mkdir(path)
            except (FileNotFoundError, FileExistsError):
                pass  # the manifest writer got in between
        reply = await ada.request({"type": "recording", "action": "stop"}, "recording_ok", "error", timeout=30)
        assert reply["type"] == "recording_ok" and reply["status"] == "failed", reply
        row = await manager.repo.get(rec_id)
        assert row.status == "failed" and row.error == expected
        # The media files were closed properly and are still listed from the recording's own manifest.
        assert {f["kind"] for f in row.files} == {"video", "audio"}
        assert all(f["status"] == "finished" and f["frames"] > 0 and f["size"] > 0 for f in row.files)
        stopped = await until(lambda: note(ada, "stopped"), "the stopped broadcast")
        assert stopped["error"] == expected
    finally:
        await sam.close()
        await ada.close()
