"""Prometheus metrics at /metrics, read from live state at scrape time (nothing on the hot path)."""

from __future__ import annotations

import contextlib

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sfu.quality import LEVELS
from signaling.room import LOAD, ROOMS, WORKERS, ClosedTotals

METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


class RoomCollector:
    def __init__(self, app: web.Application):
        self.app = app

    def collect(self):
        manager = self.app.get(ROOMS)
        rooms = list(manager.rooms.values()) if manager else []
        participants = GaugeMetricFamily("stoa_participants", "Participants joined", labels=["transport"])
        by_transport: dict[str, int] = {}
        tracks = GaugeMetricFamily("stoa_published_tracks", "Published tracks", labels=["kind"])
        by_kind: dict[str, int] = {}
        legs = 0
        by_quality = dict.fromkeys(LEVELS, 0)
        # Counters: the live tracks and connections plus what the closed ones had counted (never down).
        total = ClosedTotals(**vars(manager.closed)) if manager else ClosedTotals()
        for room in rooms:
            for p in room.participants.values():
                by_transport[p.transport] = by_transport.get(p.transport, 0) + 1
                total.add_legs(p.subscriber)
            for t in room.tracks():
                by_kind[t.kind] = by_kind.get(t.kind, 0) + 1
                total.add_track(t)
                for d in t.legs():
                    legs += 1
                    by_quality[d.quality.level] += 1
        pool = self.app.get(WORKERS)
        # Legs on media workers, from their last stats (a second old at most), live and closed; a worker
        # that dies takes its totals along, which Prometheus reads as a counter reset.
        for w in pool.describe() if pool is not None else ():
            closed = w.get("closed_legs", {})
            total.sent += closed.get("packets_sent", 0)
            total.retransmits += closed.get("retransmits", 0)
            total.nack_misses += closed.get("nack_misses", 0)
            for session in w.get("sessions", {}).values():
                for leg in session.get("legs", ()):
                    legs += 1
                    by_quality[leg.get("quality", LEVELS[0])] += 1
                    total.sent += leg.get("packets_sent", 0)
                    total.retransmits += leg.get("retransmits", 0)
                    total.nack_misses += leg.get("nack_misses", 0)
        for k, v in by_transport.items():
            participants.add_metric([k], v)
        for k, v in by_kind.items():
            tracks.add_metric([k], v)
        yield GaugeMetricFamily("stoa_rooms", "Rooms with participants on this node", value=len(rooms))
        yield participants
        yield tracks
        yield GaugeMetricFamily("stoa_subscriber_legs", "Forwarding legs (track x subscriber)", value=legs)
        viewers = GaugeMetricFamily("stoa_subscriber_legs_by_quality",
                                    "Forwarding legs by their viewer's connection quality", labels=["quality"])
        changes = CounterMetricFamily("stoa_subscriber_quality_changes",
                                      "Times a leg's viewer quality changed to this level", labels=["quality"])
        for level in LEVELS:
            viewers.add_metric([level], by_quality[level])
            changes.add_metric([level], manager.quality_changes[level] if manager else 0)
        yield viewers
        yield changes
        yield GaugeMetricFamily("stoa_peer_connections", "Open peer connections",
                                value=len(manager.peers.live) if manager else 0)
        yield CounterMetricFamily("stoa_rtp_received_packets", "RTP packets received from publishers",
                                  value=total.received)
        yield CounterMetricFamily("stoa_rtp_forwarded_packets", "RTP packets forwarded to subscribers",
                                  value=total.sent)
        yield CounterMetricFamily("stoa_rtp_retransmitted_packets", "Packets resent for subscriber NACKs",
                                  value=total.retransmits)
        yield CounterMetricFamily("stoa_nack_misses", "NACKed packets no longer in the cache",
                                  value=total.nack_misses)
        yield CounterMetricFamily("stoa_keyframe_requests_sent", "PLIs sent to publishers", value=total.plis)
        yield from _load_metrics(self.app.get(LOAD))


def _load_metrics(load):
    """This process's overload state (sfu/overload.py): lag, shedding and refused joins."""
    if load is None:
        return
    yield GaugeMetricFamily("stoa_event_loop_lag_smoothed_seconds", "Smoothed event-loop lag of the media loop",
                            value=load.lag)
    yield GaugeMetricFamily("stoa_event_loop_busy_ratio", "CPU seconds per second of this process", value=load.busy)
    yield GaugeMetricFamily("stoa_overload_level", "0 normal, 1 retransmits shed, 2+ video shed on a share of legs",
                            value=load.level)
    yield GaugeMetricFamily("stoa_video_legs_shed", "Video legs paused by overload shedding", value=len(load.paused))
    yield CounterMetricFamily("stoa_event_loop_lag_seconds", "Event-loop lag summed over every probe",
                              value=load.lag_seconds_total)
    yield CounterMetricFamily("stoa_overload_episodes", "Overload episodes (loop behind or joins refused)",
                              value=load.episodes_total)
    yield CounterMetricFamily("stoa_shed_retransmits", "NACKed packets not resent because the loop was behind",
                              value=load.shed_retransmits)
    yield CounterMetricFamily("stoa_shed_video_packets", "Video packets not sent to legs paused by shedding",
                              value=load.shed_video_packets)
    yield CounterMetricFamily("stoa_joins_refused", "Joins refused with 'this server is at capacity'",
                              value=load.joins_refused)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


@contextlib.contextmanager
def collecting(app: web.Application, collector):
    """Export `collector` in /metrics while the block runs (a cleanup_ctx's lifetime)."""
    registry = app.get(METRICS_REGISTRY)
    if registry is not None:
        registry.register(collector)
    try:
        yield
    finally:
        if registry is not None:
            registry.unregister(collector)


def setup(app: web.Application) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RoomCollector(app))
    app[METRICS_REGISTRY] = registry
    app.router.add_get("/metrics", metrics)
