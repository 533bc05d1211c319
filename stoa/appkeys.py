"""Typed application keys: every shared resource of a running server hangs off the Application."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from recorder.service import RecordingManager
    from sfu.pool import WorkerPool
    from sfu.overload import LoadMonitor
    from signaling.cascade import Cascade
    from signaling.cluster import Cluster
    from signaling.room import RoomManager
    from stoa.config import Settings

SETTINGS: web.AppKey["Settings"] = web.AppKey("settings")
ROOMS: web.AppKey["RoomManager"] = web.AppKey("rooms")
STORE: web.AppKey[Any] = web.AppKey("store")
# The classroom layer plugs in here: an object with on_join(room, participant) and
# on_message(room, participant, payload). Absent: "data" messages are refused.
DATA_HANDLER: web.AppKey[Any] = web.AppKey("data_handler")
# The recording manager (recorder/service.py), created by web.review.recordings_ctx.
RECORDINGS: web.AppKey["RecordingManager"] = web.AppKey("recordings")
# Classroom services and their transports (created by signaling.api.services_ctx).
SESSIONS: web.AppKey[Any] = web.AppKey("sessions")          # classroom.sessions.SessionService
TUTORING: web.AppKey[Any] = web.AppKey("tutoring")          # classroom.tutoring.TutoringService
WEBHOOKS: web.AppKey[Any] = web.AppKey("webhooks")          # classroom.webhooks.WebhookDispatcher
KEYRING: web.AppKey[Any] = web.AppKey("keyring")            # signaling.api.identity.KeyRing
NOTIFY: web.AppKey[Any] = web.AppKey("notify")              # signaling.notify.NotifyHub
# Media worker processes (sfu/pool.py), present when `workers` >= 2 (created by stoa.workers.workers_ctx).
WORKERS: web.AppKey["WorkerPool"] = web.AppKey("workers")
# This process's event-loop lag probe, shedding and admission (sfu/overload.py).
LOAD: web.AppKey["LoadMonitor"] = web.AppKey("load")
# This node in a cluster of nodes on Redis (signaling/cluster.py); absent without `redis`.
CLUSTER: web.AppKey["Cluster"] = web.AppKey("cluster")
# The relay of rooms' broadcasts between nodes (signaling/cascade.py); absent without `redis`.
CASCADE: web.AppKey["Cascade"] = web.AppKey("cascade")
