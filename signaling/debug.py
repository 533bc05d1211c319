"""Debug-only endpoints, registered only when the `debug_hooks` setting is on (tests, diagnostics).

POST /debug/burn?seconds=S&duty=D  keeps this process's event loop busy (D of the time, for S seconds),
                                   which is what an overloaded forwarding loop looks like from inside.
GET /debug/load[?trim=1]           the overload monitor's figures, asyncio tasks, peer connections
                                   (trim=1: gc.collect() and malloc_trim(0) first).
POST /debug/relay-loss?rate=R      drop a share R of the relay datagrams this node sends to other nodes
                                   (with redis): the NACK-miss repair path between nodes.
"""

from __future__ import annotations

from aiohttp import web

from sfu.overload import burn_loop, release_memory
from sfu.pool import WorkerUnavailable
from shared.appkeys import SETTINGS
from signaling.routing import CASCADE
from signaling.room import LOAD, ROOMS, WORKERS


async def burn(request: web.Request) -> web.Response:
    try:
        seconds = float(request.query.get("seconds", "5"))
        duty = float(request.query.get("duty", "0.9"))
        slice_s = float(request.query.get("slice", "0.6"))
    except ValueError:
        return web.json_response({"error": "seconds, duty and slice must be numbers"}, status=400)
    if not (0 < seconds <= 120 and 0 < duty < 1 and 0 < slice_s <= 5):
        return web.json_response({"error": "need 0 < seconds <= 120, 0 < duty < 1, 0 < slice <= 5"}, status=400)
    task = burn_loop(seconds, duty=duty, slice_s=slice_s)
    held = request.app[LOAD].background
    held.add(task)
    task.add_done_callback(held.discard)
    return web.json_response({"burning": seconds, "duty": duty, "slice": slice_s}, status=202)


async def load(request: web.Request) -> web.Response:
    """The monitor's figures plus what a leak would grow: tasks and peer connections (bench/churn.py)."""
    import asyncio

    if request.query.get("trim") == "1":
        # Tell freed memory from live memory: collect, then hand glibc's free pages back to the kernel.
        import gc

        gc.collect()
        release_memory()
        pool = request.app.get(WORKERS)
        for link in pool.running() if pool is not None else ():
            try:
                await link.request({"type": "trim"})  # the media workers do the same, answered when done
            except WorkerUnavailable:
                pass  # it died meanwhile: nothing of it to trim
    return web.json_response({**request.app[LOAD].stats(), "tasks": len(asyncio.all_tasks()),
                              "peer_connections": len(request.app[ROOMS].peers.live)})


async def relay_loss(request: web.Request) -> web.Response:
    cascade = request.app.get(CASCADE)
    if cascade is None:
        return web.json_response({"error": "no relay between nodes here (no redis setting)"}, status=404)
    try:
        rate = float(request.query.get("rate", ""))
    except ValueError:
        rate = -1.0
    if not 0 <= rate < 1:
        return web.json_response({"error": "rate must be a number from 0 to below 1"}, status=400)
    cascade.impair(rate)
    return web.json_response({"relay_loss": rate})


def setup(app: web.Application) -> None:
    if app[SETTINGS].debug_hooks:
        app.router.add_post("/debug/relay-loss", relay_loss)
        app.router.add_post("/debug/burn", burn)
        app.router.add_get("/debug/load", load)
