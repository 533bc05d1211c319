"""ICE servers (STUN and TURN URLs) with the credentials a client or the server itself uses for them.

TURN credentials come either from static settings (`ice_username`, `ice_credential`) or, with a shared
secret, from the TURN REST API scheme that coturn's `use-auth-secret` / `static-auth-secret` implements
(draft-uberti-behave-turn-rest): the username is `<expiry unix time>:<identity>` and the password is
base64(HMAC-SHA1(secret, username)). coturn recomputes the password from the secret and refuses a username
whose expiry has passed, so nothing has to be shared with it per user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class IceServer:
    url: str
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict:
        """RTCIceServer as a browser takes it."""
        out: dict = {"urls": self.url}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


def turn_rest_credentials(secret: str, identity: str, ttl: int, now: float | None = None) -> tuple[str, str]:
    """(username, password) valid for `ttl` seconds from `now`, as coturn's use-auth-secret checks them."""
    expiry = int(now if now is not None else time.time()) + int(ttl)
    username = f"{expiry}:{identity}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(urls: list[str], *, identity: str, username: str = "", credential: str = "",
                turn_secret: str = "", ttl: int = 86400, now: float | None = None) -> list[IceServer]:
    """The configured URLs with credentials for `identity`: STUN URLs carry none; TURN URLs carry REST API
    credentials when a shared secret is set, else the static username and credential (if any)."""
    out = []
    rest = turn_rest_credentials(turn_secret, identity, ttl, now) if turn_secret else None
    for url in urls:
        if not url.startswith(("turn:", "turns:")):
            out.append(IceServer(url))
        elif rest is not None:
            out.append(IceServer(url, *rest))
        else:
            out.append(IceServer(url, username or None, credential or None))
    return out
