"""The interactive layer end to end through the real server: real aiortc clients over real data channels
(label "stoa"), and the same flows over the WebSocket fallback with clients that never open their channel."""

from __future__ import annotations

import asyncio
import collections

import pytest

from classroom.interactive import import_bank
from storage.store import STORE
from tests.fixtures.classroom_e2e import Member, close_all, start_all

N = 30  # voters in one room: 30 real peer connections plus the instructor set up and vote in ~2 s on 2 cores
TRANSPORTS = [pytest.param(True, id="datachannel"), pytest.param(False, id="websocket")]


def bank(name: str, n: int) -> dict:
    return {"bank": name, "questions": [{"prompt": f"{name} q{i}: {i} + 1 = ?", "choices": [str(i + 1), "0"],
                                         "answer": 0} for i in range(n)]}


def assert_transport(member: Member, channel: bool) -> None:
    """Past the state snapshot, a channel member gets classroom messages on its channel only, and a
    WebSocket member never gets a channel message."""
    if channel:
        assert member.client.data_messages, "nothing arrived over the data channel"
        assert all(p["type"] in ("state", "chat.message") for p in member.over_ws()), member.over_ws()
    else:
        assert not member.client.data_messages


@pytest.mark.parametrize("channel", TRANSPORTS)
async def test_poll_with_n_votes_gives_exact_counts(stoa_server, channel):
    teacher = Member(stoa_server, "poll", "teacher", "instructor", channel=channel)
    students = [Member(stoa_server, "poll", f"s{i:02d}", channel=channel) for i in range(N)]
    await start_all([teacher, *students])
    try:
        created = await teacher.ok("poll.create", {"question": "Which?", "options": ["a", "b", "c", "d"],
                                                   "results": "live", "start": True})
        poll_id = created["poll_id"]
        for s in students:
            await s.wait(lambda p: p["type"] == "poll.opened" and p["data"]["id"] == poll_id)
        expected = [0, 0, 0, 0]
        pending = []
        for i, s in enumerate(students):
            expected[i % 4] += 1
            pending.append(s.call("poll.vote", {"poll_id": poll_id, "choices": [i % 4]}))
        acks = await asyncio.gather(*pending)
        assert all(a["type"] == "ack" for a in acks), [a for a in acks if a["type"] != "ack"]
        # A changed vote does not count twice.
        await students[0].ok("poll.vote", {"poll_id": poll_id, "choices": [1]})
        expected[0] -= 1
        expected[1] += 1
        # Live results reach the teacher (coalesced; the latest carries the current tally).
        await teacher.wait(lambda p: p["type"] == "poll.results" and p["data"]["tally"]["counts"] == expected)
        closed = await teacher.ok("poll.close", {"poll_id": poll_id})
        assert closed["results"]["counts"] == expected
        assert closed["results"]["total_voters"] == N
        assert closed["results"]["percentages"] == [round(100 * c / N, 1) for c in expected]
        for s in students:
            final = await s.wait(lambda p: p["type"] == "poll.closed" and p["data"]["id"] == poll_id)
            assert final["data"]["tally"]["counts"] == expected
        assert_transport(students[-1], channel)
    finally:
        await close_all([teacher, *students])


@pytest.mark.parametrize("channel", TRANSPORTS)
async def test_quiz_rounds_spread_questions(stoa_server, channel):
    await import_bank(stoa_server.app[STORE], bank("ten", 10))
    await import_bank(stoa_server.app[STORE], bank("four", 4))
    teacher = Member(stoa_server, "quiz", "teacher", "instructor", channel=channel)
    students = [Member(stoa_server, "quiz", f"q{i:02d}", channel=channel) for i in range(10)]
    await start_all([teacher, *students])
    try:
        for name, most in (("ten", 1), ("four", 3)):
            started = await teacher.ok("quiz.start", {"bank": name, "duration_s": 30})
            round_id = started["round_id"]
            assert started["students"] == 10
            questions = {}
            for s in students:
                q = await s.wait(lambda p: p["type"] == "quiz.question" and p["data"]["round_id"] == round_id)
                questions[s.identity] = q["data"]
            counts = collections.Counter(q["question_id"] for q in questions.values())
            assert max(counts.values()) == most, counts
            assert len(counts) == (10 if name == "ten" else 4)
            # Students answer; the server grades, the student sees right or wrong, the teacher sees progress.
            for i, s in enumerate(students):
                ack = await s.ok("quiz.answer", {"round_id": round_id, "choice": i % 2})
                assert ack["correct"] is (i % 2 == 0)
                result = await s.wait(lambda p: p["type"] == "quiz.result" and p["data"]["round_id"] == round_id)
                assert result["data"]["correct"] is (i % 2 == 0)
            again = await students[0].call("quiz.answer", {"round_id": round_id, "choice": 0})
            assert again["type"] == "error" and again["code"] == "conflict"
            progress = await teacher.wait(
                lambda p: p["type"] == "quiz.progress" and p["data"]["round_id"] == round_id
                and sum(1 for st in p["data"]["students"] if st.get("choice") is not None) == 10)
            assert sum(1 for st in progress["data"]["students"] if st["correct"]) == 5
            await teacher.ok("quiz.end", {"round_id": round_id})
            await students[0].wait(lambda p: p["type"] == "quiz.ended" and p["data"]["round_id"] == round_id)
        assert_transport(students[0], channel)
    finally:
        await close_all([teacher, *students])


