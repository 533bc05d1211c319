"""What the GOP cache adds to the forwarding path, without a server: µs per video packet in
`UpTrack.on_rtp` with the cache (the stock path since issue 10) and with it switched off, no legs
attached (the cache is paid per packet received, whatever the number of viewers), and the memory one
GOP holds.

    .venv/bin/python bench/gop_cost.py [--packets 200000] [--gop-frames 250]

Synthetic VP8-shaped packets: 1200-byte payloads, 4 per frame, a keyframe every --gop-frames frames
(OBS's default 250). Not part of the test suite; the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from aiortc.rtp import RtpPacket

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sfu.uptrack import PublisherClock, UpTrack  # noqa: E402

PER_FRAME = 4


def packets(n: int, gop_frames: int) -> list[RtpPacket]:
    out = []
    for i in range(n):
        frame = i // PER_FRAME
        first = i % PER_FRAME == 0
        keyframe = first and frame % gop_frames == 0
        descriptor = b"\x10" if first else b"\x00"
        payload = descriptor + (b"\x00" if keyframe else b"\x01") + bytes(1198)
        out.append(RtpPacket(payload_type=96, sequence_number=i & 0xFFFF, timestamp=frame * 3000 & 0xFFFFFFFF,
                             ssrc=1, marker=int(i % PER_FRAME == PER_FRAME - 1), payload=payload))
    return out


async def run(pkts: list[RtpPacket], with_gop: bool) -> tuple[float, int]:
    async def send_pli(ssrc: int) -> None:
        pass

    track = UpTrack(track_id="TR_bench", kind="video", mime_type="video/VP8", clock_rate=90000, payload_type=96,
                    publisher_id="bench", source="camera", clock=PublisherClock(), send_pli=send_pli)
    if not with_gop:
        track.gop = None
    arrival = time.time()
    largest = 0
    start = time.process_time()
    for i, packet in enumerate(pkts):
        await track.on_rtp(packet, arrival + i / 1000)  # 1000 packets/s: ~10 Mbps of 1200-byte packets
        if with_gop and track.gop.packets is not None:
            largest = max(largest, track.gop.bytes)
    return (time.process_time() - start) / len(pkts) * 1e6, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--gop-frames", type=int, default=250)
    args = parser.parse_args()
    pkts = packets(args.packets, args.gop_frames)
    results = {}
    for attempt in range(3):  # interleaved, best of three: the machine is shared
        for with_gop in (False, True):
            us, largest = asyncio.run(run(pkts, with_gop))
            best = results.get(with_gop)
            results[with_gop] = (min(us, best[0]) if best else us, largest)
    off, on = results[False][0], results[True][0]
    print(f"on_rtp, no legs, per video packet: {off:.2f} µs without the GOP cache, {on:.2f} µs with it "
          f"(+{on - off:.2f} µs)")
    print(f"largest GOP held: {results[True][1] / 1e6:.2f} MB ({args.gop_frames} frames of "
          f"{PER_FRAME} x 1200-byte packets)")


if __name__ == "__main__":
    main()
