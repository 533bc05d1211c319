"""A viewer behind a 300 kbit/s link while the publisher sends ~1.5 Mbps: the server must not flood it.

The slow viewer is an aiortc peer in a network namespace of this test's own (veth pair, tbf on the
host end), the two others are on loopback. Over 20 s: retransmissions to the slow viewer stay under
25% of what is forwarded to it, what is offered to its link (tc: sent + dropped) never exceeds twice
the media rate in any second, it is judged "bad" (room event and /metrics), and the two others keep
about zero loss and decode at the publisher's frame rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from sfu.quality import BAD, BAD_KEYFRAME_INTERVAL
from shared.config import load_settings
from tests.client import RoomClient
from tests.netns import ShapedLink, unavailable
from tests.serve import eventually

ROOT = Path(__file__).resolve().parent.parent
ROOM = "slowlink"
WINDOW = 20


@pytest.fixture
def shaped_link():
    reason = unavailable()
    if reason:
        pytest.skip(f"needs a shaped link in a network namespace: {reason}")
    with ShapedLink(rate="300kbit") as link:
        yield link


@pytest.fixture
def server_settings(tmp_path, shaped_link):
    # The server gathers ICE on loopback (the two fast viewers) and on its end of the veth pair.
    return load_settings(environ={}, overrides={
        "dev": True, "host": "127.0.0.1", "port": 8080, "data_dir": str(tmp_path / "data"),
        "ice_addresses": ["127.0.0.1", shaped_link.host_address],
    })


class Child:
    """A subprocess spoken to in JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.lock = asyncio.Lock()

    @classmethod
    async def start(cls, *argv: str) -> "Child":
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, start_new_session=True)
        return cls(proc)

    async def read(self, timeout: float = 20.0) -> dict:
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"child exited ({await self.proc.wait()})")
        return json.loads(line)

    async def ask(self, message: dict, timeout: float = 20.0) -> dict:
        async with self.lock:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            await self.proc.stdin.drain()
            return await self.read(timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.stdin.close()
                await asyncio.wait_for(self.proc.wait(), 5)
            except (Exception, asyncio.TimeoutError):
                pass
        if self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


class RelayedClient(RoomClient):
    """Does the room protocol here and hands the subscriber SDP to a peer in the namespace."""

    def __init__(self, *args, viewer: Child):
        super().__init__(*args)
        self.viewer = viewer

    async def _answer(self, event) -> None:
        reply = await self.viewer.ask({"offer": event["sdp"]})
        await self.send({"type": "answer", "sdp": reply["answer"]})


@pytest.mark.slow
async def test_slow_viewer_is_not_flooded_and_others_keep_full_rate(stoa_server, shaped_link):
    from signaling.room import ROOMS

    py = sys.executable
    children: list[Child] = []
    clients: list[RoomClient] = []
    try:
        fast = [await RoomClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, f"fast{i}", "student")).connect()
                for i in range(2)]
        clients += fast
        viewer = await Child.start(*shaped_link.exec_prefix(), py, "-m", "tests.netns_viewer",
                                   shaped_link.peer_address)
        children.append(viewer)
        slow = await RelayedClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, "slow", "student"),
                                   viewer=viewer).connect()
        clients.append(slow)
        # The publisher (640x480 VP8 held at 1.5 Mbps, and Opus) in its own process, over WHIP.
        publisher = await Child.start(py, str(ROOT / "bench" / "peers.py"), "publisher", "--base",
                                      stoa_server.base, "--room", ROOM,
                                      "--token", stoa_server.token(ROOM, "teacher", "instructor"))
        children.append(publisher)
        assert (await publisher.read(timeout=30)).get("ready")

        for client in fast:
            await (await client.wait_track("video", timeout=20)).wait_frames(30, timeout=30)
        await eventually(lambda: any(d.kind == "video" and d.packets_sent for d in _legs(stoa_server, "slow")),
                         30, "the slow viewer's leg to forward")
        room = stoa_server.app[ROOMS].rooms[ROOM]
        tracks = room.tracks()
        slow_video = next(d for d in _legs(stoa_server, "slow") if d.kind == "video")
        fast_video = [next(d for d in _legs(stoa_server, f"fast{i}") if d.kind == "video") for i in range(2)]
        plis_before = sum(t.plis_sent for t in tracks)

        def sample() -> dict:
            legs = _legs(stoa_server, "slow")
            return {
                "t": time.monotonic(),
                "media_packets": sum(t.packets_received for t in tracks),
                "link": shaped_link.qdisc_stats(),
                "forwarded": sum(d.packets_sent for d in legs),
                "retransmits": sum(d.retransmits for d in legs),
                "fast_frames": [c.video().frames for c in fast],
                "fast_nacked": [d.retransmit.new_losses for d in fast_video],
                "fast_sent": [d.packets_sent for d in fast_video],
            }

        first_snap = await publisher.ask({"cmd": "snap"})
        samples = [sample()]
        for _ in range(WINDOW):
            await asyncio.sleep(1.0)
            samples.append(sample())
        last_snap = await publisher.ask({"cmd": "snap"})
        slow_stats = await viewer.ask({"cmd": "stats"})
        first, last = samples[0], samples[-1]

        forwarded = last["forwarded"] - first["forwarded"]
        retransmits = last["retransmits"] - first["retransmits"]
        published_fps = (last_snap["frames"] - first_snap["frames"]) / (last_snap["t"] - first_snap["t"])
        per_second = []
        for a, b in zip(samples, samples[1:]):
            offered = (b["link"]["packets"] + b["link"]["drops"]) - (a["link"]["packets"] + a["link"]["drops"])
            per_second.append((offered, b["media_packets"] - a["media_packets"]))
        print(f"\nslow viewer over {WINDOW} s: forwarded {forwarded}, retransmitted {retransmits} "
              f"({retransmits / max(forwarded, 1):.1%}), refused {slow_video.retransmit.refused}, "
              f"quality {slow_video.quality.level} (loss {slow_video.quality.loss:.0%}, "
              f"rtt {slow_video.retransmit.rtt}), "
              f"keyframes asked for it {slow_video.keyframes_for_viewer}, paced {slow_video.pacer.paced}, "
              f"decoded {slow_stats['video_frames']} frames; link {last['link']}")
        print("offered/media packets per second:", per_second)
        print(f"publisher {published_fps:.1f} fps; fast viewers decoded "
              f"{[(b - a) / WINDOW for a, b in zip(first['fast_frames'], last['fast_frames'])]} fps, NACKed "
              f"{[b - a for a, b in zip(first['fast_nacked'], last['fast_nacked'])]} of "
              f"{[b - a for a, b in zip(first['fast_sent'], last['fast_sent'])]} packets, paced "
              f"{[d.pacer.paced for d in fast_video]}; "
              f"PLIs to the publisher {sum(t.plis_sent for t in tracks) - plis_before}")

        # The slow viewer is not flooded.
        assert forwarded > 1000
        assert retransmits < 0.25 * forwarded
        for offered, media in per_second:
            assert offered <= 2 * media, f"{offered} packets offered to the link in a second of {media}"
        # It is judged unable to keep up, and told so.
        assert slow_video.quality.level == BAD
        # Each of its legs is judged (its audio may be judged too); the video leg's events say bad.
        await slow.expect("connection_quality")
        await eventually(lambda: any(e["type"] == "connection_quality" and e["track_id"] == slow_video.track_id
                                     and e["quality"] == BAD for e in slow.events),
                         10, "connection_quality bad for the video leg")
        assert slow_video.keyframes_for_viewer <= WINDOW / BAD_KEYFRAME_INTERVAL + 3
        assert slow_video.pacer.pacing_media and slow_video.pacer.paced > 0, "its bursts are paced"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{stoa_server.base}/metrics") as resp:
                metrics = await resp.text()
        assert _metric(metrics, 'stoa_subscriber_legs_by_quality{quality="bad"}') >= 1
        assert _metric(metrics, 'stoa_subscriber_quality_changes_total{quality="bad"}') >= 1
        # The others keep about zero loss and decode at the publisher's rate.
        for i in range(2):
            fps = (last["fast_frames"][i] - first["fast_frames"][i]) / (last["t"] - first["t"])
            assert fps >= 0.9 * published_fps, f"fast viewer {i} decoded {fps:.1f} fps of {published_fps:.1f}"
            nacked = last["fast_nacked"][i] - first["fast_nacked"][i]
            assert nacked <= 0.01 * (last["fast_sent"][i] - first["fast_sent"][i])
            assert fast_video[i].quality.level != BAD
    finally:
        for client in clients:
            await client.close()
        for child in children:
            await child.stop()


def _legs(server, identity: str) -> list:
    from signaling.room import ROOMS

    room = server.app[ROOMS].rooms.get(ROOM)
    participant = room.participants.get(identity) if room else None
    if participant is None or participant.subscriber is None:
        return []
    return [d for _, d in participant.subscriber.legs]


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} is not in /metrics"
    return float(found.group(1))
