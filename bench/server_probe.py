"""Diagnostics only: the same Stoa app as `stoa serve --dev`, plus a line of forwarding counters on
stderr every --every seconds (per published track: packets in, keyframes in, PLIs sent; summed over
its legs: packets out, retransmits, NACK misses, keyframe requests). Used by
`bench/fanout.py --probe` to tell ingest loss from fan-out loss; the CPU figures in
docs/benchmarks.md come from the plain `stoa serve`.

  python bench/server_probe.py --port P --data-dir D [--every 2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--every", type=float, default=2.0)
    args = parser.parse_args()
    import uvloop

    from shared.config import load_settings
    from signaling.room import ROOMS
    from stoa.app import build_app

    uvloop.install()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(environ={}, overrides={
        "dev": True, "host": "127.0.0.1", "port": args.port, "ice_addresses": ["127.0.0.1"],
        "data_dir": args.data_dir, "log_level": "warning"})
    app = build_app(settings)

    async def report(app: web.Application):
        async def loop() -> None:
            while True:
                await asyncio.sleep(args.every)
                for room in list(app[ROOMS].rooms.values()):
                    for up in room.tracks():
                        legs = list(up.downtracks)
                        print(f"probe {up.kind}: in {up.packets_received} kf_in {up.keyframes_received} "
                              f"pli {up.plis_sent} kf_req {up.keyframe_requests} mismatch {up.payload_mismatches} "
                              f"| legs {len(legs)} out {sum(d.packets_sent for d in legs)} "
                              f"rtx {sum(d.retransmits for d in legs)} miss {sum(d.nack_misses for d in legs)} "
                              f"leg_kf_req {sum(d.keyframe_requests for d in legs)} "
                              f"paced {sum(d.pacer.paced for d in legs)} bursts {sum(d.pacer.bursts for d in legs)} "
                              f"bad {sum(d.quality.level == 'bad' for d in legs)}", file=sys.stderr, flush=True)
        task = asyncio.ensure_future(loop())
        yield
        task.cancel()

    app.cleanup_ctx.append(report)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
