"""TrackRecorder and Recording with real encoders (aiortc's), real RTP packets, real PyAV files."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from recorder.manifest import ManifestError, read_manifest
from recorder.session import Recording
from recorder.track_recorder import MARKER_SUFFIX, TrackRecorder, opus_head
from tests.fixtures.recorder import (
    counter_frame,
    decode_audio,
    decode_video,
    encode_audio,
    encode_video,
    make_video_encoder,
    packetize,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIME = {"vp8": "video/VP8", "h264": "video/H264"}
EXT = {"vp8": ".webm", "h264": ".mkv"}


def shuffle_nearby(packets, rng, fraction=0.15, distance=3):
    """Reorder: move some packets a few places later, as a network would."""
    packets = list(packets)
    for i in range(len(packets) - distance):
        if rng.random() < fraction:
            j = i + rng.randint(1, distance)
            packets[i], packets[j] = packets[j], packets[i]
    return packets


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_video_with_reordering_and_wraparound(tmp_path, codec):
    count = 90
    encoded = encode_video(codec, count)
    # Sequence numbers wrap after ~20 packets, timestamps wrap after ~0.5 s.
    packets = packetize(encoded, seq_start=65520, ts_start=(1 << 32) - 45000)
    rng = random.Random(7)
    packets = shuffle_nearby(packets, rng)
    packets.insert(30, packets[25])  # a duplicate
    path = str(tmp_path / f"cam{EXT[codec]}")
    rec = TrackRecorder(path, "video", MIME[codec], 90000)
    for i, p in enumerate(packets):
        rec.feed(p, 1000.0 + i * 0.003)
    rec.close_sync()
    assert rec.status == "finished", rec.error
    assert abs(rec.frames_written - count) <= count * 0.02
    assert (rec.width, rec.height) == (320, 240)
    assert not os.path.exists(path + MARKER_SUFFIX)
    counters, pts, duration, size = decode_video(path)
    assert size == (320, 240)
    assert abs(len(counters) - count) <= count * 0.02
    assert counters == sorted(counters) and counters[0] == 0 and counters[-1] == count - 1
    assert abs(duration - count / 30) <= 0.1
    assert abs(rec.duration - count / 30) <= 0.1


def test_video_loss_waits_for_keyframe_and_requests_one(tmp_path):
    """A packet lost for good: the broken frames are dropped, a keyframe is requested, and the
    recording resumes on it."""
    encoder = make_video_encoder("vp8")
    requested = threading.Event()
    path = str(tmp_path / "cam.webm")
    rec = TrackRecorder(path, "video", "video/VP8", 90000, repair_window=0.1,
                        on_keyframe_needed=requested.set)
    seq, base, fed = 100, 5000, 0
    sent, lost_at, keyframe_at = 120, 30, None
    for n in range(sent):
        force = requested.is_set() and keyframe_at is None
        payloads, ts = encoder.encode(counter_frame(n), force_keyframe=force)
        if force:
            keyframe_at = n
        for k, payload in enumerate(payloads):
            seq += 1
            if n == lost_at and k == 0:
                continue  # lost, never repaired
            from aiortc.rtp import RtpPacket

            rec.feed(RtpPacket(payload_type=96, marker=int(k == len(payloads) - 1),
                               sequence_number=seq & 0xFFFF, timestamp=base + ts, payload=payload),
                     1000.0 + n / 30)
            fed += 1
        # Let the worker keep up, as a real-time feed would.
        deadline = time.monotonic() + 5
        while rec.stats["packets"] < fed and time.monotonic() < deadline:
            time.sleep(0.001)
    rec.close_sync()
    assert rec.status == "finished", rec.error
    assert requested.is_set() and keyframe_at is not None
    assert rec.stats["packets_lost"] == 1 and rec.stats["keyframe_requests"] >= 1
    counters, _, duration, _ = decode_video(path)
    expected = [n for n in range(sent) if n < lost_at or n >= keyframe_at]
    assert counters == expected
    assert abs(rec.frames_written - len(expected)) <= len(expected) * 0.02
    assert abs(duration - sent / 30) <= 0.1


def test_video_nack_repair_keeps_every_frame(tmp_path):
    encoded = encode_video("vp8", 60)
    packets = packetize(encoded, seq_start=65500)
    # Three packets arrive late, as retransmissions 6 packets (~40 ms) later.
    order = list(range(len(packets)))
    for i in (10, 25, 40):
        order.remove(i)
        order.insert(i + 6, i)
    path = str(tmp_path / "cam.webm")
    rec = TrackRecorder(path, "video", "video/VP8", 90000, repair_window=0.2)
    for k, i in enumerate(order):
        rec.feed(packets[i], 1000.0 + k * (2 / len(order)))
    rec.close_sync()
    assert rec.status == "finished", rec.error
    assert rec.stats["packets_lost"] == 0
    counters, _, _, _ = decode_video(path)
    assert counters == list(range(60))


def test_opus_with_loss_and_reordering(tmp_path):
    count = 150  # 3 s
    encoded = encode_audio(count)
    packets = packetize(encoded, seq_start=65530, ts_start=(1 << 32) - 48000, pt=111)
    packets = shuffle_nearby(packets, random.Random(3), fraction=0.1, distance=2)
    del packets[70:73]  # 60 ms lost for good
    path = str(tmp_path / "mic.webm")
    rec = TrackRecorder(path, "audio", "audio/opus", 48000, channels=2)
    for i, p in enumerate(packets):
        rec.feed(p, 1000.0 + i * 0.02)
    rec.close_sync()
    assert rec.status == "finished", rec.error
    assert rec.frames_written == count - 3
    samples, first_pts, duration, channels = decode_audio(path)
    assert channels == 2
    assert abs(duration - count * 0.02) <= 0.1
    assert abs(samples / 48000 - (count - 3) * 0.02) <= 0.1
    assert first_pts == 0.0


def test_opus_head():
    head = opus_head(1)
    assert head[:8] == b"OpusHead" and head[8] == 1 and head[9] == 1 and len(head) == 19
    with pytest.raises(ValueError):
        opus_head(3)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="does not match codec"):
        TrackRecorder(str(tmp_path / "x.webm"), "audio", "video/VP8", 90000)
    with pytest.raises(ValueError, match="unsupported codec"):
        TrackRecorder(str(tmp_path / "x.webm"), "video", "video/AV1", 90000)
    with pytest.raises(ValueError, match="clock_rate"):
        TrackRecorder(str(tmp_path / "x.webm"), "video", "video/VP8", 0)


def test_unwritable_path_fails_cleanly(tmp_path):
    path = str(tmp_path / "missing-dir" / "cam.webm")
    rec = TrackRecorder(path, "video", "video/VP8", 90000)
    for i, p in enumerate(packetize(encode_video("vp8", 5))):
        rec.feed(p, 1000.0 + i * 0.01)  # must not raise
    deadline = time.monotonic() + 5
    while rec.status != "failed" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.status == "failed"
    assert "No such file or directory" in rec.error
    for p in packetize(encode_video("vp8", 2)):
        rec.feed(p, 2000.0)  # still must not raise
    rec.close_sync()
    assert rec.status == "failed"


def test_disk_full_fails_cleanly(tmp_path):
    """The file size limit (EFBIG) stands in for a full disk: the recording fails with a clear
    error, feed() keeps returning, and close() finishes."""
    script = textwrap.dedent(
        f"""
        import json, resource, signal, sys, time
        sys.path.insert(0, {ROOT!r})
        from tests.fixtures.recorder import encode_video, packetize
        from recorder.track_recorder import TrackRecorder
        packets = packetize(encode_video("vp8", 150))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
        rec = TrackRecorder(sys.argv[1], "video", "video/VP8", 90000)
        for i, p in enumerate(packets):
            rec.feed(p, 1000.0 + i * 0.005)
        rec.close_sync()
        rec.feed(packets[0], 2000.0)
        print(json.dumps({{"status": rec.status, "error": rec.error, "frames": rec.frames_written}}))
        """
    )
    path = str(tmp_path / "cam.webm")
    out = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "failed"
    assert "File too large" in result["error"]
    assert 0 < result["frames"] < 150


def test_keyframe_callback_runs_on_the_event_loop(tmp_path):
    async def main():
        loop_thread = threading.get_ident()
        called = asyncio.Event()
        threads = []

        def on_keyframe_needed():
            threads.append(threading.get_ident())
            called.set()

        rec = TrackRecorder(str(tmp_path / "cam.webm"), "video", "video/VP8", 90000,
                            on_keyframe_needed=on_keyframe_needed)
        encoded = encode_video("vp8", 10)[3:]  # starts without a keyframe
        for i, p in enumerate(packetize(encoded)):
            rec.feed(p, 1000.0 + i * 0.01)
        await asyncio.wait_for(called.wait(), 5)
        await rec.close()
        assert threads == [loop_thread]
        assert rec.status == "empty"

    asyncio.run(main())


def feed_av_pair(recording: Recording, *, video_delay: float, with_sr: bool, t0: float,
                 net_video: float = 0.0, net_audio: float = 0.0):
    """A participant whose camera starts ``video_delay`` s after the microphone (wall clock).
    RTP timestamps start at random values, as in WebRTC."""
    rng = random.Random(11)
    vbase, abase = rng.randrange(1 << 32), rng.randrange(1 << 32)
    video = packetize(encode_video("vp8", 60), ts_start=vbase, seed=5)
    audio = packetize(encode_audio(100), ts_start=abase, seed=6, pt=111)
    v = recording.add_track("cam-1", "alice", "Alice Liddell", "video", "video/VP8", 90000)
    a = recording.add_track("mic-1", "alice", "Alice Liddell", "audio", "audio/opus", 48000)
    v_start, a_start = t0 + video_delay, t0
    if with_sr:
        # Sender reports sent 0.3 s after each track began, the sender's clock mapping.
        a.sender_report(a_start + 0.3, (abase + int(0.3 * 48000)) & 0xFFFFFFFF)
    for p in audio:
        a.feed(p, a_start + ((p.timestamp - abase) % (1 << 32)) / 48000 + net_audio)
    for p in video:
        v.feed(p, v_start + ((p.timestamp - vbase) % (1 << 32)) / 90000 + net_video)
    if with_sr:
        v.sender_report(v_start + 0.3, (vbase + 27000) & 0xFFFFFFFF)
    return v, a


@pytest.mark.parametrize("with_sr", [True, False])
def test_recording_manifest_aligns_audio_and_video(tmp_path, with_sr):
    t0 = 1_700_000_000.0
    rec = Recording(str(tmp_path / "rec"), "rec-1", "physics-101")
    # Without SRs the arrival time is used: make the network delay equal for both.
    delays = dict(net_video=0.12, net_audio=0.01) if with_sr else dict(net_video=0.02, net_audio=0.02)
    feed_av_pair(rec, video_delay=0.5, with_sr=with_sr, t0=t0, **delays)
    final = rec.stop_sync()
    manifest = read_manifest(str(tmp_path / "rec"))
    assert manifest == json.loads(json.dumps(final))
    assert manifest["status"] == "finished" and manifest["room"] == "physics-101"
    assert manifest["participants"] == [{"identity": "alice", "name": "Alice Liddell"}]
    video, audio = manifest["tracks"]
    assert (video["kind"], video["codec"], video["file"]) == ("video", "video/VP8", "alice-cam-1.webm")
    assert (audio["kind"], audio["codec"], audio["channels"]) == ("audio", "audio/opus", 2)
    source = "rtcp_sr" if with_sr else "arrival"
    assert video["start_time_source"] == audio["start_time_source"] == source
    assert abs((video["start_time"] - audio["start_time"]) - 0.5) <= 0.04
    assert abs(audio["start_time"] - t0) <= 0.04 + (0.02 if not with_sr else 0)
    assert video["status"] == audio["status"] == "finished"
    assert abs(video["duration"] - 2.0) <= 0.1 and abs(audio["duration"] - 2.0) <= 0.1
    assert video["frames"] == 60 and audio["frames"] == 100
    assert (video["width"], video["height"]) == (320, 240)
    for track in manifest["tracks"]:
        assert os.path.exists(tmp_path / "rec" / track["file"])


def test_recording_async_stop_and_track_lifecycle(tmp_path):
    async def main():
        rec = Recording(str(tmp_path / "rec"), "rec-2", "room")
        v = rec.add_track("cam", "bob", "Bob", "video", "video/H264", 90000)
        with pytest.raises(ValueError, match="already being recorded"):
            rec.add_track("cam", "bob", "Bob", "video", "video/H264", 90000)
        for i, p in enumerate(packetize(encode_video("h264", 30))):
            v.feed(p, 1000.0 + i * 0.01)
        await rec.stop_track("cam")
        # Republished: a second file for the same track id.
        v2 = rec.add_track("cam", "bob", "Bob", "video", "video/H264", 90000)
        for i, p in enumerate(packetize(encode_video("h264", 15), seed=9)):
            v2.feed(p, 1002.0 + i * 0.01)
        manifest = await rec.stop()
        assert [t["file"] for t in manifest["tracks"]] == ["bob-cam.mkv", "bob-cam-2.mkv"]
        assert [t["frames"] for t in manifest["tracks"]] == [30, 15]
        assert read_manifest(str(tmp_path / "rec"))["status"] == "finished"
        with pytest.raises(RuntimeError):
            rec.add_track("x", "bob", "Bob", "video", "video/VP8", 90000)

    asyncio.run(main())


def test_manifest_validation_names_the_problem(tmp_path):
    rec = Recording(str(tmp_path / "rec"), "rec-3", "room")
    rec.stop_sync()
    path = tmp_path / "rec" / "manifest.json"
    data = json.loads(path.read_text())
    data["tracks"] = [{"track_id": "t"}]
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="tracks/0"):
        read_manifest(str(tmp_path / "rec"))
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(str(tmp_path / "rec"))


def test_h264_file_starts_at_a_keyframe_with_parameter_sets(tmp_path):
    encoded = encode_video("h264", 30, keyframes={10})
    first_types = [p[0] & 0x1F for p in encoded[0][1]]
    assert first_types[0] == 24  # STAP-A carrying SPS and PPS
    n, payloads, ts = encoded[0]
    encoded[0] = (n, payloads[1:], ts)  # an IDR without its parameter sets
    requested = []
    path = str(tmp_path / "cam.mkv")
    rec = TrackRecorder(path, "video", "video/H264", 90000, on_keyframe_needed=lambda: requested.append(1))
    for i, p in enumerate(packetize(encoded)):
        rec.feed(p, 1000.0 + i * 0.01)
    rec.close_sync()
    assert rec.status == "finished", rec.error
    assert requested
    counters, _, _, _ = decode_video(path)
    assert counters == list(range(10, 30))
