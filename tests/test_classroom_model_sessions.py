"""Session model over a real Store (SQLite and PostgreSQL): transitions, admission, presence, moderation."""

from __future__ import annotations

import asyncio

import pytest

from classroom.errors import (Banned, BadPassword, Conflict, InvalidInput, InvalidTransition, NotFound,
                              PermissionDenied, SessionClosed, SessionFull)
from classroom.sessions import Actor, SessionService, hash_password, verify_password
from tests.fixtures.clock import FakeClock


TEACH = Actor("teach", instructor=True)
ADMIN = Actor("root", admin=True)
STUDENT = Actor("stu")


@pytest.fixture
def clock():
    return FakeClock(1_000_000.0)


@pytest.fixture
def events():
    return []


@pytest.fixture
def svc(store, clock, events):
    async def observer(event, data):
        events.append((event, data))
    return SessionService(store, clock=clock, observers=[observer, lambda e, d: 1 / 0])  # 2nd always fails


async def test_create_validates_and_defaults(svc):
    rec = await svc.create(TEACH, {"title": "Algebra I", "capacity": 30, "type": "class"})
    assert rec.status == "scheduled" and rec.instructor == "teach" and rec.capacity == 30
    assert rec.room.startswith("algebra-i-")
    assert rec.features["chat"] is True and rec.features["students_may_publish"] is False
    assert "password_hash" not in rec.public() and rec.public()["has_password"] is False
    with pytest.raises(InvalidInput, match="capacity"):
        await svc.create(TEACH, {"title": "x", "capacity": 0})
    with pytest.raises(InvalidInput, match="type"):
        await svc.create(TEACH, {"title": "x", "type": "party"})
    with pytest.raises(InvalidInput, match="Additional properties"):
        await svc.create(TEACH, {"title": "x", "colour": "red"})
    with pytest.raises(InvalidInput, match="scheduled_end must be after scheduled_start"):
        await svc.create(TEACH, {"title": "x", "scheduled_start": 10, "scheduled_end": 5})
    with pytest.raises(PermissionDenied, match="only instructors or admins may create"):
        await svc.create(STUDENT, {"title": "x"})
    with pytest.raises(PermissionDenied, match="another instructor"):
        await svc.create(TEACH, {"title": "x", "instructor": "someone"})
    other = await svc.create(ADMIN, {"title": "x", "instructor": "someone", "room": "fixed-room"})
    assert other.instructor == "someone"
    with pytest.raises(Conflict, match="room 'fixed-room' is already used"):
        await svc.create(ADMIN, {"title": "y", "room": "fixed-room"})


async def test_update(svc):
    rec = await svc.create(TEACH, {"title": "A", "features": {"quiz": False}})
    up = await svc.update(TEACH, rec.id, {"title": "B", "features": {"polls": False}, "password": "pw"})
    assert up.title == "B" and up.features["quiz"] is False and up.features["polls"] is False
    assert up.password_hash and verify_password("pw", up.password_hash)
    with pytest.raises(PermissionDenied):
        await svc.update(STUDENT, rec.id, {"title": "C"})
    with pytest.raises(InvalidInput, match="type"):
        await svc.update(TEACH, rec.id, {"type": "webinar"})
    cleared = await svc.update(TEACH, rec.id, {"password": None})
    assert cleared.password_hash is None