@pytest.mark.parametrize("channel", TRANSPORTS)
async def test_anonymous_question_hidden_from_students_not_moderators(stoa_server, channel):
    teacher = Member(stoa_server, "qa", "teacher", "instructor", channel=channel)
    mod = Member(stoa_server, "qa", "mod", "moderator", channel=channel)
    asker = Member(stoa_server, "qa", "asker", channel=channel)
    other = Member(stoa_server, "qa", "other", channel=channel)
    await start_all([teacher, mod, asker, other])
    try:
        qid = (await asker.ok("qa.ask", {"text": "Is this on the exam?", "anonymous": True}))["question_id"]
        named = (await other.ok("qa.ask", {"text": "Named question", "anonymous": False}))["question_id"]

        def question(m: Member, q: str) -> dict:
            return [p for p in m.of_type("qa.question") if p["data"]["id"] == q][-1]["data"]

        for m in (teacher, mod, asker, other):
            await m.wait(lambda p: p["type"] == "qa.question" and p["data"]["id"] == qid)
        seen_by_other = question(other, qid)
        assert seen_by_other["identity"] is None and seen_by_other["name"] == "Anonymous"
        assert "asker" not in str(other.of_type("qa.question"))
        assert question(asker, qid)["mine"] is True
        for m in (teacher, mod):
            assert question(m, qid)["identity"] == "asker"
        # Upvote toggles; the list order is votes then age, also in a fresh snapshot.
        assert (await other.ok("qa.upvote", {"question_id": qid}))["votes"] == 1
        assert (await mod.ok("qa.upvote", {"question_id": qid}))["votes"] == 2
        assert (await mod.ok("qa.upvote", {"question_id": qid}))["votes"] == 1
        await teacher.ok("qa.answer", {"question_id": qid, "text": "Yes."})
        late = await Member(stoa_server, "qa", "late", channel=channel).start()
        try:
            listed = late.state()["questions"]
            assert [q["id"] for q in listed] == [qid, named]
            assert listed[0]["identity"] is None and listed[0]["answer"] == "Yes."
        finally:
            await late.close()
    finally:
        await close_all([teacher, mod, asker, other])


@pytest.mark.parametrize("channel", TRANSPORTS)
async def test_every_moderator_action_by_a_student_is_refused(stoa_server, channel):
    teacher = Member(stoa_server, "mod", "teacher", "instructor", channel=channel)
    student = Member(stoa_server, "mod", "stu", channel=channel)
    peer = Member(stoa_server, "mod", "peer", channel=channel)
    await start_all([teacher, student, peer])
    try:
        await import_bank(stoa_server.app[STORE], bank("mods", 3))
        msg = (await teacher.ok("chat.send", {"text": "teacher's line"}))["message_id"]
        peer_msg = (await peer.ok("chat.send", {"text": "peer's line"}))["message_id"]
        qid = (await peer.ok("qa.ask", {"text": "Why?"}))["question_id"]
        poll = (await teacher.ok("poll.create", {"question": "Ready?", "options": ["y", "n"]}))["poll_id"]
        open_poll = (await teacher.ok("poll.create", {"question": "Go?", "options": ["y", "n"],
                                                      "start": True}))["poll_id"]
        round_id = (await teacher.ok("quiz.start", {"bank": "mods"}))["round_id"]
        await peer.ok("hand.raise")
        attempts = [
            ("chat.pin", {"message_id": msg}),
            ("chat.delete", {"message_id": peer_msg}),
            ("chat.edit", {"message_id": msg, "text": "hijacked"}),
            ("qa.answer", {"question_id": qid, "text": "because"}),
            ("qa.answer", {"question_id": qid, "live": True}),
            ("qa.dismiss", {"question_id": qid}),
            ("qa.feature", {"question_id": qid, "featured": True}),
            ("poll.create", {"question": "Mine?", "options": ["a", "b"]}),
            ("poll.start", {"poll_id": poll}),
            ("poll.close", {"poll_id": open_poll}),
            ("whiteboard.clear", {}),
            ("whiteboard.permit", {"identities": "all"}),
            ("whiteboard.stroke", {"tool": "pen", "points": [[0.1, 0.1], [0.2, 0.2]], "color": "#000000",
                                   "width": 2}),
            ("quiz.start", {"bank": "mods"}),
            ("quiz.end", {"round_id": round_id}),
            ("hand.lower", {"identity": "peer"}),
        ]
        for type, data in attempts:
            reply = await student.call(type, data)
            assert reply["type"] == "error" and reply["code"] == "forbidden", (type, reply)
            assert reply["message"]
        # Nothing of it happened.
        snap = (await Member(stoa_server, "mod", "check", "moderator", channel=channel).start())
        try:
            state = snap.state()
            assert not state["pinned"]
            assert {m["text"] for m in state["chat"] if m["kind"] == "user"} >= {"teacher's line", "peer's line"}
            assert state["questions"][0]["status"] == "open" and not state["questions"][0]["featured"]
            assert {p["id"]: p["status"] for p in state["polls"]}[open_poll] == "open"
            assert [h["identity"] for h in state["hands"]["queue"]] == ["peer"]
            assert state["quiz"]["status"] == "running"
        finally:
            await snap.close()
        # The same actions from the instructor go through.
        await teacher.ok("chat.pin", {"message_id": peer_msg})
        await teacher.ok("qa.feature", {"question_id": qid, "featured": True})
        await teacher.ok("hand.lower", {"identity": "peer"})
        await teacher.ok("quiz.end", {"round_id": round_id})
    finally:
        await close_all([teacher, student, peer])
