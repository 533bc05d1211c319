"""InteractiveRoom: the transport-agnostic, server-authoritative handler for one session's room messages.

Order for every inbound message: validate -> role and feature flags -> rate limits -> persist -> ack to the
sender -> fan out. Mutations and state snapshots run under one lock, so a member that joins with `join()`
gets a state snapshot followed by exactly the changes after it. Each member has its own outbox and writer
task: a slow or failing `send` never blocks the room or other members.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from classroom.interactive.base import Context, Feature, Spec, is_moderator, may_publish_data
from classroom.interactive.envelope import (PROTOCOL_VERSION, Envelope, Outgoing, ProtocolError, error_message,
                                           parse_message)
from classroom.interactive.limits import DEFAULT_RATES, Rate, RateLimiter
from shared.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("stoa.interactive")

FEATURE_FLAGS = ("chat", "qa", "polls", "whiteboard", "quiz", "hands", "reactions")


@dataclass
class _Conn:
    member: Any
    queue: asyncio.Queue
    task: asyncio.Task | None = None
    dropped: int = 0
    failures: int = 0
    busy: bool = False  # the writer holds a message it has not finished sending
    attached_at: float = 0.0


@dataclass
class RoomOptions:
    rates: dict[str, Rate] = field(default_factory=lambda: dict(DEFAULT_RATES))
    outbox_limit: int = 2000
    chat_history: int = 100
    quiz_duration_s: int = 30
    poll_results_interval_s: float = 0.25  # live poll results are sent at most this often (0: every vote)
    quiz_bank: str | None = None  # None: all imported questions
    send_timeout_s: float = 10.0


def as_repository(store: Any) -> Any:
    if hasattr(store, "add_chat"):
        return store
    from storage.interactive import InteractiveRepository

    return InteractiveRepository(store)


class InteractiveRoom:
    def __init__(self, store: Any, session_id: Any, room_name: str, features: dict | None = None,
                 clock: Clock = SYSTEM_CLOCK, *, options: RoomOptions | None = None,
                 rng: random.Random | None = None):
        self.repo = as_repository(store)
        self.session_id = session_id
        self.room_name = room_name
        self.features = {name: True for name in FEATURE_FLAGS}
        # Session features may carry other flags (recording, ...): keep only the ones this layer knows.
        self.features.update({k: bool(v) for k, v in (features or {}).items() if k in FEATURE_FLAGS})
        # Anonymous questions are anonymous to the instructor and moderators too (not only to classmates).
        self.anonymous_to_staff = bool((features or {}).get("qa_anonymous_to_staff"))
        self.clock = clock
        self.options = options or RoomOptions()
        self.rng = rng or random.Random()
        self.limiter = RateLimiter(self.options.rates, clock)
        self._conns: dict[int, _Conn] = {}
        self._lock = asyncio.Lock()
        self._loaded = False
        self._closed = False
        self._timers: dict[Any, asyncio.Task] = {}

        from classroom.interactive.chat import Chat
        from classroom.interactive.hands import Hands
        from classroom.interactive.polls import Polls
        from classroom.interactive.qa import QA
        from classroom.interactive.quiz import Quiz
        from classroom.interactive.whiteboard import Whiteboard

        self.chat = Chat(self)
        self.qa = QA(self)
        self.polls = Polls(self)
        self.whiteboard = Whiteboard(self)
        self.quiz = Quiz(self)
        self.hands = Hands(self)
        self._features: list[Feature] = [self.chat, self.qa, self.polls, self.whiteboard, self.quiz, self.hands]
        self._handlers: dict[str, tuple[Spec, Callable[[Context], Awaitable[dict]]]] = {}
        for feature in self._features:
            for attr in dir(type(feature)):
                spec = getattr(getattr(type(feature), attr), "__interactive_spec__", None)
                if spec is not None:
                    self._handlers[spec.type] = (spec, getattr(feature, attr))

    # ---- members -------------------------------------------------------------------------------------------
    @property
    def members(self) -> list[Any]:
        return [c.member for c in self._conns.values()]

    def attach(self, member: Any) -> None:
        """Start delivering room messages to `member`. Prefer `join()`, which also queues the state first."""
        if self._closed:
            raise RuntimeError("room is closed")
        key = id(member)
        if key in self._conns:
            return
        conn = _Conn(member, asyncio.Queue(self.options.outbox_limit), attached_at=self.clock())
        conn.task = asyncio.get_running_loop().create_task(self._writer(conn), name=f"stoa-outbox-{member.identity}",
                                                           context=contextvars.Context())
        self._conns[key] = conn

    def detach(self, member: Any) -> None:
        conn = self._conns.pop(id(member), None)
        if conn is not None and conn.task is not None:
            conn.task.cancel()

    async def join(self, member: Any) -> dict:
        """Attach `member` and queue `{"type": "state", "data": state_for(member)}` as its first message."""
        async with self._lock:
            await self._ensure_loaded()
            self.attach(member)
            state = self._state(member)
            self._enqueue(self._conns[id(member)], {"v": PROTOCOL_VERSION, "type": "state", "data": state})
            return state

    async def state_for(self, member: Any) -> dict:
        async with self._lock:
            await self._ensure_loaded()
            return self._state(member)

    def _state(self, member: Any) -> dict:
        state: dict[str, Any] = {
            "session_id": self.session_id,
            "room": self.room_name,
            "you": {"identity": member.identity, "name": getattr(member, "name", ""), "role": member.role},
            "features": dict(self.features),
            "server_time": self.clock(),
        }
        for feature in self._features:
            state.update(feature.state(member))
        return state

    def connected_identities(self, role: str | None = None) -> dict[str, Any]:
        """identity -> one connected member object (the first attached), optionally filtered by role."""
        out: dict[str, Any] = {}
        for conn in self._conns.values():
            m = conn.member
            if (role is None or m.role == role) and m.identity not in out:
                out[m.identity] = m
        return out

    # ---- inbound -------------------------------------------------------------------------------------------
    async def handle(self, member: Any, raw: Any) -> None:
        """Handle one inbound message from `member`. Never raises; refusals go back to the sender."""
        msg_id = None
        try:
            if isinstance(raw, Envelope):  # built by a transport: still validated like any input
                raw = {"v": raw.v, "type": raw.type, "data": raw.data, **({"id": raw.id} if raw.id else {})}
            envelope = parse_message(raw)
            msg_id = envelope.id
            entry = self._handlers.get(envelope.type)
            if entry is None:
                raise ProtocolError("unknown_type", f"unknown message type {envelope.type!r}")
            spec, handler = entry
            self._authorize(member, spec)
            if spec.bucket and not self.limiter.allow(member.identity, spec.bucket):
                if spec.silent_throttle:
                    return
                raise ProtocolError("rate_limited", f"too many {spec.bucket} messages; slow down")
            async with self._lock:
                if self._closed:
                    raise ProtocolError("conflict", "the room is closed")
                await self._ensure_loaded()
                ctx = Context(self, member, envelope, self.clock())
                ack = await (self._in_transaction(handler, ctx) if spec.writes else handler(ctx))
                if spec.ack:
                    self.send_to(member, {"v": PROTOCOL_VERSION, "type": "ack", "id": msg_id, "data": ack or {}})
                self._deliver(ctx)
        except ProtocolError as exc:
            self.send_to(member, error_message(exc.code, exc.message, exc.msg_id or msg_id))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("interactive room %s: handling a message from %s failed", self.room_name,
                          getattr(member, "identity", "?"))
            self.send_to(member, error_message("internal", "the server failed to handle this message", msg_id))

    def _authorize(self, member: Any, spec: Spec) -> None:
        if not may_publish_data(member):
            raise ProtocolError("forbidden", f"{spec.type}: this participant may not send room messages")
        if spec.moderator_only and not is_moderator(member):
            raise ProtocolError("forbidden", f"{spec.type} requires the instructor or moderator role")
        if spec.feature and not self.features.get(spec.feature, False):
            raise ProtocolError("feature_disabled", f"{spec.type}: {spec.feature} is disabled in this session")

    # ---- outbound ------------------------------------------------------------------------------------------
    def send_to(self, member: Any, message: dict) -> None:
        conn = self._conns.get(id(member))
        if conn is not None:
            self._enqueue(conn, message)
        else:
            # Not attached (e.g. the transport calls handle() before join()): deliver directly, best effort.
            task = asyncio.get_running_loop().create_task(self._send_direct(member, message))
            self._timers[("direct", id(task))] = task
            task.add_done_callback(lambda t, k=("direct", id(task)): self._timers.pop(k, None))

    async def _send_direct(self, member: Any, message: dict) -> None:
        try:
            await asyncio.wait_for(member.send(message), self.options.send_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("send to unattached member failed", exc_info=True)

    def _deliver(self, ctx: Context) -> None:
        for render, to in ctx.outgoing:
            # A message rendered once for everyone is wrapped once. The entry keeps the rendered dict alive,
            # so its id() cannot be reused by another recipient's message.
            shared: dict[int, tuple[dict, dict]] = {}
            for conn in list(self._conns.values()):
                try:
                    if not to(conn.member):
                        continue
                    message = render(conn.member)
                except Exception:
                    log.exception("rendering a message for %s failed", getattr(conn.member, "identity", "?"))
                    continue
                if message is not None:
                    entry = shared.get(id(message))
                    if entry is None:
                        entry = shared[id(message)] = (message, Outgoing({"v": PROTOCOL_VERSION, **message}))
                    self._enqueue(conn, entry[1])

    def _enqueue(self, conn: _Conn, message: dict) -> None:
        # The fan-out hot path: a member whose outbox is idle and whose transport can take the message
        # synchronously (an open data channel) gets it now, without waking its writer task.
        if not conn.busy and conn.queue.empty():
            send_now = getattr(conn.member, "send_now", None)
            if send_now is not None:
                try:
                    if send_now(message):
                        return
                except Exception:
                    conn.failures += 1
                    log.debug("send to %s failed", conn.member.identity, exc_info=True)
                    return
        try:
            conn.queue.put_nowait(message)
        except asyncio.QueueFull:
            conn.dropped += 1
            if conn.dropped == 1:
                log.warning("outbox of %s is full; dropping messages", conn.member.identity)

    async def _writer(self, conn: _Conn) -> None:
        while True:
            message = await conn.queue.get()
            conn.busy = True
            try:
                # asyncio.timeout, not wait_for: no extra task per message (this is the fan-out hot path)
                async with asyncio.timeout(self.options.send_timeout_s):
                    await conn.member.send(message)
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
                conn.failures += 1
            except Exception:
                conn.failures += 1
                log.debug("send to %s failed", conn.member.identity, exc_info=True)
            finally:
                conn.busy = False
                conn.queue.task_done()

    def outbox_stats(self, member: Any) -> dict | None:
        conn = self._conns.get(id(member))
        if conn is None:
            return None
        return {"queued": conn.queue.qsize(), "dropped": conn.dropped, "failures": conn.failures}

    async def flush(self) -> None:
        """Wait until every attached member's outbox has been handed to its `send`."""
        await asyncio.gather(*(c.queue.join() for c in list(self._conns.values())))

    # ---- server-side actions -------------------------------------------------------------------------------
    async def system_message(self, text: str) -> dict:
        """Store and fan out a system chat message (joins, leaves); returns it as sent."""
        async with self._lock:
            await self._ensure_loaded()
            ctx = Context(self, None, None, self.clock())
            message = await self.chat.add_system(ctx, text)
            self._deliver(ctx)
            return message

    async def run_server_action(self, action: Callable[[Context], Awaitable[Any]]) -> Any:
        """Run `action(ctx)` under the room lock and deliver what it fans out (timers use this)."""
        async with self._lock:
            if self._closed:
                return None
            await self._ensure_loaded()
            ctx = Context(self, None, None, self.clock())
            result = await self._in_transaction(action, ctx)
            self._deliver(ctx)
            return result

    def schedule(self, key: Any, delay: float, action: Callable[[Context], Awaitable[Any]]) -> None:
        """Run `action` under the lock after `delay` seconds of the room's clock (replacing a timer with the
        same key): the clock the rules read is the one the timer sleeps on."""
        self.cancel_timer(key)

        async def fire() -> None:
            await self.clock.sleep(max(0.0, delay))
            self._timers.pop(key, None)
            try:
                await self.run_server_action(action)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("interactive timer %r failed", key)

        # A fresh context: the caller may be inside a storage transaction, whose connection a copied context
        # would carry into the timer after it is closed.
        self._timers[key] = asyncio.get_running_loop().create_task(fire(), name=f"stoa-timer-{key}",
                                                                   context=contextvars.Context())

    def schedule_once(self, key: Any, delay: float, action: Callable[[Context], Awaitable[Any]]) -> None:
        """Like schedule(), but keep an already pending timer with the same key."""
        task = self._timers.get(key)
        if task is None or task.done():
            self.schedule(key, delay, action)

    def cancel_timer(self, key: Any) -> None:
        task = self._timers.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def record(self, ctx: Context, event: str | None, data: dict, counters: dict[str, int] | None = None,
                     identity: str | None = None, anonymous: bool = False) -> None:
        """Append a session_events row and bump the actor's engagement counters (`anonymous`: no actor)."""
        who = identity if identity is not None else (ctx.member.identity if ctx.member is not None else None)
        if anonymous:
            who = None
        if event:
            await self.repo.add_event(self.session_id, event, identity=who, data=data, at=ctx.now)
        if counters and who is not None:
            name = ctx.name if ctx.member is not None and ctx.member.identity == who else ""
            await self.repo.bump_engagement(self.session_id, who, counters, name=name, at=ctx.now)

    async def _in_transaction(self, fn: Callable[[Context], Awaitable[Any]], ctx: Context) -> Any:
        """Run a handler's writes as one transaction: it commits before the ack goes out. If it fails for
        any reason other than a refusal, in-memory state may be ahead of storage: reload it next time."""
        begin = getattr(self.repo, "transaction", None)
        try:
            if begin is None:
                return await fn(ctx)
            async with begin():
                return await fn(ctx)
        except ProtocolError:
            raise
        except BaseException:
            self._loaded = False
            raise

    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        for feature in self._features:
            await feature.load()
        self._loaded = True

    async def close(self, drain_s: float = 0.5) -> None:
        """Stop taking messages, give outboxes up to `drain_s` to empty, then cancel timers and writers."""
        if self._closed:
            return
        async with self._lock:
            self._closed = True
        if drain_s > 0 and self._conns:
            try:
                async with asyncio.timeout(drain_s):
                    await self.flush()
            except TimeoutError:
                pass
        tasks = list(self._timers.values()) + [c.task for c in self._conns.values() if c.task is not None]
        self._timers.clear()
        self._conns.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for feature in self._features:
            await feature.close()

    @property
    def closed(self) -> bool:
        return self._closed