async def test_status_transitions(svc, clock, events):
    rec = await svc.create(TEACH, {"title": "T"})
    with pytest.raises(PermissionDenied, match="only the session's instructor or an admin"):
        await svc.start(STUDENT, rec.id)
    with pytest.raises(InvalidTransition, match="cannot change a scheduled session to ended"):
        await svc.end(TEACH, rec.id)
    clock.advance(5)
    live = await svc.start(TEACH, rec.id)
    assert live.status == "live" and live.actual_start == clock.now
    with pytest.raises(InvalidTransition, match="cannot change a live session to cancelled"):
        await svc.cancel(TEACH, rec.id)
    clock.advance(60)
    ended = await svc.end(ADMIN, rec.id)
    assert ended.status == "ended" and ended.actual_end == clock.now
    with pytest.raises(InvalidTransition, match="cannot change a ended session to live"):
        await svc.start(TEACH, rec.id)
    kinds = [e for e, _ in events]
    assert kinds == ["session.started", "session.ended", "attendance.ready"]
    timeline = [e.type for e in await svc.store.events.list(rec.id)]
    assert timeline == ["session.started", "session.ended"]

    other = await svc.create(TEACH, {"title": "U"})
    assert (await svc.cancel(TEACH, other.id)).status == "cancelled"
    with pytest.raises(InvalidTransition):
        await svc.start(TEACH, other.id)
    with pytest.raises(NotFound):
        await svc.start(TEACH, "nope")
    with pytest.raises(InvalidInput, match="status must be one of"):
        await svc.set_status(TEACH, other.id, "paused")


async def test_admit_rules(svc):
    rec = await svc.create(TEACH, {"title": "T", "capacity": 1, "password": "open sesame"})
    with pytest.raises(BadPassword, match="needs a password"):
        await svc.admit(rec.id, "s1")
    with pytest.raises(BadPassword, match="wrong session password"):
        await svc.admit(rec.id, "s1", "student", "nope")
    a = await svc.admit(rec.id, "s1", "student", "open sesame")
    assert a.counted and not a.already and a.seats_taken == 1
    again = await svc.admit(rec.id, "s1", "student", "open sesame")  # reconnect: idempotent
    assert again.already and again.seats_taken == 1
    with pytest.raises(SessionFull, match="full"):
        await svc.admit(rec.id, "s2", "student", "open sesame")
    # Staff bypass password and capacity.
    t = await svc.admit(rec.id, "teach", "student")
    assert t.role == "instructor" and not t.counted
    await svc.name_moderator(TEACH, rec.id, "mod")
    m = await svc.admit(rec.id, "mod")
    assert m.role == "moderator" and not m.counted
    with pytest.raises(InvalidInput, match="role must be one of"):
        await svc.admit(rec.id, "x", "king")
    with pytest.raises(NotFound):
        await svc.admit("missing", "x")
    await svc.start(TEACH, rec.id)
    await svc.end(TEACH, rec.id)
    with pytest.raises(SessionClosed, match="ended"):
        await svc.admit(rec.id, "s1", "student", "open sesame")


async def test_ban_and_moderation(svc, events):
    rec = await svc.create(TEACH, {"title": "T", "capacity": 2})
    await svc.admit(rec.id, "troll")
    assert await svc.store.sessions.seats_taken(rec.id) == 1
    with pytest.raises(PermissionDenied, match="only the instructor, a moderator or an admin may ban"):
        await svc.ban(STUDENT, rec.id, "troll")
    await svc.name_moderator(TEACH, rec.id, "mod")
    with pytest.raises(PermissionDenied, match="only the session's instructor or an admin may name"):
        await svc.name_moderator(Actor("mod"), rec.id, "mod2")
    assert await svc.moderators(rec.id) == ["mod"]
    await svc.ban(Actor("mod"), rec.id, "troll", "spam")
    assert await svc.store.sessions.seats_taken(rec.id) == 0  # seat released
    with pytest.raises(Banned, match="troll is banned"):
        await svc.admit(rec.id, "troll")
    with pytest.raises(PermissionDenied, match="instructor cannot be banned"):
        await svc.ban(ADMIN, rec.id, "teach")
    with pytest.raises(PermissionDenied, match="only the instructor or an admin may ban a moderator"):
        await svc.ban(Actor("mod"), rec.id, "mod")
    assert ("participant.banned", {"session_id": rec.id, "identity": "troll", "by": "mod",
                                   "reason": "spam"}) in events
    assert await svc.unban(Actor("mod"), rec.id, "troll")
    await svc.admit(rec.id, "troll")
    assert await svc.remove_moderator(TEACH, rec.id, "mod")
    assert await svc.moderators(rec.id) == []
    bans = await svc.store.sessions.bans(rec.id)
    assert bans == []


