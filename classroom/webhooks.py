"""Outgoing webhooks: signed JSON POSTs with retries, queued in the database so they survive a restart.

Each request carries
  Content-Type: application/json
  X-Stoa-Event: session.started            X-Stoa-Delivery: <delivery id>
  X-Stoa-Timestamp: <unix seconds>          X-Stoa-Signature: sha256=<hex>
where the signature is HMAC-SHA256(secret, f"{timestamp}.{body}") over the exact body bytes. Receivers check
it with `verify_signature()` and reject stale timestamps (replay protection).

Body: {"id": <event id>, "event": <name>, "created_at": <unix seconds>, "data": {...}}.
A 2xx answer marks the delivery delivered; anything else (or a network error) schedules a retry with
exponential backoff (base_delay * 2**(attempt-1), capped at max_delay) until max_attempts, then it gives up.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
import uuid
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

import aiohttp

from classroom.errors import InvalidInput, NotFound
from shared.clock import SYSTEM_CLOCK, Clock
from storage.webhooks import DeliveryRecord, WebhookRecord

log = logging.getLogger(__name__)

EVENTS = ("session.started", "session.ended", "session.cancelled", "participant.joined", "participant.left",
          "attendance.ready")
SIGNATURE_HEADER = "X-Stoa-Signature"
TIMESTAMP_HEADER = "X-Stoa-Timestamp"


def sign(secret: str, timestamp: int | str, body: bytes | str) -> str:
    if isinstance(body, str):
        body = body.encode()
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes | str, *,
                     tolerance_s: float = 300, now: float | None = None) -> bool:
    """True when the signature matches and the timestamp is within tolerance_s of now."""
    ts = headers.get(TIMESTAMP_HEADER)
    got = headers.get(SIGNATURE_HEADER)
    if not ts or not got:
        return False
    try:
        age = abs((time.time() if now is None else now) - int(ts))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, ts, body), got)


class WebhookDispatcher:
    """Enqueue events (`emit`) and deliver them (`run_once`, or a background loop with `start`/`stop`).

    `emit(event, data)` has the observer signature, so the dispatcher can be passed straight to
    SessionService(observers=[dispatcher.emit]); events outside EVENTS are ignored.
    """

    def __init__(self, store, *, http: aiohttp.ClientSession | None = None, clock: Clock = SYSTEM_CLOCK,
                 max_attempts: int = 8, base_delay: float = 2.0, max_delay: float = 3600.0,
                 timeout: float = 10.0, lease_s: float = 60.0, poll_interval: float = 30.0,
                 jitter: float = 0.1, concurrency: int = 8, rng: random.Random | None = None):
        self.store = store
        self.repo = store.webhooks
        self._http = http
        self._own_http = http is None
        self.clock = clock
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.lease_s = lease_s
        self.poll_interval = poll_interval
        self.jitter = jitter
        self._sem = asyncio.Semaphore(concurrency)
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # configuration --------------------------------------------------------------------------------------
    async def add_webhook(self, url: str, events: Iterable[str] = ("*",), secret: str | None = None) -> WebhookRecord:
        """Register an endpoint. `events`: names from EVENTS, or "*" for all. The secret is generated when
        not given; it is returned here (show it once) and used to sign every request."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidInput(f"webhook url must be an absolute http(s) URL, got {url!r}")
        events = list(events)
        if not events:
            raise InvalidInput("webhook needs at least one event (or \"*\")")
        unknown = [e for e in events if e != "*" and e not in EVENTS]
        if unknown:
            raise InvalidInput(f"unknown webhook event(s) {', '.join(unknown)}; known: {', '.join(EVENTS)}")
        if secret is not None and len(secret) < 16:
            raise InvalidInput("webhook secret must be at least 16 characters")
        return await self.repo.add(url=url, secret=secret or secrets.token_urlsafe(32), events=events,
                                   now=self.clock())

    async def remove_webhook(self, webhook_id: str) -> None:
        if not await self.repo.delete(webhook_id):
            raise NotFound(f"webhook {webhook_id!r} does not exist")

    async def list_webhooks(self) -> list[WebhookRecord]:
        return await self.repo.list()

    # producing ------------------------------------------------------------------------------------------
    async def emit(self, event: str, data: dict[str, Any]) -> list[DeliveryRecord]:
        if event not in EVENTS:
            return []
        now = self.clock()
        body = json.dumps({"id": uuid.uuid4().hex, "event": event, "created_at": now, "data": data},
                          separators=(",", ":"), default=str)
        queued = await self.repo.enqueue(event, body, now=now)
        if queued:
            self._wake.set()
        return queued

    # delivering -----------------------------------------------------------------------------------------
    def backoff(self, attempts: int) -> float:
        """Delay before the next try after `attempts` failed attempts."""
        delay = min(self.max_delay, self.base_delay * (2 ** max(0, attempts - 1)))
        if self.jitter:
            delay *= 1 + self._rng.uniform(-self.jitter, self.jitter)
        return delay

    async def run_once(self, now: float | None = None) -> int:
        """Send every delivery due at `now`; returns how many were attempted."""
        now = self.clock() if now is None else now
        due = await self.repo.claim_due(now=now, lease_s=self.lease_s)
        if due:
            hooks = {h.id: h for h in await self.repo.list()}
            await asyncio.gather(*[self._attempt(d, hooks.get(d.webhook_id)) for d in due])
        return len(due)

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._own_http = True
        return self._http

    async def _attempt(self, delivery: DeliveryRecord, hook: WebhookRecord | None) -> None:
        if hook is None or not hook.active:
            await self.repo.mark_failed(delivery.id, error="webhook removed or inactive", next_attempt_at=None)
            return
        ts = str(int(self.clock()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Stoa-Webhooks/1",
            "X-Stoa-Event": delivery.event,
            "X-Stoa-Delivery": delivery.id,
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(hook.secret, ts, delivery.body),
        }
        error = None
        async with self._sem:
            try:
                http = await self._session()
                async with http.post(hook.url, data=delivery.body.encode(), headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=self.timeout),
                                     allow_redirects=False) as resp:
                    if 200 <= resp.status < 300:
                        await resp.read()
                    else:
                        error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        if error is None:
            await self.repo.mark_delivered(delivery.id, now=self.clock())
            return
        attempts = delivery.attempts + 1
        retry_at = None if attempts >= self.max_attempts else self.clock() + self.backoff(attempts)
        log.info("webhook %s to %s failed (attempt %d): %s", delivery.event, hook.url, attempts, error)
        await self.repo.mark_failed(delivery.id, error=error, next_attempt_at=retry_at)

    # background loop ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="stoa-webhooks")

    async def _loop(self) -> None:
        while True:
            self._wake.clear()  # before the work, so an emit during it is not lost
            try:
                await self.run_once()
                next_due = await self.repo.next_due_at()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook dispatch failed; retrying")
                next_due = None
            wait = self.poll_interval
            if next_due is not None:
                wait = max(0.0, min(wait, next_due - self.clock()))
            await self._idle(wait)

    async def _idle(self, seconds: float) -> None:
        """Until `seconds` of the dispatcher's clock (the one retries are due by) pass, or an emit wakes it."""
        timer = asyncio.ensure_future(self.clock.sleep(seconds))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((timer, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            woken.cancel()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None
