"""Repository for the interactive layer (chat, Q&A, polls, whiteboard, quizzes, hands, engagement, events).

Implements `classroom.interactive.repository.Repository` on the tables of `storage.schema`. Rows go out as
plain dicts with the interactive layer's key names (e.g. `identity` for `chat_messages.sender`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import sqlalchemy as sa

from storage import schema as t
from storage.store import lock_key

if TYPE_CHECKING:
    from storage.store import Store


def _chat(r: Any) -> dict:
    m = r._mapping
    return {"id": m["id"], "session_id": m["session_id"], "identity": m["sender"] or None,
            "name": m["sender_name"], "kind": m["kind"], "text": m["text"], "reply_to": m["reply_to"],
            "pinned": bool(m["pinned"]), "created_at": m["created_at"], "edited_at": m["edited_at"],
            "deleted_at": m["deleted_at"], "deleted_by": m["deleted_by"]}


def _poll(m: Any, votes: dict[str, list[int]]) -> dict:
    closes_at = m["opened_at"] + m["duration_s"] if m["opened_at"] is not None and m["duration_s"] else None
    return {"id": m["id"], "session_id": m["session_id"], "created_by": m["creator"], "question": m["question"],
            "options": list(m["options"]), "multiple": bool(m["multiple"]), "anonymous": bool(m["anonymous"]),
            "results": m["show_results"],
            "duration_s": int(m["duration_s"]) if m["duration_s"] is not None else None,
            "status": m["status"], "created_at": m["created_at"], "opened_at": m["opened_at"],
            "closes_at": closes_at, "closed_at": m["closed_at"], "final_results": m["results"], "votes": votes}


class InteractiveRepository:
    def __init__(self, store: "Store"):
        self.store = store

    def transaction(self):
        """Group several calls into one transaction (joined by every call in the same task)."""
        return self.store.transaction()

    # ---- chat ----------------------------------------------------------------------------------------------
    async def add_chat(self, session_id, *, identity, name, text, reply_to, kind, at) -> dict:
        async with self.store.transaction() as conn:
            res = await conn.execute(t.chat_messages.insert().values(
                session_id=session_id, sender=identity or "", sender_name=name or "", kind=kind, text=text,
                reply_to=reply_to, created_at=at))
            message_id = res.inserted_primary_key[0]
        return {"id": message_id, "session_id": session_id, "identity": identity, "name": name or "",
                "kind": kind, "text": text, "reply_to": reply_to, "pinned": False, "created_at": at,
                "edited_at": None, "deleted_at": None, "deleted_by": None}

    async def get_chat(self, session_id, message_id) -> dict | None:
        c = t.chat_messages.c
        async with self.store.read() as conn:
            row = (await conn.execute(t.chat_messages.select().where(
                c.session_id == session_id, c.id == message_id))).first()
        return _chat(row) if row is not None else None

    async def edit_chat(self, message_id, text, at) -> None:
        c = t.chat_messages.c
        async with self.store.transaction() as conn:
            await conn.execute(t.chat_messages.update().where(c.id == message_id).values(text=text, edited_at=at))

    async def delete_chat(self, message_id, by, at) -> None:
        c = t.chat_messages.c
        async with self.store.transaction() as conn:
            await conn.execute(t.chat_messages.update().where(c.id == message_id)
                               .values(deleted_at=at, deleted_by=by, pinned=False))

    async def pin_chat(self, message_id, pinned) -> None:
        c = t.chat_messages.c
        async with self.store.transaction() as conn:
            await conn.execute(t.chat_messages.update().where(c.id == message_id).values(pinned=pinned))

    async def recent_chat(self, session_id, limit) -> list[dict]:
        return list(reversed(await self.chat_page(session_id, before_id=None, limit=limit)))

    async def chat_page(self, session_id, *, before_id=None, limit=100) -> list[dict]:
        """Newest first, not deleted, ids below `before_id` (for paging history through the REST API)."""
        c = t.chat_messages.c
        q = t.chat_messages.select().where(c.session_id == session_id, c.deleted_at.is_(None))
        if before_id is not None:
            q = q.where(c.id < before_id)
        async with self.store.read() as conn:
            rows = await conn.execute(q.order_by(c.id.desc()).limit(limit))
            return [_chat(r) for r in rows]

    async def pinned_chat(self, session_id) -> list[dict]:
        c = t.chat_messages.c
        async with self.store.read() as conn:
            rows = await conn.execute(t.chat_messages.select().where(
                c.session_id == session_id, c.pinned.is_(True), c.deleted_at.is_(None)).order_by(c.id))
            return [_chat(r) for r in rows]

    # ---- Q&A -----------------------------------------------------------------------------------------------
    async def add_question(self, session_id, *, identity, name, text, anonymous, at,
                           hidden_from_staff=False) -> dict:
        qid = t.new_id()
        async with self.store.transaction() as conn:
            await conn.execute(t.questions.insert().values(
                id=qid, session_id=session_id, asker=identity, asker_name=name or "", anonymous=anonymous,
                hidden_from_staff=hidden_from_staff, text=text, status="open", created_at=at))
        return {"id": qid, "identity": identity, "name": name, "text": text, "anonymous": anonymous,
                "hidden_from_staff": hidden_from_staff,
                "status": "open", "answer": None, "answered_live": False, "featured": False, "created_at": at,
                "answered_at": None, "voters": set()}

    async def set_question_vote(self, question_id, identity, on, at) -> None:
        v = t.question_votes
        async with self.store.transaction() as conn:
            await conn.execute(v.delete().where(v.c.question_id == question_id, v.c.identity == identity))
            if on:
                await conn.execute(v.insert().values(question_id=question_id, identity=identity))

    async def update_question(self, question_id, **fields) -> None:
        allowed = {"status", "answer", "answered_live", "featured", "answered_at"}
        values = {k: v for k, v in fields.items() if k in allowed}
        async with self.store.transaction() as conn:
            await conn.execute(t.questions.update().where(t.questions.c.id == question_id).values(**values))

    async def list_questions(self, session_id) -> list[dict]:
        q, v = t.questions, t.question_votes
        async with self.store.read() as conn:
            rows = (await conn.execute(q.select().where(q.c.session_id == session_id)
                                       .order_by(q.c.created_at, q.c.id))).all()
            votes = (await conn.execute(sa.select(v.c.question_id, v.c.identity).join(q, q.c.id == v.c.question_id)
                                        .where(q.c.session_id == session_id))).all()
        voters: dict[str, set[str]] = {}
        for qid, identity in votes:
            voters.setdefault(qid, set()).add(identity)
        return [{"id": r.id, "identity": r.asker, "name": r.asker_name, "text": r.text,
                 "anonymous": bool(r.anonymous), "hidden_from_staff": bool(r.hidden_from_staff),
                 "status": r.status, "answer": r.answer,
                 "answered_live": bool(r.answered_live), "featured": bool(r.featured), "created_at": r.created_at,
                 "answered_at": r.answered_at, "voters": voters.get(r.id, set())} for r in rows]

    # ---- polls ---------------------------------------------------------------------------------------------
    async def add_poll(self, session_id, *, created_by, question, options, multiple, anonymous, results,
                       duration_s, at) -> dict:
        pid = t.new_id()
        values = dict(id=pid, session_id=session_id, creator=created_by, question=question, options=list(options),
                      multiple=multiple, anonymous=anonymous, show_results=results, duration_s=duration_s,
                      status="draft", created_at=at, opened_at=None, closed_at=None, results=None)
        async with self.store.transaction() as conn:
            await conn.execute(t.polls.insert().values(**values))
        return _poll(values, {})

    async def update_poll(self, poll_id, **fields) -> None:
        mapping = {"status": "status", "opened_at": "opened_at", "closed_at": "closed_at",
                   "final_results": "results"}
        values = {mapping[k]: v for k, v in fields.items() if k in mapping}
        async with self.store.transaction() as conn:
            await conn.execute(t.polls.update().where(t.polls.c.id == poll_id).values(**values))

    async def set_poll_vote(self, poll_id, *, identity, name, choices, at) -> None:
        v = t.poll_votes
        async with self.store.transaction() as conn:
            await lock_key(conn, f"poll_vote:{poll_id}:{identity}")
            res = await conn.execute(v.update().where(v.c.poll_id == poll_id, v.c.identity == identity)
                                     .values(choices=list(choices), updated_at=at))
            if res.rowcount == 0:
                await conn.execute(v.insert().values(poll_id=poll_id, identity=identity, choices=list(choices),
                                                     updated_at=at))

    async def list_polls(self, session_id) -> list[dict]:
        p, v = t.polls, t.poll_votes
        async with self.store.read() as conn:
            rows = (await conn.execute(p.select().where(p.c.session_id == session_id)
                                       .order_by(p.c.created_at, p.c.id))).all()
            votes = (await conn.execute(sa.select(v.c.poll_id, v.c.identity, v.c.choices)
                                        .join(p, p.c.id == v.c.poll_id).where(p.c.session_id == session_id))).all()
        by_poll: dict[str, dict[str, list[int]]] = {}
        for pid, identity, choices in votes:
            by_poll.setdefault(pid, {})[identity] = list(choices)
        return [_poll(r._mapping, by_poll.get(r.id, {})) for r in rows]

    async def poll_votes(self, poll_id) -> dict[str, list[int]]:
        v = t.poll_votes
        async with self.store.read() as conn:
            rows = await conn.execute(sa.select(v.c.identity, v.c.choices).where(v.c.poll_id == poll_id))
            return {identity: list(choices) for identity, choices in rows}

    # ---- whiteboard ----------------------------------------------------------------------------------------
    async def add_stroke(self, session_id, *, identity, stroke, at) -> int:
        async with self.store.transaction() as conn:
            res = await conn.execute(t.whiteboard_strokes.insert().values(
                session_id=session_id, author=identity, data=stroke, created_at=at, undone=False))
            return res.inserted_primary_key[0]

    async def undo_stroke(self, stroke_id, at) -> None:
        s = t.whiteboard_strokes
        async with self.store.transaction() as conn:
            await conn.execute(s.update().where(s.c.id == stroke_id).values(undone=True))

    async def clear_board(self, session_id, *, identity, at) -> int:
        async with self.store.transaction() as conn:
            res = await conn.execute(t.whiteboard_clears.insert().values(session_id=session_id, cleared_at=at,
                                                                         by=identity))
            return res.inserted_primary_key[0]

    async def board(self, session_id) -> list[dict]:
        """Strokes after the last clear, not undone, in drawing order."""
        s, cl = t.whiteboard_strokes, t.whiteboard_clears
        async with self.store.read() as conn:
            last_clear = (await conn.execute(sa.select(sa.func.max(cl.c.cleared_at))
                                             .where(cl.c.session_id == session_id))).scalar()
            q = s.select().where(s.c.session_id == session_id, s.c.undone.is_(False))
            if last_clear is not None:
                q = q.where(s.c.created_at > last_clear)
            rows = await conn.execute(q.order_by(s.c.id))
            return [{**(r.data or {}), "id": r.id, "identity": r.author, "created_at": r.created_at} for r in rows]

    # ---- quizzes -------------------------------------------------------------------------------------------
    async def add_quiz_questions(self, bank, questions: Iterable[dict], at) -> list[str]:
        rows = [{"id": t.new_id(), "bank": bank, "prompt": q["prompt"], "choices": list(q["choices"]),
                 "answer": q["answer"], "explanation": q.get("explanation") or "", "created_at": at}
                for q in questions]
        if rows:
            async with self.store.transaction() as conn:
                await conn.execute(t.quiz_questions.insert(), rows)
        return [r["id"] for r in rows]

    async def quiz_questions(self, *, bank=None, ids: Sequence[str] | None = None) -> list[dict]:
        q = t.quiz_questions
        stmt = q.select()
        if bank is not None:
            stmt = stmt.where(q.c.bank == bank)
        if ids is not None:
            stmt = stmt.where(q.c.id.in_(list(ids)))
        async with self.store.read() as conn:
            rows = await conn.execute(stmt.order_by(q.c.created_at, q.c.id))
            return [{"id": r.id, "bank": r.bank, "prompt": r.prompt, "choices": list(r.choices), "answer": r.answer,
                     "explanation": r.explanation} for r in rows]

    async def add_quiz_round(self, session_id, *, started_by, duration_s, at, assignments) -> str:
        rid = t.new_id()
        async with self.store.transaction() as conn:
            await conn.execute(t.quiz_rounds.insert().values(id=rid, session_id=session_id, started_by=started_by,
                                                             started_at=at, duration_s=duration_s))
            if assignments:
                await conn.execute(t.quiz_assignments.insert(), [
                    {"round_id": rid, "identity": a["identity"], "question_id": a["question_id"]}
                    for a in assignments])
        return rid

    async def answer_quiz(self, round_id, identity, *, choice, correct, at) -> None:
        a = t.quiz_assignments
        async with self.store.transaction() as conn:
            await conn.execute(a.update().where(a.c.round_id == round_id, a.c.identity == identity)
                               .values(answer=choice, correct=correct, answered_at=at))

    async def end_quiz_round(self, round_id, at) -> None:
        r = t.quiz_rounds
        async with self.store.transaction() as conn:
            await conn.execute(r.update().where(r.c.id == round_id, r.c.closed_at.is_(None)).values(closed_at=at))

    async def quiz_round(self, round_id) -> dict | None:
        rounds = await self._rounds(t.quiz_rounds.c.id == round_id)
        return rounds[0] if rounds else None

    async def active_quiz_rounds(self, session_id) -> list[dict]:
        r = t.quiz_rounds.c
        return await self._rounds(sa.and_(r.session_id == session_id, r.closed_at.is_(None)))

    async def _rounds(self, where) -> list[dict]:
        r, a = t.quiz_rounds, t.quiz_assignments
        async with self.store.read() as conn:
            rows = (await conn.execute(r.select().where(where).order_by(r.c.started_at))).all()
            out = []
            for row in rows:
                assigned = await conn.execute(a.select().where(a.c.round_id == row.id).order_by(a.c.identity))
                duration = row.duration_s or 0
                out.append({"id": row.id, "started_by": row.started_by, "started_at": row.started_at,
                            "duration_s": int(duration), "ends_at": row.started_at + duration,
                            "ended_at": row.closed_at,
                            "assignments": [{"identity": x.identity, "name": x.identity, "question_id": x.question_id,
                                             "choice": x.answer, "correct": x.correct, "answered_at": x.answered_at}
                                            for x in assigned]})
            return out

    # ---- hands ---------------------------------------------------------------------------------------------
    async def raise_hand(self, session_id, *, identity, name, at) -> int:
        async with self.store.transaction() as conn:
            res = await conn.execute(t.hand_raises.insert().values(session_id=session_id, identity=identity,
                                                                   name=name or "", raised_at=at))
            return res.inserted_primary_key[0]

    async def lower_hand(self, session_id, *, identity, by, at) -> None:
        h = t.hand_raises.c
        async with self.store.transaction() as conn:
            await conn.execute(t.hand_raises.update().where(h.session_id == session_id, h.identity == identity,
                                                            h.lowered_at.is_(None)).values(lowered_at=at))

    async def raised_hands(self, session_id) -> list[dict]:
        h = t.hand_raises.c
        async with self.store.read() as conn:
            rows = await conn.execute(t.hand_raises.select().where(h.session_id == session_id,
                                                                   h.lowered_at.is_(None)).order_by(h.raised_at, h.id))
            return [{"id": r.id, "identity": r.identity, "name": r.name, "raised_at": r.raised_at} for r in rows]

    # ---- engagement and timeline ---------------------------------------------------------------------------
    async def bump_engagement(self, session_id, identity, counters: dict[str, int], name: str = "",
                              at: float = 0.0) -> None:
        unknown = set(counters) - set(t.ENGAGEMENT_COUNTERS)
        if unknown:
            raise ValueError(f"unknown engagement counters {sorted(unknown)}; known: {t.ENGAGEMENT_COUNTERS}")
        counters = {k: v for k, v in counters.items() if v}
        if not counters:
            return
        e = t.engagement
        async with self.store.transaction() as conn:
            await lock_key(conn, f"engagement:{session_id}:{identity}")
            res = await conn.execute(e.update().where(e.c.session_id == session_id, e.c.identity == identity)
                                     .values({k: e.c[k] + v for k, v in counters.items()}))
            if res.rowcount == 0:
                await conn.execute(e.insert().values({"session_id": session_id, "identity": identity, **counters}))

    async def engagement(self, session_id) -> dict[str, dict[str, int]]:
        e = t.engagement
        async with self.store.read() as conn:
            rows = await conn.execute(e.select().where(e.c.session_id == session_id).order_by(e.c.identity))
            return {r.identity: {k: getattr(r, k) for k in t.ENGAGEMENT_COUNTERS} for r in rows}

    async def add_event(self, session_id, type, *, identity, data, at) -> None:
        await self.store.events.append(session_id, type, ts=at, actor=identity, payload=data)

    async def last_event(self, session_id, type) -> dict | None:
        s = t.session_events.c
        async with self.store.read() as conn:
            row = (await conn.execute(t.session_events.select().where(s.session_id == session_id, s.type == type)
                                      .order_by(s.ts.desc(), s.id.desc()).limit(1))).first()
        if row is None:
            return None
        return {"id": row.id, "type": row.type, "identity": row.actor, "data": row.payload or {}, "at": row.ts}
