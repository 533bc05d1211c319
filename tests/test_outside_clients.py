"""Clients nobody here wrote, on loopback: FFmpeg's WHIP muxer (PyPI imageio-ffmpeg) and libdatachannel
(npm node-datachannel, driven the way OBS's whip-output.cpp drives it). Each publishes to Stoa and an
aiortc WHEP viewer decodes the frames."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from signaling.room import ROOMS
from tests.test_large_rtp import SizeSink
from tests.test_whip_whep import ROOM, WhepViewer, http, token, wait_no_peers, wait_until  # noqa: F401

logger = logging.getLogger(__name__)
NODE_DIR = Path(__file__).parent / "node"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg  # in the test extras: its wheel carries an FFmpeg 9 with the WHIP muxer

    return imageio_ffmpeg.get_ffmpeg_exe()


class Process:
    """An outside client as a subprocess, its output kept for the failure message, always stopped."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.output = b""
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, *argv: str, **kw) -> "Process":
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT, **kw)
        return cls(proc)

    async def _read(self) -> None:
        while chunk := await self.proc.stdout.read(4096):
            self.output += chunk

    def tail(self, n: int = 3000) -> str:
        return self.output.decode("utf-8", "replace")[-n:]

    async def wait(self, timeout: float) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return rc

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._reader


def whip_session(room) -> object | None:
    return next((p for p in room.participants.values() if p.publisher and p.publisher.tracks), None)


@pytest.mark.parametrize("profile,expect_idc,muxer", [
    (["-profile:v", "baseline"], 0x42, []),
    ([], 0x64, []),
    (["-profile:v", "baseline"], 0x42, ["-pkt_size", "1400"]),
], ids=["baseline", "x264-default-high", "baseline-1400-byte-packets"])
async def test_ffmpeg_whip_publishes_h264_and_opus_to_an_aiortc_whep_viewer(stoa_server, http, profile,
                                                                          expect_idc, muxer):
    argv = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "info", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", "20",
        "-c:v", "libx264", *profile, "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p",
        "-c:a", "libopus", "-ar", "48000", "-ac", "2",
        "-f", "whip", *muxer, "-authorization", token(stoa_server, "ffmpeg", "instructor"),
        f"{stoa_server.base}/whip/{ROOM}",
    ]
    ffmpeg = await Process.start(*argv)
    try:
        manager = stoa_server.app[ROOMS]
        await wait_until(lambda: ROOM in manager.rooms and whip_session(manager.rooms[ROOM]) is not None
                         and len(whip_session(manager.rooms[ROOM]).publisher.tracks) == 2, 15,
                         "FFmpeg's two tracks")
        room = manager.rooms[ROOM]
        tracks = {t.kind: t for t in room.tracks()}
        assert tracks["video"].mime_type.lower() == "video/h264"
        assert tracks["audio"].mime_type.lower() == "audio/opus"
        profile_level_id = tracks["video"].codec_parameters.get("profile-level-id", "")
        assert int(profile_level_id[:2], 16) == expect_idc, f"FFmpeg offered {profile_level_id}"
        sizes = SizeSink()
        tracks["video"].add_sink(sizes)

        viewer = await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "v", "viewer")).start()
        await wait_until(lambda: {"video", "audio"} <= set(viewer.collectors), 10, "both tracks")
        await viewer.video.wait_frames(60, timeout=20)
        await viewer.audio.wait_frames(50, timeout=10)
        assert viewer.video.sizes == {(320, 240)}
        leg = next(d for _, d in room.participants["v"].subscriber.legs if d.kind == "video")
        assert leg.seam.params.parameters.get("profile-level-id", "")[:2].lower() == profile_level_id[:2].lower(), \
            "the viewer's leg is restricted to the publisher's H.264 profile"
        if muxer:
            assert sizes.largest > 1356, f"FFmpeg sent packets of up to {sizes.largest} bytes"
        assert leg.oversize_drops == 0 and tracks["video"].forward_errors == 0
        assert await viewer.stop() == 200
    except BaseException:
        logger.error("ffmpeg output:\n%s", ffmpeg.tail())
        raise
    finally:
        await ffmpeg.stop()
    await wait_until(lambda: not stoa_server.app[ROOMS].peers.live, 20, "FFmpeg's session to end")


@pytest.fixture(scope="session")
def node_datachannel():
    """node + tests/node/node_modules (scripts/test installs it with `npm ci`; done here too if missing)."""
    node = shutil.which("node")
    assert node, "node is needed for the libdatachannel client: apt-get install nodejs npm (scripts/test does)"
    if not (NODE_DIR / "node_modules" / "node-datachannel").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    return node


@pytest.fixture
def h264_file(tmp_path):
    """10 s of baseline H.264, Annex B with access unit delimiters, keyframe each second (OBS-like)."""
    path = tmp_path / "obs.h264"
    subprocess.run([
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
        "-t", "10", "-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency", "-g", "30",
        "-pix_fmt", "yuv420p", "-x264-params", "aud=1", "-bsf:v", "h264_mp4toannexb", "-f", "h264", str(path),
    ], check=True, timeout=60)
    return path


def events(output: bytes) -> list[dict]:
    out = []
    for line in output.decode("utf-8", "replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


async def test_libdatachannel_publishes_like_obs_and_a_whep_viewer_decodes(stoa_server, http, node_datachannel,
                                                                         h264_file):
    client = await Process.start(node_datachannel, str(NODE_DIR / "obs_whip.mjs"), f"{stoa_server.base}/whip/{ROOM}",
                                 token(stoa_server, "obs", "instructor"), str(h264_file), "8", cwd=str(NODE_DIR))
    try:
        manager = stoa_server.app[ROOMS]
        await wait_until(lambda: ROOM in manager.rooms and any(
            t.kind == "video" for t in manager.rooms[ROOM].tracks()), 15, "libdatachannel's video track")
        await wait_until(lambda: any(e["event"] == "created" for e in events(client.output)), 10,
                         "the client to read the 201")
        created = next(e for e in events(client.output) if e["event"] == "created")
        assert created["status"] == 201 and created["location"].startswith(f"/whip/{ROOM}/")
        room = manager.rooms[ROOM]
        up = next(t for t in room.tracks() if t.kind == "video")
        assert up.mime_type.lower() == "video/h264" and up.codec_parameters["profile-level-id"] == "42e01f"

        viewer = await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "v", "viewer")).start()
        await wait_until(lambda: "video" in viewer.collectors, 10, "the video track")
        await viewer.video.wait_frames(60, timeout=15)
        assert viewer.video.sizes == {(320, 240)}
        assert up.payload_mismatches == 0
        assert await viewer.stop() == 200
        assert await client.wait(timeout=30) == 0
        steps = {e["event"]: e for e in events(client.output)}
        assert steps["sent"]["frames"] >= 200
        assert steps["deleted"]["status"] == 200, "DELETE on the Location ends the session"
    except BaseException:
        logger.error("libdatachannel client output:\n%s", client.tail())
        raise
    finally:
        await client.stop()
    await wait_no_peers(stoa_server)
