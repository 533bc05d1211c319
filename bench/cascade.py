"""The relay between nodes (sfu/noderelay.py): CPU per packet on the home, on an edge, and on an edge that relays
onward (a tree), and the latency one hop and two hops add, in one process over loopback UDP (no Redis, no
server, no WebSocket: the control messages are handed over directly, as they would arrive before the media).

    .venv/bin/python bench/cascade.py [--packets 100000] [--seconds 10]

- CPU: synthetic VP8-shaped packets (1200-byte payloads, 4 per frame) fed to an UpTrack as fast as the loop
  takes them. `base` is UpTrack.on_rtp alone (what the home pays anyway); `home` adds the relay stream
  (encode once, batch, seal with BLAKE2s, sendto) to a UDP socket nobody reads; `hop` adds the edge's
  receive (recv, tag check, replay window, decode, MirrorTrack cache) in the same process; `tree` adds a
  second edge fed by the first (home -> edge -> edge). Per hop: home = home - base, edge = hop - home,
  onward (what the middle edge pays per next edge) = tree - hop - edge.
- Latency: packets paced as a 30 fps stream of 4-packet frames for --seconds; each packet's time from
  UpTrack.on_rtp on the home to MirrorTrack.on_relayed on the edge, and on the second edge of a tree
  (batching at the end of the loop turn and loopback UDP included; a network's own delay adds to it).

Not part of the test suite; the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time

from aiortc.rtp import RtpPacket

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sfu.noderelay import EdgeRelay, HomeLink, open_endpoint  # noqa: E402
from sfu.uptrack import PublisherClock, UpTrack  # noqa: E402

PER_FRAME = 4
SECRET = b"bench cluster secret"


def packet(i: int) -> RtpPacket:
    frame = i // PER_FRAME
    first = i % PER_FRAME == 0
    payload = (b"\x10" if first else b"\x00") + (b"\x00" if first and frame % 250 == 0 else b"\x01") + bytes(1198)
    return RtpPacket(payload_type=96, sequence_number=i & 0xFFFF, timestamp=frame * 3000 & 0xFFFFFFFF, ssrc=1,
                     marker=int(i % PER_FRAME == PER_FRAME - 1), payload=payload)


def uptrack() -> UpTrack:
    async def send_pli(ssrc: int) -> None:
        pass

    return UpTrack(track_id="TR_bench", kind="video", mime_type="video/VP8", clock_rate=90000, payload_type=96,
                   publisher_id="bench", source="camera", clock=PublisherClock(), send_pli=send_pli)


async def setup(target: str):
    """An UpTrack relayed to `target`: "none" (no relay), "sink" (a socket nobody reads), "edge", or "tree"
    (an edge relaying onward to a second edge, which is returned)."""
    track = uptrack()
    if target == "none":
        return track, None, []
    home = await open_endpoint("127.0.0.1")
    closers = [home.close]
    if target == "sink":
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        closers.append(sink.close)
        link = HomeLink(home, SECRET, sink.getsockname(), lambda m: None)
        link.bind({"video": track})
        return track, None, closers
    edge_ep = await open_endpoint("127.0.0.1")
    closers.append(edge_ep.close)
    edge = EdgeRelay(edge_ep, SECRET, lambda m: None, lambda tracks: None)
    link = HomeLink(home, SECRET, ("127.0.0.1", edge_ep.port), edge.on_control)
    edge.on_control(link.hello)
    link.bind({"video": track})
    if target == "tree":
        last_ep = await open_endpoint("127.0.0.1")
        closers.append(last_ep.close)
        last = EdgeRelay(last_ep, SECRET, lambda m: None, lambda tracks: None)
        onward = HomeLink(edge_ep, SECRET, ("127.0.0.1", last_ep.port), last.on_control)
        last.on_control(onward.hello)
        onward.bind(edge.broadcast_tracks())
        return track, last, closers
    return track, edge, closers


async def cpu(target: str, count: int) -> float:
    track, edge, closers = await setup(target)
    pkts = [packet(i) for i in range(count)]
    arrival = time.time()
    start = time.process_time()
    for i, p in enumerate(pkts):
        await track.on_rtp(p, arrival + i / 1000)
        if i % 16 == 15:
            await asyncio.sleep(0)  # let the batch leave and the edge read, as a real loop turn would
    await asyncio.sleep(0.05)
    spent = time.process_time() - start
    if edge is not None:
        got = edge.packets
        assert got > 0.95 * count, f"the edge got {got} of {count} packets"
    for close in closers:
        close()
    return spent / count * 1e6


async def latency(seconds: float, target: str = "edge") -> list[float]:
    track, edge, closers = await setup(target)
    sent: dict[int, float] = {}
    delays: list[float] = []
    mirror = edge.tracks[next(iter(edge.tracks))]
    original = mirror.on_relayed

    def on_relayed(p, arrival):
        t0 = sent.pop(p.seq, None)
        if t0 is not None:
            delays.append((time.perf_counter() - t0) * 1000)
        original(p, arrival)

    mirror.on_relayed = on_relayed
    frames = int(seconds * 30)
    for f in range(frames):
        for k in range(PER_FRAME):
            i = f * PER_FRAME + k
            sent[i & 0xFFFF] = time.perf_counter()
            await track.on_rtp(packet(i), time.time())
        await asyncio.sleep(1 / 30)
    await asyncio.sleep(0.1)
    for close in closers:
        close()
    return delays


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = {t: [] for t in ("none", "sink", "edge", "tree")}
    for _ in range(args.repeats):
        for target in runs:
            runs[target].append(await cpu(target, args.packets))
    base, home, hop, tree = (statistics.median(runs[t]) for t in ("none", "sink", "edge", "tree"))
    print(f"cascade cpu: {args.packets} packets x {args.repeats} runs (median): UpTrack alone {base:.2f} µs, "
          f"+relay out {home:.2f} µs, +edge in {hop:.2f} µs, +second edge {tree:.2f} µs per packet")
    edge = hop - home
    print(f"cascade cpu per hop: home {home - base:.2f} µs/packet (once per edge node), "
          f"edge {edge:.2f} µs/packet, onward {tree - hop - edge:.2f} µs/packet (once per next edge)")
    for target, name in (("edge", "one hop"), ("tree", "two hops")):
        delays = sorted(await latency(args.seconds, target))
        q = statistics.quantiles(delays, n=100)
        print(f"cascade latency, {name}: {len(delays)} packets at 30 fps x {PER_FRAME}: p50 {q[49]:.3f} ms, "
              f"p95 {q[94]:.3f} ms, p99 {q[98]:.3f} ms, max {delays[-1]:.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
