"""Who is calling: a JWT (`Authorization: Bearer <token>`, the media core's token) or an API key and secret
(`Authorization: Basic base64(key:secret)`, server to server, which is admin).

`KeyRing` merges the API keys from the settings with the `api_keys` table; a revoked key (revoked in the
table, also for a key that came from the config file) neither authenticates nor verifies tokens.
`authenticate(request)` returns a `Principal` or raises `Problem(401)`. Shared by every /api/ handler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from classroom.errors import Conflict, NotFound
from classroom.sessions import Actor
from shared.auth import Grants, TokenError, bearer_token, identify, secret_matches, verify_token
from signaling.api.problems import Problem

ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    identity: str
    role: str                  # admin | instructor | moderator | student | viewer (| operator)
    name: str = ""
    room: str | None = None    # the token's room claim ("*" = any); None for API keys
    key: str | None = None     # the API key (admins)
    grants: Grants | None = None

    @property
    def admin(self) -> bool:
        return self.role == ADMIN

    @property
    def actor(self) -> Actor:
        return Actor(identity=self.identity, name=self.name, instructor=self.role == "instructor",
                     admin=self.admin)

    def may_read_room(self, room: str, session=None) -> bool:
        """May read `room`'s data over REST (chat history, whiteboard). `session`: the room's session row, if any.

        Room "*" is not a pass to every room: students and instructors get "*" tokens for their dashboard and
        /ws/notify. So: admins; a token for exactly this room; an operator "*" token (operators review every
        room's recordings, chat included); an instructor "*" token for the rooms of its own sessions. Nobody
        else, whatever the room claim."""
        if self.admin:
            return True
        if room != "*" and self.room == room:
            return True
        if self.room != "*":
            return False
        if self.role == "operator":
            return True
        return (self.role == "instructor" and session is not None and session.room == room
                and session.instructor == self.identity)


class KeyRing:
    """API keys: settings (`api_key`/`api_secret`, `api_keys`) plus the `api_keys` table, minus revoked."""

    def __init__(self, settings, store, *, clock=time.time):
        self.settings = settings
        self.store = store
        self.clock = clock

    async def active(self) -> dict[str, str]:
        keys = dict(self.settings.all_api_keys())
        for row in await self.store.api_keys.list():
            if row["revoked_at"] is not None:
                keys.pop(row["key"], None)
        keys.update(await self.store.api_keys.active())
        return keys

    async def list(self) -> list[dict]:
        rows = {r["key"]: {**r, "source": "database"} for r in await self.store.api_keys.list()}
        for key in self.settings.all_api_keys():
            if key in rows:
                rows[key]["source"] = "config"
            else:
                rows[key] = {"key": key, "created_at": None, "revoked_at": None, "source": "config"}
        return sorted(rows.values(), key=lambda r: (r["created_at"] or 0, r["key"]))

    async def create(self, key: str | None = None) -> tuple[str, str]:
        import sqlalchemy as sa

        if key is not None and key in self.settings.all_api_keys():
            raise Conflict(f"API key {key!r} exists in the configuration")
        try:
            return await self.store.api_keys.create(now=self.clock(), key=key)
        except sa.exc.IntegrityError:
            raise Conflict(f"API key {key!r} exists already") from None

    async def revoke(self, key: str) -> None:
        import sqlalchemy as sa

        if key == self.settings.api_key:
            raise Conflict(f"API key {key!r} signs the tokens this server mints; replace it in the "
                           "configuration instead of revoking it")
        if await self.store.api_keys.revoke(key, now=self.clock()):
            return
        config = self.settings.all_api_keys()
        known = {r["key"]: r for r in await self.store.api_keys.list()}
        if key in known:
            raise Conflict(f"API key {key!r} is already revoked")
        if key not in config:
            raise NotFound(f"API key {key!r} does not exist")
        # A config-file key: a revoked row in the table masks it.
        try:
            await self.store.api_keys.create(now=self.clock(), key=key, secret=config[key])
        except sa.exc.IntegrityError:
            pass
        await self.store.api_keys.revoke(key, now=self.clock())

    async def check_secret(self, key: str, secret: str) -> bool:
        return secret_matches(await self.active(), key, secret)

    async def verify(self, token: str, *, room: str | None = None) -> Grants:
        return verify_token(token, await self.active(), room=room)


def _unauthorized(detail: str, *, token_offered: bool = False) -> Problem:
    # A bad token gets a Bearer challenge only: a Basic one would make a browser page's fetch or <video>
    # (the room page, the review player, ?token= links) pop up a login dialog.
    challenge = ('Bearer realm="stoa", error="invalid_token"' if token_offered
                 else 'Bearer realm="stoa", Basic realm="stoa"')
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


async def authenticate(request: web.Request, keyring: KeyRing, *, allow_query_token: bool = False) -> Principal:
    """The caller, from the Authorization header (or ?token= when allowed); Problem(401) otherwise."""
    header = request.headers.get("Authorization", "")
    query_token = request.query.get("token", "") if allow_query_token else None
    try:
        caller = identify(header, await keyring.active(), query_token=query_token)
    except TokenError as exc:
        raise _unauthorized(exc.reason, token_offered=bool(bearer_token(header) or query_token)) from None
    if caller.key is not None:
        return Principal(identity=f"apikey:{caller.key}", role=ADMIN, name=caller.key, key=caller.key)
    grants = caller.grants
    return Principal(identity=grants.identity, role=grants.role, name=grants.name, room=grants.room,
                     grants=grants)


def join_link(settings, room: str, identity: str, role: str, *, name: str = "", ttl: int = 6 * 3600,
              can_publish: bool | None = None) -> dict:
    """A token for `room` and the room page URL that uses it: {"room", "identity", "role", "token", "url"}."""
    from urllib.parse import quote

    from shared.auth import mint_token

    token = mint_token(settings.api_key, settings.api_secret, room=room, identity=identity, role=role,
                       name=name, ttl=ttl, can_publish=can_publish)
    return {"room": room, "identity": identity, "role": role, "token": token,
            "url": f"/rooms/{quote(room)}?token={token}"}
