"""The review page's drawings: the timeline of chat, Q&A and poll events with their text, and the inline SVG
of activity over time. Page helpers of web/review.py (docs/recording.md, "Review pages")."""

from __future__ import annotations

from datetime import datetime, timezone

# session_events types the timeline shows, by category (the vocabulary: storage.events.EVENTS).
TIMELINE_TYPES = {"chat.sent": "chat", "chat.pinned": "chat", "chat.unpinned": "chat",
                  "question.asked": "qa", "question.answered": "qa", "question.featured": "qa",
                  "question.unfeatured": "qa", "poll.opened": "poll", "poll.closed": "poll"}


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fmt_duration(seconds: float | None) -> str:
    if not seconds:
        return "0:00"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def activity_svg(start: float, end: float, events: list, intervals: list, *, buckets: int = 40,
                 width: int = 360, height: int = 90) -> tuple[str, list[dict]]:
    """Inline SVG: events per time bucket (bars) and people present (line). Returns (svg, buckets)."""
    span = max(end - start, 1.0)
    step = span / buckets
    counts = [0] * buckets
    for e in events:
        i = int((e.ts - start) / step)
        if 0 <= i < buckets:
            counts[i] += 1
    present = []
    for i in range(buckets):
        t = start + (i + 0.5) * step
        present.append(sum(1 for iv in intervals if iv.joined_at <= t and (iv.left_at is None or iv.left_at > t)))
    top = max(max(counts, default=0), max(present, default=0), 1)
    bw = width / buckets
    parts = [f'<svg class="activity" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="activity over time">']
    for i, c in enumerate(counts):
        h = c / top * (height - 4)
        parts.append(f'<rect x="{i * bw:.1f}" y="{height - h:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" '
                     f'fill="#4f8cff"><title>{fmt_duration(i * step)}: {c} events</title></rect>')
    pts = " ".join(f"{(i + 0.5) * bw:.1f},{height - p / top * (height - 4):.1f}" for i, p in enumerate(present))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#f6c343" stroke-width="2"/>')
    parts.append("</svg>")
    data = [{"offset": round(i * step, 3), "events": c, "present": p} for i, (c, p) in enumerate(zip(counts, present))]
    return "".join(parts), data


async def build_timeline(repo, session_id: str, events: list, t0: float, *,
                         names: dict[str, str] | None = None) -> list[dict]:
    """Chat, Q&A and poll events with their text, at offsets (s) from the recording's start. `actor` is a
    display name: the one stored with the message or question, else from `names` (identity -> name)."""
    names = names or {}
    chosen = [(e, TIMELINE_TYPES.get(e.type)) for e in events]
    chosen = [(e, c) for e, c in chosen if c is not None]
    payload = lambda e: e.payload if isinstance(e.payload, dict) else {}  # noqa: E731
    texts = await repo.timeline_texts(
        session_id,
        chat_ids={payload(e)["message_id"] for e, c in chosen if c == "chat" and isinstance(payload(e).get("message_id"), int)},
        question_ids={str(payload(e)["question_id"]) for e, c in chosen if c == "qa" and payload(e).get("question_id")},
        poll_ids={str(payload(e)["poll_id"]) for e, c in chosen if c == "poll" and payload(e).get("poll_id")})
    out = []
    for e, category in chosen:
        p, actor, text = payload(e), names.get(e.actor, e.actor), None
        if category == "chat" and "message_id" in p:
            msg = texts["chat"].get(p["message_id"])
            if msg is not None and msg["sender_name"]:
                actor = msg["sender_name"]
            text = None if msg is None else ("(deleted)" if msg["deleted_at"] else msg["text"])
            if e.type != "chat.sent":
                text = f"{e.type.removeprefix('chat.')}: {text or ''}"
        elif category == "qa" and "question_id" in p:
            q = texts["question"].get(str(p["question_id"]))
            if q is not None:
                if e.type == "question.asked":
                    # anonymous stays anonymous in the review too
                    actor = None if q["anonymous"] else (q["asker_name"] or actor)
                text = (f"answered: {q['text']}" if e.type == "question.answered" else q["text"])
        elif category == "poll" and "poll_id" in p:
            poll = texts["poll"].get(str(p["poll_id"]))
            question = p.get("question") or (poll["question"] if poll else "")
            text = f"{'poll opened' if e.type == 'poll.opened' else 'poll closed'}: {question}"
        out.append({"id": e.id, "type": e.type, "category": category, "actor": actor, "ts": e.ts,
                    "offset": round(e.ts - t0, 3), "text": (text or _event_text(e))[:300]})
    return out


def _event_text(event) -> str:
    p = event.payload if isinstance(event.payload, dict) else {}
    for key in ("text", "question", "title", "body"):
        if isinstance(p.get(key), str):
            return p[key][:200]
    return event.type
