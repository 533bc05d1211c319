"""Webhooks against a real aiohttp receiver on 127.0.0.1 and a real Store (both backends)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from classroom.errors import InvalidInput
from classroom.sessions import Actor, SessionService
from classroom.webhooks import WebhookDispatcher, sign, verify_signature
from storage import open_store
from tests.fixtures.clock import FakeClock
from tests.serve import eventually

SECRET = "whsec-0123456789abcdef"


class Receiver:
    """Answers with the queued statuses in order (then 200) and records what it got."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.got: list[dict] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append({"headers": dict(request.headers), "body": body,
                         "valid": verify_signature(SECRET, request.headers, body, tolerance_s=10**10)})
        self.arrived.set()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def receiver():
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    rec.url = str(server.make_url("/hook"))
    try:
        yield rec
    finally:
        await server.close()


def test_sign_and_verify():
    body = b'{"a":1}'
    sig = sign(SECRET, 1700000000, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    headers = {"X-Stoa-Timestamp": "1700000000", "X-Stoa-Signature": sig}
    assert verify_signature(SECRET, headers, body, now=1700000010)
    assert not verify_signature(SECRET, headers, b'{"a":2}', now=1700000010)
    assert not verify_signature("other-secret-xxxxxxxx", headers, body, now=1700000010)
    assert not verify_signature(SECRET, headers, body, now=1700001000)  # stale
    assert not verify_signature(SECRET, {}, body)


async def test_add_webhook_validation(store):
    d = WebhookDispatcher(store)
    with pytest.raises(InvalidInput, match="absolute http"):
        await d.add_webhook("ftp://x/y")
    with pytest.raises(InvalidInput, match="unknown webhook event"):
        await d.add_webhook("http://127.0.0.1:1/x", ["session.exploded"])
    with pytest.raises(InvalidInput, match="at least 16"):
        await d.add_webhook("http://127.0.0.1:1/x", secret="short")
    hook = await d.add_webhook("http://127.0.0.1:1/x")
    assert len(hook.secret) >= 32 and hook.events == ["*"] and "secret" not in hook.public()
    await d.stop()


async def test_signed_delivery_and_retry_after_500(store, receiver):
    clock = FakeClock(3_000_000.0)
    receiver.statuses = [500]
    d = WebhookDispatcher(store, clock=clock, base_delay=10, jitter=0)
    hook = await d.add_webhook(receiver.url, ["session.started", "session.ended"], secret=SECRET)
    await d.add_webhook(receiver.url + "-unused", ["participant.joined"], secret=SECRET)
    try:
        queued = await d.emit("session.started", {"session_id": "s1", "room": "r"})
        assert len(queued) == 1  # only the subscribed hook
        assert await d.emit("chat.message", {}) == []  # not a webhook event
        assert await d.run_once() == 1
        assert len(receiver.got) == 1 and receiver.got[0]["valid"]
        first = (await store.webhooks.deliveries(webhook_id=hook.id))[0]
        assert first.attempts == 1 and first.last_error == "HTTP 500" and first.delivered_at is None
        assert first.next_attempt_at == clock.now + 10
        assert await d.run_once() == 0  # not due yet
        clock.now += 10
        assert await d.run_once() == 1
        assert len(receiver.got) == 2
        done = (await store.webhooks.deliveries(webhook_id=hook.id))[0]
        assert done.delivered_at == clock.now and done.attempts == 2 and done.next_attempt_at is None
        got = receiver.got[1]
        assert got["valid"]
        assert got["headers"]["X-Stoa-Event"] == "session.started"
        assert got["headers"]["X-Stoa-Delivery"] == done.id
        assert got["headers"]["X-Stoa-Signature"] == sign(SECRET, got["headers"]["X-Stoa-Timestamp"], got["body"])
        payload = json.loads(got["body"])
        assert payload["event"] == "session.started" and payload["data"] == {"session_id": "s1", "room": "r"}
        assert receiver.got[0]["body"] == got["body"]  # a retry sends the same body
    finally:
        await d.stop()


async def test_gives_up_after_max_attempts(store):
    clock = FakeClock(3_000_000.0)
    d = WebhookDispatcher(store, clock=clock, base_delay=1, jitter=0, max_attempts=3, timeout=2)
    # Nothing listens on port 9 of loopback: connection refused.
    hook = await d.add_webhook("http://127.0.0.1:9/none", secret=SECRET)
    try:
        await d.emit("session.ended", {"session_id": "s"})
        delays = []
        for _ in range(3):
            assert await d.run_once() == 1
            rec = (await store.webhooks.deliveries(webhook_id=hook.id))[0]
            delays.append(None if rec.next_attempt_at is None else rec.next_attempt_at - clock.now)
            clock.now += 100
        assert delays == [1, 2, None]  # exponential, then give up
        assert rec.attempts == 3 and rec.delivered_at is None and "Connect" in rec.last_error
        assert await d.run_once() == 0
    finally:
        await d.stop()


async def test_queue_survives_restart(store_url, receiver):
    first = await open_store(store_url, check=False)
    await first.upgrade()
    d1 = WebhookDispatcher(first)
    await d1.add_webhook(receiver.url, secret=SECRET)
    await d1.emit("participant.joined", {"identity": "ann"})
    await d1.stop()
    await first.close()  # "crash" before delivering

    second = await open_store(store_url)
    d2 = WebhookDispatcher(second)
    try:
        assert await d2.run_once() == 1
        assert receiver.got[0]["valid"] and json.loads(receiver.got[0]["body"])["data"] == {"identity": "ann"}
    finally:
        await d2.stop()
        await second.close()


async def test_the_background_loop_retries_on_its_clock(store, receiver):
    """A failed delivery is retried when the dispatcher's clock says it is due, not after real seconds."""
    clock = FakeClock(3_000_000.0)
    receiver.statuses = [500]
    d = WebhookDispatcher(store, clock=clock, base_delay=10, jitter=0)
    await d.add_webhook(receiver.url, secret=SECRET)
    d.start()
    try:
        await d.emit("session.started", {"session_id": "s1", "room": "r"})
        await eventually(lambda: len(receiver.got) == 1, what="the first attempt")
        await eventually(lambda: clock.sleepers, what="the loop waiting on its clock for the retry")
        assert len(receiver.got) == 1
        clock.advance(10)
        await eventually(lambda: len(receiver.got) == 2, what="the retry, 10 s later by the clock")
        assert receiver.got[1]["body"] == receiver.got[0]["body"]
    finally:
        await d.stop()


async def test_background_loop_with_session_service(store, receiver):
    """The dispatcher as a SessionService observer, delivering in the background with real time."""
    d = WebhookDispatcher(store, base_delay=0.05, jitter=0)
    await d.add_webhook(receiver.url, secret=SECRET)
    svc = SessionService(store, observers=[d.emit])
    teach = Actor("teach", instructor=True)
    d.start()
    try:
        rec = await svc.create(teach, {"title": "Hooked"})
        await svc.start(teach, rec.id)
        await svc.joined(rec.id, "ann", name="Ann")
        await svc.left(rec.id, "ann")
        await svc.end(teach, rec.id)
        want = {"session.started", "participant.joined", "participant.left", "session.ended", "attendance.ready"}
        for _ in range(200):
            if {r["headers"]["X-Stoa-Event"] for r in receiver.got} >= want:
                break
            receiver.arrived.clear()
            try:
                await asyncio.wait_for(receiver.arrived.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
        assert {r["headers"]["X-Stoa-Event"] for r in receiver.got} == want
        assert all(r["valid"] for r in receiver.got)
        ready = [json.loads(r["body"]) for r in receiver.got if r["headers"]["X-Stoa-Event"] == "attendance.ready"]
        assert ready[0]["data"]["participants"][0]["identity"] == "ann"
    finally:
        await d.stop()
