"""Webhook endpoints and their delivery queue (kept in the database so deliveries survive a restart)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from storage import schema as t

if TYPE_CHECKING:
    from storage.store import Store


@dataclass
class WebhookRecord:
    id: str
    url: str
    secret: str
    events: list[str]
    created_at: float
    active: bool

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("secret")
        return data


@dataclass
class DeliveryRecord:
    id: str
    webhook_id: str
    event: str
    body: str
    attempts: int
    next_attempt_at: float | None
    delivered_at: float | None
    last_error: str | None
    created_at: float


class WebhookRepo:
    def __init__(self, store: "Store"):
        self.store = store

    async def add(self, *, url: str, secret: str, events: list[str], now: float) -> WebhookRecord:
        rec = WebhookRecord(id=t.new_id(), url=url, secret=secret, events=list(events), created_at=now,
                            active=True)
        async with self.store.transaction() as conn:
            await conn.execute(t.webhooks.insert().values(**asdict(rec)))
        return rec

    async def get(self, webhook_id: str) -> WebhookRecord | None:
        async with self.store.read() as conn:
            row = (await conn.execute(t.webhooks.select().where(t.webhooks.c.id == webhook_id))).first()
        return None if row is None else WebhookRecord(**row._mapping)

    async def list(self, *, active_only: bool = False) -> list[WebhookRecord]:
        q = t.webhooks.select().order_by(t.webhooks.c.created_at, t.webhooks.c.id)
        if active_only:
            q = q.where(t.webhooks.c.active.is_(True))
        async with self.store.read() as conn:
            return [WebhookRecord(**r._mapping) for r in await conn.execute(q)]

    async def set_active(self, webhook_id: str, active: bool) -> bool:
        async with self.store.transaction() as conn:
            res = await conn.execute(t.webhooks.update().where(t.webhooks.c.id == webhook_id)
                                     .values(active=active))
        return res.rowcount == 1

    async def delete(self, webhook_id: str) -> bool:
        async with self.store.transaction() as conn:
            res = await conn.execute(t.webhooks.delete().where(t.webhooks.c.id == webhook_id))
        return res.rowcount == 1

    async def enqueue(self, event: str, body: str, *, now: float) -> list[DeliveryRecord]:
        """One delivery per active webhook subscribed to `event` (or to "*"), due now."""
        out = []
        async with self.store.transaction() as conn:
            hooks = await conn.execute(t.webhooks.select().where(t.webhooks.c.active.is_(True)))
            for hook in hooks.all():
                if event not in hook.events and "*" not in hook.events:
                    continue
                rec = DeliveryRecord(id=t.new_id(), webhook_id=hook.id, event=event, body=body, attempts=0,
                                     next_attempt_at=now, delivered_at=None, last_error=None, created_at=now)
                await conn.execute(t.webhook_deliveries.insert().values(**asdict(rec)))
                out.append(rec)
        return out

    async def claim_due(self, *, now: float, lease_s: float, limit: int = 50) -> list[DeliveryRecord]:
        """Deliveries due at `now`, each claimed for lease_s seconds by moving next_attempt_at forward with a
        compare-and-set, so two dispatchers (nodes) never send the same attempt."""
        d = t.webhook_deliveries.c
        claimed = []
        async with self.store.transaction() as conn:
            rows = (await conn.execute(t.webhook_deliveries.select().where(
                d.delivered_at.is_(None), d.next_attempt_at.is_not(None), d.next_attempt_at <= now)
                .order_by(d.next_attempt_at, d.id).limit(limit))).all()
            for row in rows:
                res = await conn.execute(t.webhook_deliveries.update().where(
                    d.id == row.id, d.next_attempt_at == row.next_attempt_at, d.delivered_at.is_(None))
                    .values(next_attempt_at=now + lease_s))
                if res.rowcount == 1:
                    claimed.append(DeliveryRecord(**row._mapping))
        return claimed

    async def mark_delivered(self, delivery_id: str, *, now: float) -> None:
        d = t.webhook_deliveries.c
        async with self.store.transaction() as conn:
            await conn.execute(t.webhook_deliveries.update().where(d.id == delivery_id).values(
                delivered_at=now, next_attempt_at=None, attempts=d.attempts + 1, last_error=None))

    async def mark_failed(self, delivery_id: str, *, error: str, next_attempt_at: float | None) -> None:
        """Record a failed attempt; next_attempt_at None means give up."""
        d = t.webhook_deliveries.c
        async with self.store.transaction() as conn:
            await conn.execute(t.webhook_deliveries.update().where(d.id == delivery_id).values(
                attempts=d.attempts + 1, last_error=error[:2000], next_attempt_at=next_attempt_at))

    async def deliveries(self, *, webhook_id: str | None = None, limit: int = 200) -> list[DeliveryRecord]:
        d = t.webhook_deliveries.c
        q = t.webhook_deliveries.select()
        if webhook_id is not None:
            q = q.where(d.webhook_id == webhook_id)
        async with self.store.read() as conn:
            rows = await conn.execute(q.order_by(d.created_at, d.id).limit(limit))
            return [DeliveryRecord(**r._mapping) for r in rows]

    async def next_due_at(self) -> float | None:
        d = t.webhook_deliveries.c
        async with self.store.read() as conn:
            return (await conn.execute(sa.select(sa.func.min(d.next_attempt_at)).where(
                d.delivered_at.is_(None), d.next_attempt_at.is_not(None)))).scalar()
