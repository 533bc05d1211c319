"""API keys stored in the database (in addition to the ones in the config file)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import sqlalchemy as sa

from storage import schema as t

if TYPE_CHECKING:
    from storage.store import Store


class ApiKeyRepo:
    def __init__(self, store: "Store"):
        self.store = store

    async def create(self, *, now: float, key: str | None = None, secret: str | None = None) -> tuple[str, str]:
        key = key or "key_" + secrets.token_hex(8)
        secret = secret or secrets.token_urlsafe(32)
        async with self.store.transaction() as conn:
            await conn.execute(t.api_keys.insert().values(key=key, secret=secret, created_at=now))
        return key, secret

    async def active(self) -> dict[str, str]:
        """{key: secret} of keys not revoked (what shared.auth.verify_token takes)."""
        async with self.store.read() as conn:
            rows = await conn.execute(sa.select(t.api_keys.c.key, t.api_keys.c.secret)
                                      .where(t.api_keys.c.revoked_at.is_(None)))
            return {r.key: r.secret for r in rows}

    async def list(self) -> list[dict]:
        """Keys with their dates, without secrets."""
        async with self.store.read() as conn:
            rows = await conn.execute(sa.select(t.api_keys.c.key, t.api_keys.c.created_at,
                                                t.api_keys.c.revoked_at).order_by(t.api_keys.c.created_at))
            return [dict(r._mapping) for r in rows]

    async def revoke(self, key: str, *, now: float) -> bool:
        async with self.store.transaction() as conn:
            res = await conn.execute(t.api_keys.update().where(
                t.api_keys.c.key == key, t.api_keys.c.revoked_at.is_(None)).values(revoked_at=now))
        return res.rowcount == 1
