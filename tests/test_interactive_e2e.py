"""The interactive layer end to end: a real Stoa server, real room WebSockets and real aiortc data channels
(tests/client.py), 30 participants in one room; some members use the WebSocket fallback."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from classroom.interactive.quiz import import_bank
from storage.store import STORE
from tests.fixtures.classroom_e2e import Member
from tests.test_interactive import MODERATOR_ONLY

ROOM = "e2e-class"


async def connect(server, identity: str, role: str, use_channel: bool) -> Member:
    return await Member(server, ROOM, identity, role, channel=use_channel).start()


async def test_thirty_participants_over_data_channels_and_websocket(stoa_server):
    store = stoa_server.app[STORE]
    bank = f"e2e-{uuid.uuid4().hex[:6]}"
    await import_bank(store, {"bank": bank, "questions": [
        {"prompt": f"{i} + {i} = ?", "choices": [str(2 * i), str(2 * i + 1)], "answer": 0} for i in range(10)]})
    teacher = await connect(stoa_server, "teacher", "instructor", True)
    moderator = await connect(stoa_server, "mod", "moderator", False)
    # 28 students: two in three on the data channel, the rest on the WebSocket fallback
    students = list(await asyncio.gather(*(connect(stoa_server, f"s{i:02d}", "student", i % 3 != 0)
                                           for i in range(28))))
    everyone = [teacher, moderator, *students]
    try:
        # a poll with exact counts
        poll = await teacher.call("poll.create", {"question": "Best?", "options": ["a", "b", "c", "d"],
                                                     "start": True})
        pid = poll["data"]["poll_id"]
        replies = await asyncio.gather(*(s.call("poll.vote", {"poll_id": pid, "choices": [i % 4]})
                                         for i, s in enumerate(students)))
        assert all(r["type"] == "ack" for r in replies), [r for r in replies if r["type"] != "ack"]
        for s in students:  # the channel users' acks really came over their data channel
            if s.channel:
                assert any(p.get("type") == "ack" for p in s.client.data_messages)
        closed = await teacher.call("poll.close", {"poll_id": pid})
        assert closed["data"]["results"]["counts"] == [7, 7, 7, 7]
        for s in students[:5]:
            final = await s.wait(lambda p: p.get("type") == "poll.closed" and p["data"]["id"] == pid)
            assert final["data"]["tally"]["counts"] == [7, 7, 7, 7]

        # anonymous Q&A: hidden from students, not from moderators
        asked = await students[1].call("qa.ask", {"text": "Will this be graded?", "anonymous": True})
        qid = asked["data"]["question_id"]
        seen = [await m.wait(lambda p: p.get("type") == "qa.question" and p["data"]["id"] == qid)
                for m in everyone]
        for m, q in zip(everyone, seen):
            if m in (teacher, moderator):
                assert q["data"]["identity"] == "s01"
            elif m is not students[1]:
                assert q["data"]["identity"] is None and q["data"]["name"] == "Anonymous"

        # every moderator-only action from a student is refused, on both transports
        for s in (students[1], students[3]):
            for type_, data in MODERATOR_ONLY:
                reply = await s.call(type_, data)
                assert reply["type"] == "error" and reply["code"] == "forbidden", (s.channel, type_, reply)

        # a quiz round: 28 students and 10 questions, spread 3/3/.../2
        round_ = await teacher.call("quiz.start", {"bank": bank, "duration_s": 60})
        assert round_["data"]["students"] == 28
        questions = [await s.wait(lambda p: p.get("type") == "quiz.question") for s in students]
        counts = Counter(q["data"]["question_id"] for q in questions)
        assert len(counts) == 10 and max(counts.values()) == 3 and min(counts.values()) == 2
        answers = await asyncio.gather(*(s.call("quiz.answer", {"round_id": round_["data"]["round_id"],
                                                                   "choice": 0}) for s in students))
        assert all(a["data"]["correct"] is True for a in answers)
        progress = await teacher.wait(lambda p: p.get("type") == "quiz.progress"
                                      and sum(q["answered"] for q in p["data"]["questions"]) == 28)
        assert all(q["accuracy"] == 1.0 for q in progress["data"]["questions"])
    finally:
        await asyncio.gather(*(m.client.close() for m in everyone), return_exceptions=True)


async def test_websocket_carries_everything_when_the_data_channel_is_gone(stoa_server):
    teacher = await connect(stoa_server, "teacher", "instructor", True)
    student = await connect(stoa_server, "student", "student", True)
    try:
        student.client.data_channel.close()
        student.channel = False
        await asyncio.sleep(1.0)  # the server sees the channel close
        before = len(student.client.data_messages)
        reply = await student.call("chat.send", {"text": "no channel any more"})
        assert reply["type"] == "ack"
        await teacher.wait(lambda p: p.get("type") == "chat.message" and p["data"]["text"] == "no channel any more")
        ok = await teacher.call("chat.send", {"text": "to the socket"})
        assert ok["type"] == "ack"
        got = await student.wait(lambda p: p.get("type") == "chat.message" and p["data"]["text"] == "to the socket")
        assert got in [e["payload"] for e in student.client.events if e["type"] == "data"]
        assert len(student.client.data_messages) == before
    finally:
        await teacher.client.close()
        await student.client.close()
