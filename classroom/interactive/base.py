"""Pieces shared by the room and its features: the handler registry, the per-message context, roles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from classroom.interactive.envelope import Envelope, ProtocolError
from shared.roles import PARTICIPANT_ROLES, STAFF_ROLES

if TYPE_CHECKING:
    from classroom.interactive.room import InteractiveRoom



class Member(Protocol):
    identity: str
    name: str
    role: str
    can_publish_data: bool

    async def send(self, message: dict) -> None: ...


def is_moderator(member: Any) -> bool:
    return getattr(member, "role", None) in STAFF_ROLES


def may_publish_data(member: Any) -> bool:
    """`member.can_publish_data`, else `member.grants.can_publish_data`, else: anyone but a viewer."""
    if getattr(member, "role", None) not in PARTICIPANT_ROLES or member.role == "viewer":
        return False
    flag = getattr(member, "can_publish_data", None)
    if flag is None:
        flag = getattr(getattr(member, "grants", None), "can_publish_data", None)
    return True if flag is None else bool(flag)


@dataclass(frozen=True)
class Spec:
    type: str
    feature: str | None  # session feature flag that must be on
    bucket: str | None  # rate-limit bucket
    moderator_only: bool = False
    ack: bool = True
    silent_throttle: bool = False  # drop over-limit messages without an error (typing indicators)
    writes: bool = True  # False: no storage transaction needed


def handles(type: str, *, feature: str | None, bucket: str | None, moderator_only: bool = False,
            ack: bool = True, silent_throttle: bool = False, writes: bool = True) -> Callable:
    def deco(fn: Callable) -> Callable:
        fn.__interactive_spec__ = Spec(type, feature, bucket, moderator_only, ack, silent_throttle, writes)
        return fn
    return deco


Render = Callable[[Any], "dict | None"]


class Context:
    """One handled message (or timer firing): who sent it, and what to fan out once it is acknowledged."""

    def __init__(self, room: "InteractiveRoom", member: Any | None, envelope: Envelope | None, now: float):
        self.room = room
        self.member = member
        self.envelope = envelope
        self.now = now
        self.outgoing: list[tuple[Render, Callable[[Any], bool]]] = []

    @property
    def data(self) -> dict:
        return self.envelope.data if self.envelope else {}

    @property
    def identity(self) -> str:
        return self.member.identity

    @property
    def name(self) -> str:
        return getattr(self.member, "name", "") or self.member.identity

    def fanout(self, message: dict | Render, to: Callable[[Any], bool] = lambda m: True) -> None:
        """Queue `message` (or a per-recipient renderer returning a dict or None) for members matching `to`."""
        render = message if callable(message) else (lambda m, _msg=message: _msg)
        self.outgoing.append((render, to))

    def to_moderators(self, message: dict | Render) -> None:
        self.fanout(message, is_moderator)

    def to_identity(self, identity: str, message: dict | Render) -> None:
        self.fanout(message, lambda m: m.identity == identity)


def not_found(what: str, ident: Any) -> ProtocolError:
    return ProtocolError("not_found", f"{what} {ident} does not exist in this session")


class Feature:
    """A group of message handlers with in-memory state mirrored from storage."""

    def __init__(self, room: "InteractiveRoom"):
        self.room = room
        self.repo = room.repo
        self.session_id = room.session_id

    async def load(self) -> None:
        """Rebuild in-memory state from storage (on first use, e.g. after a restart)."""

    def state(self, member: Any) -> dict:
        return {}

    async def close(self) -> None:
        """Called by room.close() after its timers are cancelled."""
