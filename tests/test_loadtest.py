"""`stoa loadtest` against a real `stoa serve`, and viewers churning against an in-process server until
everyone has left: peer connections, file descriptors and tasks come back to their baseline."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from sfu.overload import release_memory
from signaling.room import ROOMS
from stoa.loadtest import percentile
from stoa.loadtest.peers import StreamStats, Viewer
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.serve import ServeProcess, eventually
from tests.test_whip_whep import WhipPublisher

STOA = str(Path(sys.executable).parent / "stoa")


def test_stream_stats_counts_loss_frames_and_wraparound():
    s = StreamStats()
    for seq in (65533, 65534, 65535, 0, 2, 3):  # 1 is lost, across the wrap
        s.on_packet(seq, seq // 2, marker=seq in (65535, 3), size=100)
    assert s.packets == 6 and s.expected == 7 and s.octets == 600
    assert s.frames == 1  # the frame that ended at 3 had a gap
    assert percentile([1, 2, 3, 4], 0.5) == 2.5 and percentile([], 0.5) is None


def test_loadtest_refuses_bad_arguments_with_a_reason():
    out = subprocess.run([STOA, "loadtest", "--dev", "--url", "ftp://x", "--room", "r", "--viewers", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--url must start with http://" in out.stderr
    out = subprocess.run([STOA, "loadtest", "--url", "http://127.0.0.1:1", "--room", "r", "--viewers", "3",
                          "--token", "a"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "1 --token given for 3 peers" in out.stderr
    out = subprocess.run([STOA, "loadtest", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--cheap" in out.stdout and "--publishers" in out.stdout


async def test_loadtest_smoke_against_stoa_serve(tmp_path):
    server = ServeProcess(tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            await server.wait_up(http)
        report = tmp_path / "report.json"
        proc = await asyncio.create_subprocess_exec(
            STOA, "loadtest", "--dev", "--url", server.base, "--room", "smoke", "--viewers", "3",
            "--publishers", "1", "--duration", "4", "--cheap", "--json", str(report),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        text = out.decode()
        assert proc.returncode == 0, text
        assert "measuring" in text and "joined 3/3" in text  # the progress line
        assert "join (WHEP POST -> first RTP): p50" in text and "p95" in text
        data = json.loads(report.read_text())
        assert data["summary"]["admitted"] == 3 and data["summary"]["refused"] == 0
        for row in data["viewers"]:
            assert row["packets"] > 0 and row["fps"] > 5 and row["join_s"] is not None
            assert row["loss"] is not None and row["loss"] < 0.5
    finally:
        server.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def test_churning_viewers_give_back_connections_fds_and_tasks(stoa_server):
    """Cycles of 20 viewers joining and leaving: after each cycle, the server holds only the publisher's
    connection, and this process's fds and asyncio tasks are back at their baseline."""
    room_name = "churn"
    manager = stoa_server.app[ROOMS]
    async with aiohttp.ClientSession() as http:
        pub = await WhipPublisher(http, stoa_server.base, room_name,
                                  stoa_server.token(room_name, "teacher", "instructor")).publish(
            CounterVideoTrack(), ToneAudioTrack())
        room = manager.rooms[room_name]
        await eventually(lambda: len(room.tracks()) == 2)
        await asyncio.sleep(0.5)
        baseline_pcs = len(manager.peers.live)

        def settled():
            gc.collect()
            return (len(manager.peers.live) == baseline_pcs and len(room.participants) == 1
                    and manager.leg_count() == 0)

        fds, tasks, rss = [], [], []
        async with aiohttp.ClientSession() as vhttp:
            for cycle in range(4):
                viewers = [Viewer(vhttp, stoa_server.base, room_name,
                                  stoa_server.token(room_name, f"c{cycle}-v{i}", "viewer"), cheap=True)
                           for i in range(20)]
                await asyncio.gather(*(v.join() for v in viewers))
                assert all(v.state == "joined" for v in viewers), [v.error for v in viewers]
                await eventually(lambda: all(v.video.frames >= 3 for v in viewers), 30)
                await asyncio.gather(*(v.leave() for v in viewers))
                await eventually(settled, 30)
                gc.collect()
                await asyncio.sleep(0.3)
                fds.append(open_fds())
                tasks.append(len(asyncio.all_tasks()))
                release_memory()  # what the server's monitor does every 10 s: RSS then is live memory
                rss.append(rss_kb())
        # After the first cycle the client sessions' keep-alive connections exist too; from then on, flat.
        assert max(fds[1:]) <= fds[0], f"fds after each cycle: {fds}"
        assert max(tasks[1:]) <= tasks[0], f"tasks after each cycle: {tasks}"
        assert rss[-1] <= rss[0] * 1.10, f"RSS after each cycle (kB): {rss}"
        await pub.stop()


async def test_batched_receive_counts_what_the_per_datagram_tap_counts(stoa_server):
    """Cheap viewers read by one RtpDrain (batched, from a timer) and viewers tapped per datagram, side by
    side in one room: both count the publisher's frames with no loss, the drain takes a socket over at
    its first RTP packet (so the join time is measured as with the tap), and forgets it once closed."""
    from sfu.aiortc_seam import RtpDrain

    room_name = "drain"
    async with aiohttp.ClientSession() as http:
        pub = await WhipPublisher(http, stoa_server.base, room_name,
                                  stoa_server.token(room_name, "teacher", "instructor")).publish(
            CounterVideoTrack(), ToneAudioTrack())
        await eventually(lambda: len(stoa_server.app[ROOMS].rooms[room_name].tracks()) == 2)
        drain = RtpDrain()
        batched = [Viewer(http, stoa_server.base, room_name, stoa_server.token(room_name, f"d{i}", "viewer"),
                          cheap=True, drain=drain) for i in range(4)]
        tapped = [Viewer(http, stoa_server.base, room_name, stoa_server.token(room_name, f"t{i}", "viewer"),
                         cheap=True) for i in range(2)]
        try:
            await asyncio.gather(*(v.join() for v in batched + tapped))
            assert all(v.state == "joined" for v in batched + tapped), [v.error for v in batched + tapped]
            await eventually(lambda: all(v.video.frames >= 30 for v in batched + tapped), 30)
            assert len(drain._socks) == len(batched)  # each bundled viewer has one ICE socket
            await eventually(lambda: drain.rtcp_dropped > 0, 10)  # the server's sender reports
            start = {id(v): v.video.snap() for v in batched + tapped}
            await asyncio.sleep(2.0)
            for v in batched + tapped:
                packets, _, frames, expected = (b - a for a, b in zip(start[id(v)], v.video.snap()))
                assert frames >= 15 and packets >= 0.98 * expected, (v.drain, packets, frames, expected)
                assert v.audio.packets > 0 and v.join_time is not None and v.join_time < 5
        finally:
            await asyncio.gather(*(v.leave() for v in batched + tapped))
            await pub.stop()
        drain._ticks = 99  # the next drain sweeps out closed sockets now rather than within 100 ticks
        drain.drain()
        assert not drain._socks
        drain.close()
