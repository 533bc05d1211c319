"""Quizzes: bank import, rounds where each connected student gets a different random question, server grading."""

from __future__ import annotations

import json
import math
import os
import random
from typing import Any, Sequence

from classroom.interactive import schemas
from classroom.interactive.base import Context, Feature, handles, is_moderator, may_publish_data, not_found
from classroom.interactive.envelope import ProtocolError

DEFAULT_BANK = "default"


class QuizBankError(ValueError):
    """The bank file or JSON is unusable; the message names the problem."""


def load_bank(path_or_json: Any) -> tuple[str, list[dict]]:
    """Parse and validate a bank: a path, a JSON string, or already-decoded JSON. Returns (bank, questions)."""
    if isinstance(path_or_json, (str, os.PathLike)) and not (isinstance(path_or_json, str)
                                                             and path_or_json.lstrip()[:1] in ("[", "{")):
        try:
            with open(path_or_json, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise QuizBankError(f"cannot read quiz bank {os.fspath(path_or_json)!r}: {exc.strerror}") from None
    else:
        text = path_or_json
    if isinstance(text, (str, bytes)):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise QuizBankError(f"quiz bank is not valid JSON: {exc}") from None
    else:
        data = text
    error = next(iter(sorted(schemas.QUIZ_BANK_VALIDATOR.iter_errors(data), key=lambda e: e.path)), None)
    if error is not None:
        best = _deepest(error)
        where = "/" + "/".join(str(p) for p in best.absolute_path)
        raise QuizBankError(f"quiz bank is invalid at {where}: {best.message[:200]}")
    bank = DEFAULT_BANK
    questions = data
    if isinstance(data, dict):
        bank = data.get("bank", DEFAULT_BANK)
        questions = data["questions"]
    for index, q in enumerate(questions):
        if q["answer"] >= len(q["choices"]):
            raise QuizBankError(f"quiz bank is invalid at /questions/{index}/answer: answer {q['answer']} is not "
                                f"an index into {len(q['choices'])} choices")
    return bank, [dict(q) for q in questions]


def _deepest(error: Any) -> Any:
    # oneOf hides the useful error among its context; pick the deepest one.
    if error.context:
        return _deepest(max(error.context, key=lambda e: len(e.absolute_path)))
    return error


async def import_bank(store: Any, path_or_json: Any, *, clock: Any = None) -> dict:
    """`stoa quiz import FILE`: validate the bank and store its questions. Returns {bank, count, ids}."""
    import time

    from classroom.interactive.room import as_repository

    bank, questions = load_bank(path_or_json)
    repo = as_repository(store)
    ids = await repo.add_quiz_questions(bank, questions, (clock or time.time)())
    return {"bank": bank, "count": len(ids), "ids": ids}


def assign_questions(students: Sequence[str], question_ids: Sequence[int], rng: random.Random) -> dict[str, int]:
    """Give each student a random question, all different while the bank lasts, and otherwise spread as
    evenly as possible: every question is used floor(n/b) or ceil(n/b) times."""
    if not question_ids:
        return {}
    rounds = math.ceil(len(students) / len(question_ids))
    pool: list[int] = []
    for _ in range(rounds):
        batch = list(question_ids)
        rng.shuffle(batch)
        pool.extend(batch)
    order = list(students)
    rng.shuffle(order)
    return dict(zip(order, pool))


def question_for_student(q: dict) -> dict:
    return {"question_id": q["id"], "prompt": q["prompt"], "choices": list(q["choices"])}


class Quiz(Feature):
    def __init__(self, room):
        super().__init__(room)
        self.active: dict | None = None  # the running round

    async def load(self) -> None:
        self.active = None
        for rnd in await self.repo.active_quiz_rounds(self.session_id):
            ids = sorted({a["question_id"] for a in rnd["assignments"]})
            rnd["questions"] = {q["id"]: q for q in await self.repo.quiz_questions(ids=ids)} if ids else {}
            rnd["assignments"] = {a["identity"]: a for a in rnd["assignments"]}
            if rnd["ends_at"] <= self.room.clock() or self.active is not None:
                # It ran out while the server was down: end it on the first timer tick.
                self.room.schedule(("quiz", rnd["id"]), 0, lambda ctx, r=rnd: self._end(ctx, r, by=None))
            else:
                self.active = rnd
                self._arm(rnd)

    def _arm(self, rnd: dict) -> None:
        delay = rnd["ends_at"] - self.room.clock()
        self.room.schedule(("quiz", rnd["id"]), delay, lambda ctx, r=rnd: self._end(ctx, r, by=None))

    def state(self, member: Any) -> dict:
        rnd = self.active
        if not self.room.features.get("quiz") or rnd is None:
            return {"quiz": None}
        if is_moderator(member):
            return {"quiz": self.progress(rnd)}
        a = rnd["assignments"].get(member.identity)
        if a is None:
            return {"quiz": None}
        return {"quiz": self._question_msg(rnd, a)}

    def _question_msg(self, rnd: dict, a: dict) -> dict:
        q = rnd["questions"][a["question_id"]]
        out = {"round_id": rnd["id"], **question_for_student(q), "ends_at": rnd["ends_at"],
               "duration_s": rnd["duration_s"], "answered": a.get("choice") is not None}
        if a.get("choice") is not None:
            out.update(choice=a["choice"], correct=a["correct"])
        return out

    def progress(self, rnd: dict) -> dict:
        """What instructors see: per-student results and per-question accuracy."""
        students = []
        per_q: dict[int, dict] = {}
        for identity, a in sorted(rnd["assignments"].items()):
            students.append({"identity": identity, "name": a.get("name") or identity,
                             "question_id": a["question_id"], "choice": a.get("choice"),
                             "correct": a.get("correct"), "answered_at": a.get("answered_at")})
            stats = per_q.setdefault(a["question_id"], {"question_id": a["question_id"], "assigned": 0,
                                                        "answered": 0, "correct": 0})
            stats["assigned"] += 1
            if a.get("choice") is not None:
                stats["answered"] += 1
                stats["correct"] += 1 if a.get("correct") else 0
        questions = []
        for qid, stats in sorted(per_q.items()):
            q = rnd["questions"].get(qid, {})
            questions.append({**stats, "prompt": q.get("prompt"),
                              "accuracy": round(stats["correct"] / stats["answered"], 3) if stats["answered"] else None})
        return {"round_id": rnd["id"], "status": "ended" if rnd.get("ended_at") else "running",
                "started_at": rnd["started_at"], "ends_at": rnd["ends_at"], "duration_s": rnd["duration_s"],
                "students": students, "questions": questions}

    @handles("quiz.start", feature="quiz", bucket="moderation", moderator_only=True)
    async def start(self, ctx: Context) -> dict:
        if self.active is not None:
            raise ProtocolError("conflict", f"quiz round {self.active['id']} is still running; end it first")
        ids = ctx.data.get("question_ids")
        bank = ctx.data.get("bank", self.room.options.quiz_bank)
        questions = await self.repo.quiz_questions(bank=bank if ids is None else None, ids=ids)
        if ids is not None and len(questions) != len(ids):
            missing = sorted(set(ids) - {q["id"] for q in questions})
            raise not_found("quiz question", ", ".join(map(str, missing)))
        if not questions:
            raise ProtocolError("not_found", "the quiz bank is empty; import questions first")
        students = {i: m for i, m in self.room.connected_identities(role="student").items() if may_publish_data(m)}
        if not students:
            raise ProtocolError("conflict", "no students are connected")
        chosen = assign_questions(sorted(students), [q["id"] for q in questions], self.room.rng)
        duration = ctx.data.get("duration_s", self.room.options.quiz_duration_s)
        assignments = [{"identity": i, "name": getattr(students[i], "name", "") or i, "question_id": qid}
                       for i, qid in sorted(chosen.items())]
        round_id = await self.repo.add_quiz_round(self.session_id, started_by=ctx.identity, duration_s=duration,
                                                  at=ctx.now, assignments=assignments)
        rnd = {"id": round_id, "started_by": ctx.identity, "duration_s": duration, "started_at": ctx.now,
               "ends_at": ctx.now + duration, "ended_at": None,
               "questions": {q["id"]: q for q in questions if q["id"] in set(chosen.values())},
               "assignments": {a["identity"]: dict(a, choice=None, correct=None, answered_at=None)
                               for a in assignments}}
        self.active = rnd
        self._arm(rnd)
        await self.room.record(ctx, "quiz.round_started", {"round_id": round_id, "students": len(assignments),
                                                   "questions": len(rnd["questions"])})
        for a in rnd["assignments"].values():
            ctx.fanout({"type": "quiz.question", "data": self._question_msg(rnd, a)},
                       to=lambda m, i=a["identity"]: m.identity == i and m.role == "student")
        progress = self.progress(rnd)
        ctx.to_moderators({"type": "quiz.progress", "data": progress})
        return {"round_id": round_id, "students": len(assignments), "ends_at": rnd["ends_at"]}

    @handles("quiz.answer", feature="quiz", bucket="quiz")
    async def answer(self, ctx: Context) -> dict:
        rnd = self.active
        round_id = ctx.data["round_id"]
        if rnd is None or rnd["id"] != round_id:
            raise ProtocolError("conflict", f"quiz round {round_id} is not running")
        a = rnd["assignments"].get(ctx.identity)
        if a is None:
            raise ProtocolError("forbidden", f"you were not given a question in quiz round {round_id}")
        if a.get("choice") is not None:
            raise ProtocolError("conflict", "you have already answered this question")
        if ctx.now >= rnd["ends_at"]:
            raise ProtocolError("conflict", f"time is up for quiz round {round_id}")
        q = rnd["questions"][a["question_id"]]
        choice = ctx.data["choice"]
        if choice >= len(q["choices"]):
            raise ProtocolError("invalid", f"choice {choice} is out of range; the question has "
                                           f"{len(q['choices'])} choices (0-{len(q['choices']) - 1})")
        correct = choice == q["answer"]
        await self.repo.answer_quiz(round_id, ctx.identity, choice=choice, correct=correct, at=ctx.now)
        a.update(choice=choice, correct=correct, answered_at=ctx.now)
        await self.room.record(ctx, "quiz.answered", {"round_id": round_id, "question_id": q["id"],
                                                    "correct": correct},
                               {"quiz_answers": 1})
        result = {"round_id": round_id, "question_id": q["id"], "choice": choice, "correct": correct,
                  "answer": q["answer"]}
        if q.get("explanation"):
            result["explanation"] = q["explanation"]
        ctx.to_identity(ctx.identity, {"type": "quiz.result", "data": result})
        ctx.to_moderators({"type": "quiz.progress", "data": self.progress(rnd)})
        return result

    async def _end(self, ctx: Context, rnd: dict, by: str | None) -> None:
        if rnd.get("ended_at"):
            return
        self.room.cancel_timer(("quiz", rnd["id"]))
        await self.repo.end_quiz_round(rnd["id"], ctx.now)
        rnd["ended_at"] = ctx.now
        if self.active is rnd:
            self.active = None
        progress = self.progress(rnd)
        await self.room.record(ctx, "quiz.round_ended", {"round_id": rnd["id"], "by": by,
                                                       "answered": sum(q["answered"] for q in progress["questions"]),
                                                       "correct": sum(q["correct"] for q in progress["questions"])},
                               identity=by)
        ctx.fanout({"type": "quiz.ended", "data": {"round_id": rnd["id"], "at": ctx.now}},
                   to=lambda m: not is_moderator(m))
        ctx.to_moderators({"type": "quiz.ended", "data": {"round_id": rnd["id"], "at": ctx.now,
                                                          "progress": progress}})

    @handles("quiz.end", feature="quiz", bucket="moderation", moderator_only=True)
    async def end(self, ctx: Context) -> dict:
        rnd = self.active
        if rnd is None or rnd["id"] != ctx.data["round_id"]:
            raise ProtocolError("conflict", f"quiz round {ctx.data['round_id']} is not running")
        await self._end(ctx, rnd, by=ctx.identity)
        return {"round_id": rnd["id"], "status": "ended"}
