"""What one forwarded packet costs a media worker per leg, taken apart: SRTP protect (pylibsrtp,
AES-128-GCM, what the worker negotiates), `sendto` on uvloop's UDP transport (the worker's path) against
`sendto` on the plain socket, and both together, to N loopback receivers with one socket each (as every
viewer has its own ICE socket). Receivers are drained between rounds, outside the timing, so every
datagram is delivered into a socket queue as in the real fan-out. Variants alternate within each round.

  .venv/bin/python bench/send_cost.py --legs 150 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import time

import uvloop
from pylibsrtp import Policy, Session

PAYLOAD = 1100  # a typical VP8 packet of a 1.5 Mbps 640x480 stream


def session() -> Session:
    key = os.urandom(28)  # AES-128-GCM: 16-byte key, 12-byte salt
    policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
    policy.allow_repeat_tx = True
    return Session(policy=policy)


async def main(args) -> None:
    loop = asyncio.get_running_loop()
    receivers = []
    for _ in range(args.legs):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("127.0.0.1", 0))
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        r.setblocking(False)
        receivers.append(r)
    transports, socks = [], []
    for r in receivers:
        t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        transports.append((t, r.getsockname()))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append((s, r.getsockname()))
    sessions = [session() for _ in range(args.legs)]
    seq = [0]

    def packet() -> bytes:
        seq[0] = (seq[0] + 1) & 0xFFFF
        return struct.pack("!BBHII", 0x80, 96, seq[0], seq[0] * 3000, 0x1234) + b"\x55" * PAYLOAD

    def drain() -> None:
        for r in receivers:
            try:
                while True:
                    r.recv(2048)
            except BlockingIOError:
                pass

    def protect_only(p: bytes) -> None:
        for s in sessions:
            s.protect(p)

    def uv_send(p: bytes) -> None:
        for t, addr in transports:
            t.sendto(p, addr)

    def sock_send(p: bytes) -> None:
        for s, addr in socks:
            s.sendto(p, addr)

    def protect_uv_send(p: bytes) -> None:
        for s, (t, addr) in zip(sessions, transports):
            t.sendto(s.protect(p), addr)

    variants = {"protect": protect_only, "uvloop sendto": uv_send, "socket.sendto": sock_send,
                "protect + uvloop sendto": protect_uv_send}
    per: dict[str, list[float]] = {k: [] for k in variants}
    for rnd in range(args.rounds):
        names = list(variants) if rnd % 2 == 0 else list(variants)[::-1]
        for name in names:
            fn, cpu = variants[name], 0.0
            for _ in range(args.packets):
                p = packet()
                c = time.thread_time()
                fn(p)
                cpu += time.thread_time() - c
                if seq[0] % 50 == 0:
                    drain()
            drain()
            per[name].append(cpu / (args.packets * args.legs) * 1e6)
            await asyncio.sleep(0)
    print(f"{args.legs} legs, {args.packets} packets of {PAYLOAD + 12} bytes per variant and round, "
          f"{args.rounds} rounds, CPU µs per packet and leg (median, range):")
    for name, xs in per.items():
        print(f"  {name:26} {statistics.median(xs):5.2f}  ({min(xs):.2f} to {max(xs):.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--legs", type=int, default=150)
    parser.add_argument("--packets", type=int, default=200, help="packets per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    uvloop.run(main(parser.parse_args()))
