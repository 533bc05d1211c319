"""Wires the media worker pool (sfu/pool.py) into the app: start and stop it with the server, end the WHEP
sessions of a worker that died, and export the workers' figures in /metrics."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sfu.peer import IceSettings
from sfu.pool import WorkerPool
from shared.appkeys import SETTINGS
from signaling import whip
from shared.appkeys import SETTINGS
from signaling.metrics import collecting
from signaling.room import ROOMS, WORKERS

logger = logging.getLogger(__name__)


async def workers_ctx(app: web.Application):
    settings = app[SETTINGS]
    count = settings.workers or 0
    if count < 2:
        yield  # 0 or 1: viewers stay in this process, as without workers
        return
    ice = IceSettings(servers=settings.ice_servers, username=settings.ice_username,
                      credential=settings.ice_credential, addresses=settings.ice_addresses)

    async def session_lost(sub) -> None:
        await whip.end_session(app, sub.room, sub.session_id, reason=f"media worker {sub.worker} died")

    pool = WorkerPool(count, ice, log_level=settings.log_level, on_session_lost=session_lost,
                      policy={"max_legs": settings.capacity_legs, "react": settings.overload_control},
                      downlink_transport_cc=settings.downlink_transport_cc)
    await pool.start()
    app[WORKERS] = pool
    app[ROOMS].workers = pool  # room participants' subscriber connections go to the workers too
    with collecting(app, WorkerCollector(pool)):
        try:
            yield
        finally:
            app[ROOMS].workers = None
            await pool.close()


class WorkerCollector:
    def __init__(self, pool: WorkerPool):
        self.pool = pool

    def collect(self):
        running = GaugeMetricFamily("stoa_media_workers_running", "Media worker processes running")
        running.add_metric([], len(self.pool.running()))
        yield running
        yield CounterMetricFamily("stoa_media_worker_restarts", "Media worker processes started again",
                                  value=self.pool.restarts)
        viewers = GaugeMetricFamily("stoa_media_worker_viewers", "Viewer sessions per worker", labels=["worker"])
        relayed = CounterMetricFamily("stoa_relay_packets", "RTP packets relayed to each worker", labels=["worker"])
        datagrams = CounterMetricFamily("stoa_relay_datagrams", "Relay datagrams sent to each worker (a batch each)",
                                        labels=["worker"])
        dropped = CounterMetricFamily("stoa_relay_dropped_packets", "Relayed packets dropped (worker behind)",
                                      labels=["worker"])
        cpu = CounterMetricFamily("stoa_media_worker_cpu_seconds", "CPU time of each worker", labels=["worker"])
        sent = CounterMetricFamily("stoa_media_worker_forwarded_packets",
                                   "RTP packets a worker forwarded to its viewers (live sessions)", labels=["worker"])
        resent = CounterMetricFamily("stoa_media_worker_retransmitted_packets",
                                     "Packets a worker resent for its viewers' NACKs (live sessions)",
                                     labels=["worker"])
        lag = GaugeMetricFamily("stoa_media_worker_lag_smoothed_seconds", "Smoothed event-loop lag of each worker",
                                labels=["worker"])
        level = GaugeMetricFamily("stoa_media_worker_overload_level", "Each worker's shedding level (0 normal)",
                                  labels=["worker"])
        shed = CounterMetricFamily("stoa_media_worker_shed_video_packets",
                                   "Video packets a worker did not send to legs paused by its shedding", labels=["worker"])
        shed_rtx = CounterMetricFamily("stoa_media_worker_shed_retransmits",
                                       "NACKed packets a worker did not resend while behind", labels=["worker"])
        for w in self.pool.describe():
            if not w["running"]:
                continue
            load = w["load"]
            lag.add_metric([str(w["index"])], load.get("lag", 0.0))
            level.add_metric([str(w["index"])], load.get("level", 0))
            shed.add_metric([str(w["index"])], load.get("shed_video_packets", 0))
            shed_rtx.add_metric([str(w["index"])], load.get("shed_retransmits", 0))
            label = [str(w["index"])]
            viewers.add_metric(label, w["viewers"])
            relayed.add_metric(label, w["packets_relayed"])
            datagrams.add_metric(label, w["datagrams_sent"])
            dropped.add_metric(label, w["packets_dropped"])
            cpu.add_metric(label, w["cpu_seconds"] or 0.0)
            legs = [leg for s in w["sessions"].values() for leg in s.get("legs", [])]
            sent.add_metric(label, sum(leg.get("packets_sent", 0) for leg in legs))
            resent.add_metric(label, sum(leg.get("retransmits", 0) for leg in legs))
        yield from (viewers, relayed, datagrams, dropped, cpu, sent, resent, lag, level, shed, shed_rtx)