async def test_capacity_is_race_free(svc):
    """50 concurrent admits against capacity 30 admit exactly 30, on both backends."""
    rec = await svc.create(TEACH, {"title": "Popular", "capacity": 30})
    await svc.start(TEACH, rec.id)
    results = await asyncio.gather(*[svc.admit(rec.id, f"student-{i}") for i in range(50)],
                                   return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, Exception)]
    full = [r for r in results if isinstance(r, SessionFull)]
    others = [r for r in results if isinstance(r, Exception) and not isinstance(r, SessionFull)]
    assert others == []
    assert len(admitted) == 30 and len(full) == 20
    assert await svc.store.sessions.seats_taken(rec.id) == 30
    # Staff still get in.
    await svc.admit(rec.id, "teach")


async def test_concurrent_same_identity_takes_one_seat(svc):
    rec = await svc.create(TEACH, {"title": "P", "capacity": 5})
    results = await asyncio.gather(*[svc.admit(rec.id, "same") for _ in range(10)])
    assert sum(not r.already for r in results) == 1
    assert await svc.store.sessions.seats_taken(rec.id) == 1


async def test_presence_grace_and_tabs(svc, clock, events):
    rec = await svc.create(TEACH, {"title": "T"})
    await svc.start(TEACH, rec.id)
    iv, how = await svc.joined(rec.id, "ann", name="Ann")
    assert how == "new"
    clock.advance(100)
    await svc.left(rec.id, "ann")
    clock.advance(20)  # back within the 30 s grace: same interval
    iv2, how = await svc.joined(rec.id, "ann", name="Ann")
    assert how == "resumed" and iv2.id == iv.id and iv2.left_at is None
    # A second tab, then one tab closes: still present.
    _, how = await svc.joined(rec.id, "ann", name="Ann")
    assert how == "extra"
    clock.advance(10)
    still = await svc.left(rec.id, "ann")
    assert still.left_at is None and still.connections == 1
    assert [p.identity for p in await svc.present(rec.id)] == ["ann"]
    clock.advance(10)
    closed = await svc.left(rec.id, "ann")
    assert closed.left_at == clock.now
    clock.advance(31)  # beyond grace: a new interval
    iv3, how = await svc.joined(rec.id, "ann", name="Ann")
    assert how == "new" and iv3.id != iv.id
    assert len(await svc.store.sessions.intervals(rec.id, "ann")) == 2
    assert await svc.left(rec.id, "nobody") is None
    joined = [d for e, d in events if e == "participant.joined"]
    assert [d["resumed"] for d in joined] == [False, True, False]
    assert len([e for e, _ in events if e == "participant.left"]) == 2  # the drop, then the final leave


async def test_end_closes_presence_and_reports_attendance(svc, clock, events):
    rec = await svc.create(TEACH, {"title": "T"})
    await svc.start(TEACH, rec.id)
    await svc.joined(rec.id, "full", name="Full")
    clock.advance(30)
    await svc.joined(rec.id, "late", name="Late")
    clock.advance(70)  # session lasts 100 s; late was there for 70 %
    await svc.end(TEACH, rec.id)
    assert await svc.present(rec.id) == []
    ready = [d for e, d in events if e == "attendance.ready"][0]
    by = {p["identity"]: p for p in ready["participants"]}
    assert by["full"]["present"] is True and by["full"]["ratio"] == 1.0
    assert by["late"]["present"] is False and by["late"]["ratio"] == 0.7
    assert ready["final"] is True and ready["present_count"] == 1


def test_password_hash_roundtrip():
    h = hash_password("s3cret")
    assert h.startswith("scrypt$") and verify_password("s3cret", h)
    assert not verify_password("S3cret", h)
    assert not verify_password("x", "garbage")
