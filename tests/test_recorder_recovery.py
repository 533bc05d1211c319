"""Crash safety: a recording process killed with SIGKILL leaves files that finalize_unfinished
turns into proper files playing up to the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import av
import pytest

from recorder.manifest import read_manifest
from recorder.recovery import finalize_unfinished
from recorder.track_recorder import MARKER_SUFFIX
from tests.fixtures.recorder import decode_audio, decode_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Records a camera and a microphone, fed in real time, printing the media time fed so far.
CHILD = textwrap.dedent(
    f"""
    import sys, time
    sys.path.insert(0, {ROOT!r})
    from tests.fixtures.recorder import encode_audio, encode_video, packetize
    from recorder.session import Recording
    codec, mime = sys.argv[2], sys.argv[3]
    video = packetize(encode_video(codec, 300), seed=3)
    audio = packetize(encode_audio(500), seed=4, pt=111)
    rec = Recording(sys.argv[1], "crash-1", "room")
    v = rec.add_track("cam", "alice", "Alice", "video", mime, 90000)
    a = rec.add_track("mic", "alice", "Alice", "audio", "audio/opus", 48000)
    vts0, ats0 = video[0].timestamp, audio[0].timestamp
    t0 = time.time()
    vi = ai = 0
    while vi < len(video) or ai < len(audio):
        now = time.time() - t0
        while vi < len(video) and ((video[vi].timestamp - vts0) % 2**32) / 90000 <= now:
            v.feed(video[vi], time.time()); vi += 1
        while ai < len(audio) and ((audio[ai].timestamp - ats0) % 2**32) / 48000 <= now:
            a.feed(audio[ai], time.time()); ai += 1
        print(f"{{now:.3f}}", flush=True)
        time.sleep(0.01)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("codec,mime,ext", [("vp8", "video/VP8", ".webm"), ("h264", "video/H264", ".mkv")])
def test_kill_9_then_finalize(tmp_path, codec, mime, ext):
    directory = str(tmp_path / "rec")
    child = subprocess.Popen([sys.executable, "-c", CHILD, directory, codec, mime],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    killed_at = 0.0
    try:
        for line in child.stdout:
            killed_at = float(line)
            if killed_at >= 4.0:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert killed_at >= 4.0
    video_path = os.path.join(directory, "alice-cam" + ext)
    audio_path = os.path.join(directory, "alice-mic.webm")
    assert os.path.exists(video_path + MARKER_SUFFIX)
    assert read_manifest(directory)["status"] == "recording"

    results = finalize_unfinished(directory)
    assert sorted(r["path"] for r in results) == sorted([audio_path, video_path])
    assert all(r["status"] == "recovered" for r in results), results
    assert not any(name.endswith(MARKER_SUFFIX) for name in os.listdir(directory))

    counters, _, duration, size = decode_video(video_path)
    assert size == (320, 240)
    assert killed_at - 2.0 <= duration <= killed_at + 0.2
    assert counters == list(range(len(counters)))
    samples, _, audio_duration, _ = decode_audio(audio_path)
    assert killed_at - 2.0 <= audio_duration <= killed_at + 0.2
    assert abs(samples / 48000 - audio_duration) <= 0.1
    with av.open(video_path) as c:  # a proper file now: it has an index to seek with
        c.seek(int(1.0 * 1e6))
        assert next(c.decode(video=0)) is not None

    manifest = read_manifest(directory)
    assert manifest["status"] == "recovered" and manifest["stopped_at"] >= manifest["started_at"]
    assert [t["status"] for t in manifest["tracks"]] == ["recovered", "recovered"]
    assert abs(manifest["tracks"][0]["duration"] - duration) <= 0.1

    # Running it again changes nothing.
    assert finalize_unfinished(directory) == []
    assert read_manifest(directory) == manifest


def test_finalize_handles_empty_and_garbage_files(tmp_path):
    (tmp_path / "a.webm").write_bytes(b"")
    (tmp_path / ("a.webm" + MARKER_SUFFIX)).write_text("x")
    (tmp_path / "b.webm").write_bytes(b"\x00garbage" * 100)
    (tmp_path / ("b.webm" + MARKER_SUFFIX)).write_text("x")
    (tmp_path / ("c.mkv" + MARKER_SUFFIX)).write_text("x")  # killed before the file existed
    results = {os.path.basename(r["path"]): r for r in finalize_unfinished(str(tmp_path))}
    assert results["a.webm"]["status"] == "empty"
    assert results["c.mkv"]["status"] == "empty"
    assert results["b.webm"]["status"] == "failed" and results["b.webm"]["error"]
    # A file that cannot be repaired keeps its marker, for a human to look at.
    assert os.path.exists(tmp_path / ("b.webm" + MARKER_SUFFIX))
    assert not os.path.exists(tmp_path / ("a.webm" + MARKER_SUFFIX))
    # The command line reports the file it still cannot repair.
    from recorder.recovery import main

    assert main([str(tmp_path)]) == 1


def test_track_failed_live_is_repaired_and_keeps_its_error(tmp_path):
    """Disk full (a file size limit here) fails the track; the part written is recovered later."""
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        sys.path.insert(0, {ROOT!r})
        from tests.fixtures.recorder import encode_video, packetize
        from recorder.session import Recording
        packets = packetize(encode_video("vp8", 150))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))
        rec = Recording(sys.argv[1], "full-1", "room")
        v = rec.add_track("cam", "alice", "Alice", "video", "video/VP8", 90000)
        for i, p in enumerate(packets):
            v.feed(p, 1000.0 + i * 0.005)
        rec.stop_sync()
        """
    )
    directory = str(tmp_path / "rec")
    run = subprocess.run([sys.executable, "-c", script, directory], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    track = read_manifest(directory)["tracks"][0]
    assert track["status"] == "failed" and "File too large" in track["error"]
    video_path = os.path.join(directory, track["file"])
    assert os.path.exists(video_path + MARKER_SUFFIX)

    results = finalize_unfinished(directory)
    assert [r["status"] for r in results] == ["recovered"]
    manifest = read_manifest(directory)
    assert manifest["status"] == "finished"
    track = manifest["tracks"][0]
    assert track["status"] == "recovered" and "File too large" in track["error"]
    counters, _, duration, _ = decode_video(video_path)
    assert len(counters) >= 10 and counters == list(range(len(counters)))
    assert abs(track["duration"] - duration) <= 0.1
