"""Tutoring requests over a real Store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from classroom.errors import Conflict, InvalidInput, InvalidTransition, NotFound, PermissionDenied, SessionFull
from classroom.sessions import Actor, SessionService
from classroom.tutoring import TutoringService
from tests.fixtures.clock import FakeClock

T0 = 2_000_000.0


ANN = Actor("ann", name="Ann")
BOB = Actor("bob", name="Bob")
PROF = Actor("prof", instructor=True)
PROF2 = Actor("prof2", instructor=True)


@pytest.fixture
def clock():
    return FakeClock(T0)


@pytest.fixture
def heard():
    return []


@pytest.fixture
def tut(store, clock, heard):
    sessions = SessionService(store, clock=clock)
    return TutoringService(store, sessions, clock=clock, ttl_s=600,
                           observers=[lambda e, d: heard.append((e, d))])


async def test_request_accept_end(tut, clock, heard):
    req = await tut.request(ANN, {"course_ref": "MATH101", "lesson_ref": "L3", "note": "integrals"})
    assert req.status == "pending" and req.expires_at == T0 + 600 and req.student_name == "Ann"
    with pytest.raises(Conflict, match="already have an open tutoring request"):
        await tut.request(ANN)
    with pytest.raises(PermissionDenied, match="only instructors may accept"):
        await tut.accept(BOB, req.id)
    with pytest.raises(PermissionDenied, match="only instructors may accept"):
        await tut.accept(ANN, req.id)  # not even your own
    clock.now += 30
    accepted, session = await tut.accept(PROF, req.id)
    assert accepted.status == "accepted" and accepted.instructor == "prof" and accepted.accepted_at == T0 + 30
    assert session.type == "tutoring" and session.status == "live" and session.room.startswith("tutoring-")
    assert session.instructor == "prof" and accepted.session_id == session.id
    assert await tut.room_for(ANN, req.id) == session.room
    # Only the student (and staff) get into the tutoring room.
    svc = tut.sessions
    assert (await svc.admit(session.id, "ann")).counted
    await svc.admit(session.id, "prof", "instructor")
    with pytest.raises(PermissionDenied, match="only for the student"):
        await svc.admit(session.id, "bob")
    with pytest.raises(InvalidTransition, match="not pending"):
        await tut.accept(PROF2, req.id)
    with pytest.raises(PermissionDenied, match="only the student or the instructor"):
        await tut.end(BOB, req.id)
    with pytest.raises(PermissionDenied):
        await tut.end(PROF2, req.id)
    clock.now += 1200
    ended = await tut.end(ANN, req.id)
    assert ended.status == "ended" and ended.duration_s == 1200 and ended.ended_by == "ann"
    assert (await svc.get(session.id)).status == "ended"
    with pytest.raises(InvalidTransition, match="only an accepted request can be ended"):
        await tut.end(PROF, req.id)
    events = [e for e, _ in heard]
    assert events == ["tutoring.requested", "tutoring.accepted", "tutoring.ended"]
    assert heard[1][1]["room"] == session.room
    # A new request is allowed once the old one has ended.
    await tut.request(ANN)


async def test_instructor_can_end(tut, clock):
    req = await tut.request(ANN)
    _, session = await tut.accept(PROF, req.id)
    clock.now += 90
    ended = await tut.end(PROF, req.id)
    assert ended.duration_s == 90 and ended.ended_by == "prof"


async def test_reject_and_cancel(tut):
    req = await tut.request(ANN)
    with pytest.raises(PermissionDenied, match="only instructors may reject"):
        await tut.reject(ANN, req.id, "no")
    rej = await tut.reject(PROF, req.id, "busy until 3pm")
    assert rej.status == "rejected" and rej.reason == "busy until 3pm"
    with pytest.raises(InvalidTransition):
        await tut.accept(PROF, req.id)
    req2 = await tut.request(ANN)
    with pytest.raises(PermissionDenied, match="only the student who asked may cancel"):
        await tut.cancel(BOB, req2.id)
    assert (await tut.cancel(ANN, req2.id)).status == "cancelled"
    with pytest.raises(NotFound):
        await tut.cancel(ANN, "nope")
    with pytest.raises(InvalidInput, match="note"):
        await tut.request(ANN, {"note": 5})


async def test_expiry(tut, clock, heard):
    req = await tut.request(ANN)
    other = await tut.request(BOB)
    assert await tut.expire_due(T0 + 599) == []
    clock.now = T0 + 600
    expired = await tut.expire_due()
    assert sorted(r.id for r in expired) == sorted([req.id, other.id])
    assert (await tut.get(ANN, req.id)).status == "expired"
    assert await tut.expire_due() == []
    # Accepting a request whose TTL has passed fails and marks it expired, even before expire_due runs.
    late = await tut.request(Actor("carl"))
    clock.now += 601
    with pytest.raises(InvalidTransition, match="expired"):
        await tut.accept(PROF, late.id)
    assert [e for e, _ in heard].count("tutoring.expired") == 3
    # An expired request no longer blocks a new one.
    await tut.request(ANN)


async def test_racing_instructors_one_wins(tut):
    req = await tut.request(ANN)
    results = await asyncio.gather(tut.accept(PROF, req.id), tut.accept(PROF2, req.id), return_exceptions=True)
    wins = [r for r in results if not isinstance(r, Exception)]
    assert len(wins) == 1, results
    assert all(isinstance(r, InvalidTransition) for r in results if isinstance(r, Exception))
    tutoring_sessions = await tut.store.sessions.list(type="tutoring")
    assert len(tutoring_sessions) == 1  # the loser's session was rolled back


async def test_dashboards(tut, clock):
    a1 = await tut.request(ANN, {"course_ref": "C1"})
    await tut.accept(PROF, a1.id)
    await tut.end(ANN, a1.id)
    a2 = await tut.request(ANN, {"course_ref": "C2"})
    await tut.reject(PROF2, a2.id, "no")
    clock.now += 1
    await tut.request(ANN, {"course_ref": "C3"})
    b1 = await tut.request(BOB)
    clock.now += 1
    carl = await tut.request(Actor("carl"))
    _, s = await tut.accept(PROF, b1.id)

    sv = await tut.student_view(ANN)
    assert sv["counts"] == {"pending": 1, "active": 0, "completed": 1, "closed": 1}
    assert sv["pending"][0]["course_ref"] == "C3"
    bv = await tut.student_view(BOB)
    assert bv["counts"]["active"] == 1 and bv["active"][0]["room"] == s.room

    iv = await tut.instructor_view(PROF)
    assert [r["course_ref"] for r in iv["pending"]] == ["C3", None]  # oldest first
    assert iv["pending"][1]["id"] == carl.id
    assert iv["counts"] == {"pending": 2, "active": 1, "completed": 1}
    assert iv["active"][0]["room"] == s.room
    with pytest.raises(PermissionDenied):
        await tut.instructor_view(ANN)
    with pytest.raises(PermissionDenied, match="belongs to someone else"):
        await tut.get(BOB, a1.id)
