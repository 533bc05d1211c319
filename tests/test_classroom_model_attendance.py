"""Attendance arithmetic: merging, overlap, clipping, grace, threshold, exports."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import pytest

from classroom.attendance import clip, compute, covered_seconds, merge_intervals
from classroom.sessions import Actor, SessionService
from tests.fixtures.clock import FakeClock

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@dataclass
class Sess:
    id: str = "s"
    room: str = "r"
    title: str = "T"
    status: str = "ended"
    actual_start: float | None = T0
    actual_end: float | None = T0 + 100


@dataclass
class Iv:
    identity: str
    joined_at: float
    left_at: float | None
    name: str = ""
    role: str = "student"


def test_merge_and_clip():
    assert merge_intervals([(5, 10), (0, 3), (2, 4), (10, 12), (20, 20)]) == [(0, 4), (5, 12)]
    assert clip([(-5, 5), (8, 20), (30, 40)], 0, 10) == [(0, 5), (8, 10)]
    assert covered_seconds([(0, 50), (25, 75), (90, 200)], 0, 100) == 85


def by_id(report):
    return {p.identity: p for p in report.participants}


def test_multiple_intervals_sum():
    r = compute(Sess(), [Iv("a", T0, T0 + 40), Iv("a", T0 + 50, T0 + 85)])
    a = by_id(r)["a"]
    assert a.present_s == 75 and a.ratio == 0.75 and a.present is True  # exactly the threshold
    r = compute(Sess(), [Iv("a", T0, T0 + 40), Iv("a", T0 + 50, T0 + 84)])
    assert by_id(r)["a"].present is False


def test_overlapping_intervals_count_once():
    # Two tabs recorded as overlapping intervals: 0-60 and 30-80 cover 80 s, not 110.
    r = compute(Sess(), [Iv("a", T0, T0 + 60), Iv("a", T0 + 30, T0 + 80)])
    assert by_id(r)["a"].present_s == 80 and by_id(r)["a"].ratio == 0.8


def test_clipping_to_actual_session():
    # Joined 30 s early, stayed 30 s after the end: only the 100 s of the session count.
    r = compute(Sess(), [Iv("a", T0 - 30, T0 + 130)])
    a = by_id(r)["a"]
    assert a.present_s == 100 and a.ratio == 1.0
    # Entirely before the session: zero.
    r = compute(Sess(), [Iv("b", T0 - 50, T0 - 10)])
    assert by_id(r)["b"].present_s == 0 and by_id(r)["b"].present is False


def test_open_interval_counts_to_end_and_live_session_uses_now():
    r = compute(Sess(), [Iv("a", T0 + 20, None)])
    assert by_id(r)["a"].present_s == 80
    live = Sess(status="live", actual_end=None)
    r = compute(live, [Iv("a", T0, None)], now=T0 + 40)
    assert r.duration_s == 40 and by_id(r)["a"].ratio == 1.0 and r.final is False


def test_never_started_session_has_zero_duration():
    r = compute(Sess(status="cancelled", actual_start=None, actual_end=None), [Iv("a", T0, T0 + 5)])
    assert r.duration_s == 0 and by_id(r)["a"].ratio == 0 and by_id(r)["a"].present is False


def test_threshold_is_configurable():
    r = compute(Sess(), [Iv("a", T0, T0 + 50)], threshold=0.5)
    assert by_id(r)["a"].present is True


def test_exports():
    r = compute(Sess(), [Iv("a", T0, T0 + 40, name="Ann"), Iv("a", T0 + 50, T0 + 100, name="Ann"),
                         Iv("b", T0 + 10, T0 + 20, name="Bob, Jr.")])
    data = r.to_json()
    json.dumps(data)  # JSON-able
    assert data["present_count"] == 1 and data["duration_s"] == 100
    ann = data["participants"][0]
    assert ann["identity"] == "a" and ann["first_join"] == T0 and ann["last_leave"] == T0 + 100
    assert ann["intervals"] == [{"joined_at": T0, "left_at": T0 + 40}, {"joined_at": T0 + 50, "left_at": T0 + 100}]
    rows = list(csv.DictReader(io.StringIO(r.to_csv())))
    assert [row["identity"] for row in rows] == ["a", "b"]
    assert rows[0]["first_join"] == "2023-11-14T22:13:20Z" and rows[0]["last_leave"] == "2023-11-14T22:15:00Z"
    assert rows[0]["intervals"] == ("2023-11-14T22:13:20Z/2023-11-14T22:14:00Z; "
                                    "2023-11-14T22:14:10Z/2023-11-14T22:15:00Z")
    assert rows[0]["present"] == "yes" and rows[0]["ratio"] == "0.9000"
    assert rows[1]["name"] == "Bob, Jr." and rows[1]["present"] == "no"


async def test_reconnect_grace_end_to_end(store):
    """Drops shorter than the grace period cost nothing; longer ones are absent time."""
    clock = FakeClock(T0)
    svc = SessionService(store, clock=clock, grace_s=30)
    teach = Actor("teach", instructor=True)
    rec = await svc.create(teach, {"title": "Grace"})
    await svc.start(teach, rec.id)
    for who in ("flaky", "gone"):
        await svc.joined(rec.id, who, name=who)
    clock.now = T0 + 20
    await svc.left(rec.id, "flaky")
    await svc.left(rec.id, "gone")
    clock.now = T0 + 45  # flaky is back after 25 s (< 30 s grace)
    await svc.joined(rec.id, "flaky", name="flaky")
    clock.now = T0 + 60  # gone is back after 40 s (> grace): 40 s absent
    await svc.joined(rec.id, "gone", name="gone")
    clock.now = T0 + 100
    await svc.end(teach, rec.id)
    report = await svc.attendance(rec.id)
    people = by_id(report)
    assert people["flaky"].ratio == 1.0 and people["flaky"].present
    assert len(people["flaky"].intervals) == 1
    assert people["gone"].present_s == 60 and people["gone"].ratio == 0.6 and not people["gone"].present
    assert len(people["gone"].intervals) == 2
    assert report.final
