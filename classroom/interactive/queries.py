"""Read-only helpers for the REST API (they work for ended sessions too: no room needed)."""

from __future__ import annotations

from typing import Any

from classroom.interactive.chat import chat_out
from classroom.interactive.whiteboard import render_png

MAX_PAGE = 500


async def chat_history(store: Any, session_id: str, *, before_id: int | None = None, limit: int = 100) -> list[dict]:
    """Chat messages older than `before_id` (all when None), newest first, at most `limit` (1..500)."""
    from classroom.interactive.room import as_repository

    limit = max(1, min(int(limit), MAX_PAGE))
    rows = await as_repository(store).chat_page(session_id, before_id=before_id, limit=limit)
    return [chat_out(r) for r in rows]


async def board_png(store: Any, session_id: str, width: int = 1280, height: int = 720) -> bytes:
    """The session's current whiteboard (strokes since the last clear, minus undone) as a PNG."""
    from classroom.interactive.room import as_repository

    return render_png(await as_repository(store).board(session_id), width, height)
