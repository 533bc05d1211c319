"""Composite export from a real recording: two participants, grid and speaker layouts."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

from recorder.export import export_composite, video_encoder_name
from recorder.manifest import ManifestError
from recorder.session import Recording
from tests.fixtures.recorder import encode_audio, encode_video, packetize, read_counter_gray

T0 = 1_700_000_000.0
BOB_DELAY = 0.2
SECONDS = 4


@pytest.fixture(scope="module")
def recording_dir(tmp_path_factory):
    """Alice talks for 2 s then is silent; Bob (joining 0.2 s later) is silent then talks."""
    directory = str(tmp_path_factory.mktemp("export") / "rec")
    rec = Recording(directory, "rec-x", "room")
    frames, chunks = SECONDS * 30, SECONDS * 50
    people = [
        ("alice", 0.0, 0, (range(100, chunks),)),
        ("bob", BOB_DELAY, 500, (range(0, 100),)),
    ]
    for identity, delay, first_counter, silent in people:
        v = rec.add_track(f"{identity}-cam", identity, identity.title(), "video", "video/VP8", 90000)
        a = rec.add_track(f"{identity}-mic", identity, identity.title(), "audio", "audio/opus", 48000)
        video = packetize(encode_video("vp8", frames, start=first_counter), ts_start=1000)
        audio = packetize(encode_audio(chunks, silent=silent), ts_start=2000, pt=111)
        for p in video:
            v.feed(p, T0 + delay + ((p.timestamp - 1000) - first_counter * 3000) / 90000)
        for p in audio:
            a.feed(p, T0 + delay + (p.timestamp - 2000) / 48000)
    rec.stop_sync()
    return directory


def decoded(path):
    with av.open(path) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
        vstream, astream = c.streams.video[0], c.streams.audio[0]
        info = {
            "duration": c.duration / 1e6,
            "video_codec": vstream.codec_context.name,
            "audio_codec": astream.codec_context.name,
            "audio_duration": float(astream.duration * astream.time_base),
        }
        frames = [(float(f.pts * f.time_base), f.to_ndarray(format="gray")) for f in c.decode(vstream)]
    with av.open(path) as c:
        audio = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])  # left, 48 kHz
    return info, frames, audio


def test_grid_export(recording_dir, tmp_path):
    out = str(tmp_path / "grid.mp4")
    progress = []
    summary = export_composite(recording_dir, out, "grid", progress.append, size=(320, 240), fps=15)
    assert progress[-1] == 1.0 and progress == sorted(progress) and len(progress) > 2
    assert summary["video_tracks"] == 2 and summary["audio_tracks"] == 2
    info, frames, audio = decoded(out)
    expected = SECONDS + BOB_DELAY
    assert abs(info["duration"] - expected) <= 0.1
    assert abs(info["audio_duration"] - expected) <= 0.1
    assert abs(len(frames) - expected * 15) <= 2
    assert info["video_codec"] == ("h264" if video_encoder_name() == "libx264" else "mpeg4")
    assert info["audio_codec"] == "aac"
    assert np.sqrt(np.mean(audio**2)) > 0.01  # the mix is not silence

    # Audio placed by the manifest too: Alice's tone stops at 2.0 s, Bob's starts at 2.2 s.
    def rms(t0, t1):
        return float(np.sqrt(np.mean(audio[int(t0 * 48000) : int(t1 * 48000)] ** 2)))

    loud = rms(0.5, 1.5)
    assert loud > 0.05
    assert rms(1.90, 1.97) > loud / 2
    assert rms(2.04, 2.16) < loud / 20
    assert rms(2.24, 2.30) > loud / 2
    # Two tiles side by side (160x120 each, centred vertically): counters line up in time.
    for t, gray in frames[3:-3]:
        alice = read_counter_gray(gray[60:180, 0:160])
        assert abs(alice - t * 30) <= 1.5, (t, alice)
        if t >= BOB_DELAY + 0.1:
            bob = read_counter_gray(gray[60:180, 160:320])
            assert abs(bob - (500 + (t - BOB_DELAY) * 30)) <= 1.5, (t, bob)


def test_speaker_export_follows_the_loudest(recording_dir, tmp_path):
    out = str(tmp_path / "speaker.mp4")
    export_composite(recording_dir, out, "speaker", size=(320, 240), fps=15)
    info, frames, _ = decoded(out)
    assert abs(info["duration"] - (SECONDS + BOB_DELAY)) <= 0.1

    def main_counter(gray):  # main area: top 180 rows, 240x180 picture centred
        return read_counter_gray(gray[0:180, 40:280])

    early = [(t, main_counter(g)) for t, g in frames if 0.5 <= t <= 1.9]
    late = [(t, main_counter(g)) for t, g in frames if 3.4 <= t <= 4.0]
    assert early and all(abs(c - t * 30) <= 1.5 for t, c in early), early  # Alice speaks
    assert late and all(abs(c - (500 + (t - BOB_DELAY) * 30)) <= 1.5 for t, c in late), late  # Bob


def test_export_rejects_bad_input(recording_dir, tmp_path):
    with pytest.raises(ValueError, match="layout"):
        export_composite(recording_dir, str(tmp_path / "x.mp4"), "mosaic")
    with pytest.raises(ManifestError, match="no manifest"):
        export_composite(str(tmp_path), str(tmp_path / "x.mp4"))
    empty = Recording(str(tmp_path / "empty"), "e", "room")
    empty.stop_sync()
    with pytest.raises(ValueError, match="no recorded track"):
        export_composite(str(tmp_path / "empty"), str(tmp_path / "x.mp4"))
    assert not os.path.exists(tmp_path / "x.mp4")


def test_command_line(recording_dir, tmp_path):
    import json
    import subprocess
    import sys

    out = str(tmp_path / "cli.mp4")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-m", "recorder.export", recording_dir, out,
                          "--layout", "speaker", "--size", "160x120", "--fps", "10"],
                         capture_output=True, text=True, cwd=root, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "100.0%" in run.stderr
    assert json.loads(run.stdout)["path"] == out
    with av.open(out) as c:
        assert abs(c.duration / 1e6 - (SECONDS + BOB_DELAY)) <= 0.15
