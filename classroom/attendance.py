"""Attendance: time present per participant over the session's actual duration.

Rule: a participant's presence intervals are clipped to [actual_start, actual_end], overlapping or touching
intervals are merged (two tabs count once), and the covered time is divided by the actual duration. A
participant with ratio >= 0.75 is "present". Reconnects within the grace period were already folded into one
interval when recorded (classroom.sessions), so a short drop costs nothing. An interval still open counts up
to actual_end (or `now` for a session still live).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Protocol

PRESENT_THRESHOLD = 0.75


class _Interval(Protocol):
    identity: str
    name: str
    role: str
    joined_at: float
    left_at: float | None


class _Session(Protocol):
    id: str
    room: str
    title: str
    status: str
    actual_start: float | None
    actual_end: float | None


def merge_intervals(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of [start, end) spans, sorted; empty spans are dropped."""
    out: list[list[float]] = []
    for start, end in sorted((s, e) for s, e in spans if e > s):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def clip(spans: Iterable[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    return [(max(s, lo), min(e, hi)) for s, e in spans if min(e, hi) > max(s, lo)]


def covered_seconds(spans: Iterable[tuple[float, float]], lo: float, hi: float) -> float:
    return sum(e - s for s, e in merge_intervals(clip(spans, lo, hi)))


@dataclass
class ParticipantAttendance:
    identity: str
    name: str
    role: str
    intervals: list[tuple[float, float | None]]  # as recorded (join, leave), unclipped
    present_s: float
    ratio: float
    present: bool

    @property
    def first_join(self) -> float | None:
        return min((j for j, _ in self.intervals), default=None)

    @property
    def last_leave(self) -> float | None:
        leaves = [lv for _, lv in self.intervals]
        if not leaves or any(lv is None for lv in leaves):
            return None
        return max(leaves)


@dataclass
class AttendanceReport:
    session_id: str
    room: str
    title: str
    status: str
    start: float | None
    end: float | None
    duration_s: float
    threshold: float
    final: bool  # the session has ended: the numbers will not change
    participants: list[ParticipantAttendance] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id, "room": self.room, "title": self.title, "status": self.status,
            "start": self.start, "end": self.end, "duration_s": round(self.duration_s, 3),
            "threshold": self.threshold, "final": self.final,
            "present_count": sum(p.present for p in self.participants),
            "participants": [{
                "identity": p.identity, "name": p.name, "role": p.role,
                "present_s": round(p.present_s, 3), "ratio": round(p.ratio, 4), "present": p.present,
                "first_join": p.first_join, "last_leave": p.last_leave,
                "intervals": [{"joined_at": j, "left_at": lv} for j, lv in p.intervals],
            } for p in self.participants],
        }

    def to_csv(self) -> str:
        """One row per participant; times are ISO 8601 UTC; `intervals` lists join/leave pairs."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["identity", "name", "role", "first_join", "last_leave", "intervals", "present_s",
                         "duration_s", "ratio", "present"])
        for p in self.participants:
            writer.writerow([
                p.identity, p.name, p.role, _iso(p.first_join), _iso(p.last_leave),
                "; ".join(f"{_iso(j)}/{_iso(lv)}" for j, lv in p.intervals),
                f"{p.present_s:.1f}", f"{self.duration_s:.1f}", f"{p.ratio:.4f}", "yes" if p.present else "no",
            ])
        return buf.getvalue()


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def compute(session: _Session, intervals: Iterable[_Interval], *, threshold: float = PRESENT_THRESHOLD,
            now: float | None = None) -> AttendanceReport:
    """Attendance of every identity that has presence intervals in `session`. A session that never started
    has duration 0 and everyone's ratio is 0."""
    start = session.actual_start
    end = session.actual_end if session.actual_end is not None else (now if start is not None else None)
    if start is not None and end is not None and end < start:
        end = start
    duration = (end - start) if start is not None and end is not None else 0.0
    by_identity: dict[str, list[_Interval]] = {}
    for iv in intervals:
        by_identity.setdefault(iv.identity, []).append(iv)
    people = []
    for identity, ivs in sorted(by_identity.items()):
        ivs.sort(key=lambda iv: iv.joined_at)
        if duration > 0:
            spans = [(iv.joined_at, iv.left_at if iv.left_at is not None else end) for iv in ivs]
            present_s = covered_seconds(spans, start, end)
            ratio = min(1.0, present_s / duration)
        else:
            present_s, ratio = 0.0, 0.0
        last = ivs[-1]
        people.append(ParticipantAttendance(
            identity=identity, name=last.name or identity, role=last.role,
            intervals=[(iv.joined_at, iv.left_at) for iv in ivs], present_s=present_s, ratio=ratio,
            present=duration > 0 and ratio >= threshold - 1e-9))
    return AttendanceReport(
        session_id=session.id, room=session.room, title=session.title, status=session.status, start=start,
        end=end, duration_s=duration, threshold=threshold, final=session.status == "ended", participants=people)
