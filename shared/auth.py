"""Access tokens: JWTs (HS256) signed with an API secret, carrying room grants; and the one reader of an
`Authorization` header (Basic API key and secret, or Bearer token) for every HTTP route."""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from dataclasses import dataclass, asdict
from typing import Mapping

import jwt

from shared.roles import RECEIVE_ONLY_ROLES, ROLES, STAFF_ROLES

ALGORITHM = "HS256"


class TokenError(Exception):
    """The token cannot be used; `reason` is safe to show to the client. `kind` sorts the reasons a page
    words differently: "expired", "other_room", or "invalid" for the rest."""

    def __init__(self, reason: str, kind: str = "invalid"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class Grants:
    identity: str
    room: str
    role: str
    name: str = ""
    can_publish: bool = False
    can_subscribe: bool = True
    can_publish_data: bool = True
    exp: int = 0

    @property
    def is_moderator(self) -> bool:
        return self.role in STAFF_ROLES


def default_grants(role: str, *, students_may_publish: bool = False) -> dict[str, bool]:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    return {
        "can_publish": role in STAFF_ROLES or (role == "student" and students_may_publish),
        "can_subscribe": True,
        "can_publish_data": role not in RECEIVE_ONLY_ROLES,
    }


def mint_token(
    api_key: str,
    api_secret: str,
    *,
    room: str,
    identity: str,
    role: str,
    name: str = "",
    ttl: int = 6 * 3600,
    can_publish: bool | None = None,
    can_subscribe: bool | None = None,
    can_publish_data: bool | None = None,
    now: float | None = None,
) -> str:
    grants = default_grants(role)
    for key, value in (("can_publish", can_publish), ("can_subscribe", can_subscribe),
                       ("can_publish_data", can_publish_data)):
        if value is not None:
            grants[key] = value
    if role in RECEIVE_ONLY_ROLES and grants["can_publish"]:
        raise ValueError(f"a {role} token cannot carry can_publish")
    if not room or not identity:
        raise ValueError("room and identity are required")
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": api_key,
        "sub": identity,
        "name": name or identity,
        "iat": issued,
        "nbf": issued - 5,
        "exp": issued + int(ttl),
        "room": room,
        "role": role,
        **grants,
    }
    return jwt.encode(claims, api_secret, algorithm=ALGORITHM)


def verify_token(token: str, api_keys: Mapping[str, str], *, room: str | None = None) -> Grants:
    """Check signature, expiry and (when given) the room; raise TokenError naming the problem."""
    if not token:
        raise TokenError("missing token")
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.DecodeError:
        raise TokenError("token is not a valid JWT") from None
    key = unverified.get("iss")
    secret = api_keys.get(key) if isinstance(key, str) else None
    if secret is None:
        raise TokenError("token was issued by an unknown or revoked API key")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM],
            options={"require": ["exp", "sub", "room", "role"]}, leeway=5,
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token has expired", kind="expired") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature is invalid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"token is invalid: {exc}") from None
    if claims["role"] not in ROLES:
        raise TokenError(f"token role {claims['role']!r} is unknown")
    if room is not None and claims["room"] != room:
        raise TokenError(f"token is for room {claims['room']!r}, not {room!r}", kind="other_room")
    if room == "*":  # "*" tokens (dashboards, /ws/notify, operators) are for no room, not for a room named "*"
        raise TokenError("'*' is not a room: a token with room '*' joins no room")
    return Grants(
        identity=str(claims["sub"]),
        room=str(claims["room"]),
        role=claims["role"],
        name=str(claims.get("name") or claims["sub"]),
        can_publish=bool(claims.get("can_publish", False)) and claims["role"] not in RECEIVE_ONLY_ROLES,
        can_subscribe=bool(claims.get("can_subscribe", True)),
        can_publish_data=bool(claims.get("can_publish_data", False)),
        exp=int(claims["exp"]),
    )


def grants_dict(grants: Grants) -> dict:
    return asdict(grants)


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(key, secret) of `Authorization: Basic base64(key:secret)`; None when the header is not Basic.
    TokenError when it is Basic but not base64 of "key:secret" (an unencoded key:secret is refused)."""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "basic" or not value:
        return None
    try:
        key, sep, secret = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise TokenError("Basic credentials are not base64 of key:secret") from None
    if not sep:
        raise TokenError("Basic credentials are not base64 of key:secret")
    return key, secret


def bearer_token(header: str) -> str:
    """The token of `Authorization: Bearer <token>`; "" for any other header."""
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


@dataclass(frozen=True)
class Caller:
    """Who an HTTP request says it is: an API key (Basic credentials: an admin) or an access token's grants."""
    key: str | None = None
    grants: Grants | None = None


def secret_matches(api_keys: Mapping[str, str], key: str, secret: str) -> bool:
    expected = api_keys.get(key)
    return expected is not None and hmac.compare_digest(expected.encode(), secret.encode())


def identify(header: str, api_keys: Mapping[str, str], *, query_token: str | None = None) -> Caller:
    """The caller of an `Authorization` header: Basic base64(key:secret) checked against `api_keys` (the
    active ones), else a Bearer token, else `query_token` (a `?token=` where the route takes one; None where
    it does not). TokenError naming what is missing or wrong. Every HTTP route that takes credentials reads
    them here; each renders the error its own way (problem+json under /api/, an HTML page on pages)."""
    basic = basic_credentials(header)
    if basic is not None:
        key, secret = basic
        if not secret_matches(api_keys, key, secret):
            raise TokenError("unknown or revoked API key, or wrong secret")
        return Caller(key=key)
    token = bearer_token(header) or query_token
    if not token:
        where = ", or ?token=<token>" if query_token is not None else ""
        raise TokenError(f"no credentials: send 'Authorization: Bearer <token>' or 'Authorization: Basic "
                         f"base64(key:secret)'{where}")
    return Caller(grants=verify_token(token, api_keys))
