"""Who may see a recording (docs/recording.md, "Who may do what"): the one rule the recordings REST API
(signaling/recordings_api.py) and the review pages (web/review.py) both apply.

Admins (API keys) and operators see every recording. Anyone else is a room token: a token of the
recording's room, not a viewer, whose identity took part in the session, when the session has its
"recording" feature on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from recorder.service import RecordingError, RecordingManager
from shared.auth import Grants
from storage.recordings import RecordingRow


@dataclass(frozen=True)
class Viewer:
    """Who asks: `grants` is None for an API key (an admin)."""
    identity: str
    grants: Grants | None = None

    @property
    def kind(self) -> str:
        if self.grants is None:
            return "admin"
        return "operator" if self.grants.role == "operator" else "room"

    @property
    def sees_all(self) -> bool:
        return self.kind in ("admin", "operator")


async def may_view(store, viewer: Viewer, row: RecordingRow) -> str | None:
    """None if `viewer` may see `row`, else the reason not."""
    if viewer.sees_all:
        return None
    grants = viewer.grants
    assert grants is not None
    if grants.room != row.room:
        return f"this token is for room {grants.room!r}; the recording is of room {row.room!r}"
    if grants.role == "viewer":
        return "viewer tokens cannot open recordings"
    session = await store.sessions.get(row.session_id) if row.session_id else None
    if session is None:
        return "this recording belongs to no session, so only operators may see it"
    if not session.features.get("recording"):
        return "the session does not share its recording with participants"
    if grants.identity == session.instructor or await store.sessions.role_of(session.id, grants.identity):
        return None
    if await store.sessions.intervals(session.id, grants.identity):
        return None
    if grants.identity in {f.get("participant") for f in (row.files or [])}:
        return None
    return f"{grants.identity!r} did not take part in this session"


async def viewable(manager: RecordingManager, store, viewer: Viewer, recording_id: str) -> RecordingRow:
    """The row `viewer` asks for; RecordingError 404 when there is none, 403 when they may not see it."""
    row = await manager.repo.get(recording_id)
    if row is None:
        raise RecordingError(404, "not_found", f"there is no recording {recording_id!r}")
    reason = await may_view(store, viewer, row)
    if reason is not None:
        raise RecordingError(403, "permission_denied", reason)
    return row


def utc_day(value: str) -> tuple[float, float]:
    """The UTC day "2026-01-31" as [start, end) timestamps; RecordingError 400 for anything else."""
    try:
        start = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise RecordingError(400, "invalid_input",
                             f"date must look like 2026-01-31 (UTC day), got {value[:40]!r}") from None
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


async def visible(manager: RecordingManager, store, viewer: Viewer, *, room: str = "", date: str = "",
                  instructor: str = "") -> list[RecordingRow]:
    """The recordings `viewer` may see, newest first, filtered by room, UTC day and session instructor."""
    rows = await manager.repo.list(room=room or None, day=utc_day(date) if date else None,
                                   instructor=instructor or None)
    if viewer.sees_all:
        return rows
    return [r for r in rows if await may_view(store, viewer, r) is None]
