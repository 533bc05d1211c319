"""InteractiveRoom on real storage (SQLite and PostgreSQL), driven by in-process members."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import pytest

from classroom.interactive import InteractiveRoom, RoomOptions
from classroom.interactive.quiz import import_bank
from storage import open_store
from storage.interactive import InteractiveRepository
from tests.fixtures.interactive import Client, FakeClock, request
from tests.serve import eventually


async def joined(room, *clients):
    for c in clients:
        await room.join(c)
    await room.flush()
    return clients


async def results_interval(room, clock, watcher):
    """Move the room's clock past the live poll results interval: the coalesced poll.results goes out."""
    seen = len(watcher.of_type("poll.results"))
    clock.advance(room.options.poll_results_interval_s)
    await eventually(lambda: len(watcher.of_type("poll.results")) > seen, what="the coalesced poll.results")
    await room.flush()


def students(n, prefix="s"):
    return [Client(f"{prefix}{i:02d}") for i in range(n)]


def ok(reply):
    assert reply["type"] == "ack", reply
    return reply["data"]


def refused(reply, code):
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert reply["message"]
    return reply["message"]


# ---- chat --------------------------------------------------------------------------------------------------
async def test_chat_send_reply_edit_delete_pin(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher, mod, alice, bob = await joined(room, Client("teacher", "instructor"), Client("mod", "moderator"),
                                            Client("alice"), Client("bob"))
    first = ok(await request(room, alice, "chat.send", {"text": "hello"}))
    assert bob.last("chat.message")["data"]["text"] == "hello"
    assert bob.last("chat.message")["data"]["identity"] == "alice"
    reply = ok(await request(room, bob, "chat.send", {"text": "hi", "reply_to": first["message_id"]}))
    assert teacher.last("chat.message")["data"]["reply_to"] == first["message_id"]
    refused(await request(room, bob, "chat.send", {"text": "x", "reply_to": 999999}), "not_found")

    refused(await request(room, bob, "chat.edit", {"message_id": first["message_id"], "text": "no"}), "forbidden")
    refused(await request(room, teacher, "chat.edit", {"message_id": first["message_id"], "text": "no"}),
            "forbidden")
    ok(await request(room, alice, "chat.edit", {"message_id": first["message_id"], "text": "hello!"}))
    assert bob.last("chat.edited")["data"]["text"] == "hello!"

    refused(await request(room, alice, "chat.delete", {"message_id": reply["message_id"]}), "forbidden")
    ok(await request(room, mod, "chat.delete", {"message_id": reply["message_id"]}))
    assert alice.last("chat.deleted")["data"]["message_id"] == reply["message_id"]
    refused(await request(room, bob, "chat.edit", {"message_id": reply["message_id"], "text": "x"}), "not_found")

    refused(await request(room, alice, "chat.pin", {"message_id": first["message_id"]}), "forbidden")
    ok(await request(room, teacher, "chat.pin", {"message_id": first["message_id"]}))
    assert bob.last("chat.pinned")["data"]["pinned"] is True

    state = await room.state_for(Client("late"))
    assert [m["text"] for m in state["chat"]] == ["hello!"]
    assert [m["id"] for m in state["pinned"]] == [first["message_id"]]


async def test_chat_text_limit_history_and_system_messages(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    alice, bob = await joined(room, Client("alice"), Client("bob"))
    refused(await request(room, alice, "chat.send", {"text": "é" * 2049}), "too_large")  # 4098 bytes
    ok(await request(room, alice, "chat.send", {"text": "é" * 2048}))
    for i in range(105):
        clock.advance(1)
        ok(await request(room, alice, "chat.send", {"text": f"m{i}"}))
    await room.system_message("carol joined")
    await room.flush()
    assert bob.last("chat.message")["data"] == {**bob.last("chat.message")["data"], "kind": "system",
                                                "text": "carol joined"}
    state = await room.state_for(bob)
    assert len(state["chat"]) == 100
    assert state["chat"][-1]["kind"] == "system"
    assert state["chat"][0]["text"] == "m6"
    # earlier history pages through the repository (the REST API's source)
    page = await room.repo.chat_page(room.session_id, before_id=state["chat"][0]["id"], limit=10)
    assert [m["text"] for m in page] == [f"m{i}" for i in range(5, -1, -1)] + ["é" * 2048]


async def test_author_deletes_own_message_and_everyone_sees_it(make_room):
    room = make_room()
    alice, bob = await joined(room, Client("alice"), Client("bob"))
    keep = ok(await request(room, alice, "chat.send", {"text": "keep"}))["message_id"]
    gone = ok(await request(room, alice, "chat.send", {"text": "oops"}))["message_id"]
    assert ok(await request(room, alice, "chat.delete", {"message_id": gone})) == {"message_id": gone}
    for who in (alice, bob):
        assert who.last("chat.deleted")["data"] == {"message_id": gone, "by": "alice"}
    assert [m["id"] for m in (await room.state_for(Client("late")))["chat"]] == [keep]
    refused(await request(room, alice, "chat.delete", {"message_id": gone}), "not_found")


async def test_moderator_unpins_and_everyone_sees_it(make_room):
    room = make_room()
    teacher, mod, alice = await joined(room, Client("teacher", "instructor"), Client("mod", "moderator"),
                                       Client("alice"))
    mid = ok(await request(room, alice, "chat.send", {"text": "important"}))["message_id"]
    ok(await request(room, teacher, "chat.pin", {"message_id": mid}))
    assert [m["id"] for m in (await room.state_for(alice))["pinned"]] == [mid]
    assert ok(await request(room, mod, "chat.pin", {"message_id": mid, "pinned": False})) == \
        {"message_id": mid, "pinned": False}
    for who in (teacher, mod, alice):
        unpinned = who.last("chat.pinned")["data"]
        assert unpinned["message_id"] == mid and unpinned["pinned"] is False
        assert unpinned["message"]["pinned"] is False
    state = await room.state_for(Client("late"))
    assert state["pinned"] == []
    assert [(m["id"], m["pinned"]) for m in state["chat"]] == [(mid, False)]
    refused(await request(room, alice, "chat.pin", {"message_id": mid, "pinned": False}), "forbidden")


async def test_deleting_a_recent_message_backfills_history_from_storage(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher, alice = await joined(room, Client("teacher", "instructor"), Client("alice"))
    ids = []
    for i in range(102):
        clock.advance(1)
        ids.append(ok(await request(room, alice, "chat.send", {"text": f"m{i}"}))["message_id"])

    async def texts(r):
        return [m["text"] for m in (await r.state_for(Client("late")))["chat"]]

    assert await texts(room) == [f"m{i}" for i in range(2, 102)]
    ok(await request(room, alice, "chat.delete", {"message_id": ids[50]}))  # own, inside the window
    assert await texts(room) == [f"m{i}" for i in range(1, 102) if i != 50]
    ok(await request(room, teacher, "chat.delete", {"message_id": ids[1]}))  # the oldest in the window
    assert await texts(room) == [f"m{i}" for i in range(0, 102) if i not in (1, 50)]
    ok(await request(room, teacher, "chat.delete", {"message_id": ids[0]}))  # storage runs out: 99 left
    live = await texts(room)
    assert live == [f"m{i}" for i in range(2, 102) if i != 50] and len(live) == 99
    # what a restarted room loads from storage is what the running one holds
    assert await texts(make_room(session_id=room.session_id)) == live


async def test_typing_is_throttled_not_acked_not_stored(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    alice, bob = await joined(room, Client("alice"), Client("bob"))
    for _ in range(10):
        await room.handle(alice, alice.envelope("chat.typing", {"typing": True}))
    await room.flush()
    assert 1 <= len(bob.of_type("chat.typing")) <= 2  # burst of 2, then dropped silently
    assert alice.of_type("chat.typing") == [] and alice.of_type("ack") == [] and alice.of_type("error") == []
    assert (await room.state_for(bob))["chat"] == []


async def test_chat_rate_limit(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    (alice,) = await joined(room, Client("alice"))
    for i in range(10):
        ok(await request(room, alice, "chat.send", {"text": f"{i}"}))
    assert "slow down" in refused(await request(room, alice, "chat.send", {"text": "x"}), "rate_limited")
    clock.advance(1)
    ok(await request(room, alice, "chat.send", {"text": "later"}))


# ---- Q&A ---------------------------------------------------------------------------------------------------
async def test_anonymous_question_hidden_from_students_not_moderators(make_room):
    room = make_room()
    teacher, mod, asker, other = await joined(room, Client("teacher", "instructor"), Client("mod", "moderator"),
                                              Client("asker", name="Ann Asker"), Client("other"))
    qid = ok(await request(room, asker, "qa.ask", {"text": "Is this on the exam?", "anonymous": True}))["question_id"]
    seen = other.last("qa.question")["data"]
    assert seen["identity"] is None and seen["name"] == "Anonymous"
    assert "asker" not in json.dumps(other.received) and "Ann Asker" not in json.dumps(other.received)
    for m in (teacher, mod):
        assert m.last("qa.question")["data"]["identity"] == "asker"
        assert m.last("qa.question")["data"]["name"] == "Ann Asker"
    assert asker.last("qa.question")["data"]["mine"] is True
    # the state on (re)connect applies the same rule
    late_student = Client("late")
    assert (await room.state_for(late_student))["questions"][0]["identity"] is None
    assert (await room.state_for(Client("late-mod", "moderator")))["questions"][0]["identity"] == "asker"
    # updates keep hiding it
    ok(await request(room, other, "qa.upvote", {"question_id": qid}))
    assert other.last("qa.question")["data"]["identity"] is None
    assert other.last("qa.question")["data"]["voted"] is True
    assert "Ann Asker" not in json.dumps(other.received)


async def test_qa_votes_toggle_ordering_answer_dismiss_feature(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher, a, b, c = await joined(room, Client("teacher", "instructor"), Client("a"), Client("b"), Client("c"))
    q1 = ok(await request(room, a, "qa.ask", {"text": "first"}))["question_id"]
    clock.advance(1)
    q2 = ok(await request(room, a, "qa.ask", {"text": "second"}))["question_id"]
    clock.advance(1)
    q3 = ok(await request(room, b, "qa.ask", {"text": "third"}))["question_id"]
    assert ok(await request(room, b, "qa.upvote", {"question_id": q3})) == {"question_id": q3, "voted": True,
                                                                            "votes": 1}
    ok(await request(room, c, "qa.upvote", {"question_id": q3}))
    ok(await request(room, c, "qa.upvote", {"question_id": q2}))
    # upvote once per person: "on" again is a no-op, toggling turns it off
    assert ok(await request(room, c, "qa.upvote", {"question_id": q2, "on": True}))["votes"] == 1
    assert ok(await request(room, c, "qa.upvote", {"question_id": q2}))["voted"] is False
    ok(await request(room, b, "qa.upvote", {"question_id": q2}))
    order = [q["id"] for q in (await room.state_for(a))["questions"]]
    assert order == [q3, q2, q1]  # 2, 1 and 0 votes: votes first
    ok(await request(room, a, "qa.upvote", {"question_id": q1}))
    ok(await request(room, b, "qa.upvote", {"question_id": q1}))
    # q1 (2 votes, older) now ties q3 (2 votes): age breaks the tie
    assert [q["id"] for q in (await room.state_for(a))["questions"]] == [q1, q3, q2]

    refused(await request(room, a, "qa.answer", {"question_id": q1, "text": "yes"}), "forbidden")
    ok(await request(room, teacher, "qa.answer", {"question_id": q1, "text": "yes"}))
    assert c.last("qa.question")["data"] | {} == {**c.last("qa.question")["data"], "status": "answered",
                                                  "answer": "yes"}
    ok(await request(room, teacher, "qa.answer", {"question_id": q2, "live": True}))
    assert c.last("qa.question")["data"]["answered_live"] is True
    ok(await request(room, teacher, "qa.feature", {"question_id": q2}))
    assert c.last("qa.question")["data"]["featured"] is True
    ok(await request(room, teacher, "qa.dismiss", {"question_id": q3}))
    assert c.last("qa.question")["data"]["status"] == "dismissed"
    assert q3 not in [q["id"] for q in (await room.state_for(c))["questions"]]
    assert q3 in [q["id"] for q in (await room.state_for(teacher))["questions"]]
    refused(await request(room, c, "qa.upvote", {"question_id": q3}), "conflict")
    refused(await request(room, c, "qa.upvote", {"question_id": uuid.uuid4().hex}), "not_found")


# ---- polls -------------------------------------------------------------------------------------------------
async def test_poll_with_30_members_gives_exact_counts(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher = Client("teacher", "instructor")
    class_ = students(30)
    await joined(room, teacher, *class_)
    poll = ok(await request(room, teacher, "poll.create",
                            {"question": "Pick one", "options": ["A", "B", "C", "D"]}))
    assert all(not s.of_type("poll.created") for s in class_)  # drafts are for moderators only
    ok(await request(room, teacher, "poll.start", {"poll_id": poll["poll_id"]}))
    assert all(s.last("poll.opened")["data"]["id"] == poll["poll_id"] for s in class_)
    await asyncio.gather(*(room.handle(s, s.envelope("poll.vote", {"poll_id": poll["poll_id"], "choices": [i % 4]}))
                           for i, s in enumerate(class_)))
    await room.flush()
    assert all(s.of_type("ack") for s in class_)
    assert not teacher.of_type("poll.results")  # live results are coalesced: none before the interval ends
    await results_interval(room, clock, teacher)
    assert len(teacher.of_type("poll.results")) == 1  # 30 votes in one interval: one update, exact
    expected = [8, 8, 7, 7]
    assert teacher.last("poll.results")["data"]["tally"]["counts"] == expected
    assert class_[0].last("poll.results")["data"]["tally"]["total_voters"] == 30
    assert "voters" not in class_[0].last("poll.results")["data"]
    assert len(teacher.last("poll.results")["data"]["voters"]) == 30
    final = ok(await request(room, teacher, "poll.close", {"poll_id": poll["poll_id"]}))["results"]
    assert final["counts"] == expected and final["total_voters"] == 30
    assert final["percentages"] == [26.7, 26.7, 23.3, 23.3]
    assert class_[5].last("poll.closed")["data"]["tally"]["counts"] == expected
    stored = {p["id"]: p for p in await room.repo.list_polls(room.session_id)}[poll["poll_id"]]
    assert stored["status"] == "closed" and stored["final_results"]["counts"] == expected
    assert len(stored["votes"]) == 30
    refused(await request(room, class_[0], "poll.vote", {"poll_id": poll["poll_id"], "choices": [1]}), "conflict")


async def test_poll_multiple_choice_change_vote_and_hidden_results(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher, a, b = await joined(room, Client("teacher", "instructor"), Client("a"), Client("b"))
    pid = ok(await request(room, teacher, "poll.create",
                           {"question": "Which?", "options": ["x", "y", "z"], "multiple": True,
                            "results": "after_close", "anonymous": True, "start": True}))["poll_id"]
    assert a.last("poll.opened")["data"]["tally"] is None
    ok(await request(room, a, "poll.vote", {"poll_id": pid, "choices": [0, 1]}))
    ok(await request(room, b, "poll.vote", {"poll_id": pid, "choices": [2]}))
    await results_interval(room, clock, teacher)
    assert a.of_type("poll.results") == []  # results only after close
    assert teacher.last("poll.results")["data"]["tally"]["counts"] == [1, 1, 1]
    assert "voters" not in teacher.last("poll.results")["data"]  # anonymous poll
    changed = ok(await request(room, b, "poll.vote", {"poll_id": pid, "choices": [1, 2]}))
    assert changed["changed"] is True
    refused(await request(room, b, "poll.vote", {"poll_id": pid, "choices": [3]}), "invalid")
    final = ok(await request(room, teacher, "poll.close", {"poll_id": pid}))["results"]
    # 4 choices cast by 2 voters: percentage = option votes / all choices cast
    assert final == {"counts": [1, 2, 1], "percentages": [25.0, 50.0, 25.0], "total_voters": 2,
                     "total_choices": 4}
    assert a.last("poll.closed")["data"]["tally"] == final
    assert a.last("poll.closed")["data"]["my_choices"] == [0, 1]
    refused(await request(room, teacher, "poll.close", {"poll_id": pid}), "conflict")
    refused(await request(room, teacher, "poll.start", {"poll_id": pid}), "conflict")


async def test_single_choice_poll_refuses_two_choices(make_room):
    room = make_room()
    teacher, a = await joined(room, Client("teacher", "instructor"), Client("a"))
    pid = ok(await request(room, teacher, "poll.create", {"question": "?", "options": ["x", "y"], "start": True}))
    msg = refused(await request(room, a, "poll.vote", {"poll_id": pid["poll_id"], "choices": [0, 1]}), "invalid")
    assert "single choice" in msg


async def test_poll_needs_2_to_10_options(make_room):
    room = make_room()
    (teacher,) = await joined(room, Client("teacher", "instructor"))
    for options in (["only"], [f"o{i}" for i in range(11)]):
        msg = refused(await request(room, teacher, "poll.create", {"question": "?", "options": options}),
                      "invalid")
        assert "/options" in msg, msg
    assert await room.repo.list_polls(room.session_id) == []


async def test_poll_duration_closes_itself_and_close_cancels_timers(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher, a = await joined(room, Client("teacher", "instructor"), Client("a"))
    pid = ok(await request(room, teacher, "poll.create",
                           {"question": "quick", "options": ["x", "y"], "duration_s": 1, "start": True}))["poll_id"]
    ok(await request(room, a, "poll.vote", {"poll_id": pid, "choices": [1]}))
    clock.advance(0.9)
    await room.flush()
    assert not a.of_type("poll.closed")
    clock.advance(0.1)  # the poll's minute (here: second) is up on the room's clock
    await eventually(lambda: a.of_type("poll.closed"), what="poll.closed")
    await room.flush()
    assert a.last("poll.closed")["data"]["tally"]["counts"] == [0, 1]
    stored = {p["id"]: p for p in await room.repo.list_polls(room.session_id)}[pid]
    assert stored["status"] == "closed" and stored["final_results"]["counts"] == [0, 1]

    other = make_room()
    await joined(other, teacher)
    ok(await request(other, teacher, "poll.create",
                     {"question": "long", "options": ["x", "y"], "duration_s": 3600, "start": True}))
    timers = list(other._timers.values())
    assert timers
    await other.close()
    assert all(t.done() for t in timers)
    assert not [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith(("stoa-timer", "stoa-outbox"))
                and not t.done() and t not in room._timers.values()
                and not any(t is c.task for c in room._conns.values())]


# ---- quizzes -----------------------------------------------------------------------------------------------
def bank(name, n):
    return json.dumps({"bank": name, "questions": [
        {"prompt": f"{name} q{i}: {i} + 1 = ?", "choices": [str(i), str(i + 1), str(i + 2)], "answer": 1}
        for i in range(n)]})


async def new_bank(store, size: int) -> str:
    """Import a bank of `size` questions under a fresh name; returns the name."""
    name = f"bank-{uuid.uuid4().hex[:8]}"
    await import_bank(store, bank(name, size))
    return name


@pytest.mark.parametrize("bank_size,max_per_question", [(10, 1), (4, 3)])
async def test_quiz_round_spreads_questions(make_room, interactive_store, bank_size, max_per_question):
    store, _ = interactive_store
    name = f"bank-{uuid.uuid4().hex[:8]}"
    imported = await import_bank(store, bank(name, bank_size))
    assert imported["count"] == bank_size
    room = make_room()
    teacher, observer = Client("teacher", "instructor"), Client("watcher", "viewer")
    class_ = students(10)
    await joined(room, teacher, observer, *class_)
    started = ok(await request(room, teacher, "quiz.start", {"bank": name, "duration_s": 60}))
    assert started["students"] == 10
    questions = {s.identity: s.last("quiz.question")["data"] for s in class_}
    assert not observer.of_type("quiz.question") and not teacher.of_type("quiz.question")
    assert all("answer" not in q for q in questions.values())
    counts = Counter(q["question_id"] for q in questions.values())
    assert max(counts.values()) == max_per_question
    assert len(counts) == min(bank_size, 10)

    # answer: half right, half wrong; graded on the server
    for i, s in enumerate(class_):
        choice = 1 if i % 2 == 0 else 0
        result = ok(await request(room, s, "quiz.answer", {"round_id": started["round_id"], "choice": choice}))
        assert result["correct"] is (i % 2 == 0)
        assert s.last("quiz.result")["data"]["correct"] is (i % 2 == 0)
    refused(await request(room, class_[0], "quiz.answer", {"round_id": started["round_id"], "choice": 1}),
            "conflict")
    progress = teacher.last("quiz.progress")["data"]
    assert [p["correct"] for p in progress["students"]] == [i % 2 == 0 for i in range(10)]
    assert sum(q["answered"] for q in progress["questions"]) == 10
    assert all(q["accuracy"] is not None for q in progress["questions"])
    assert not any(s.of_type("quiz.progress") for s in class_)
    ok(await request(room, teacher, "quiz.end", {"round_id": started["round_id"]}))
    assert class_[3].last("quiz.ended")["data"]["round_id"] == started["round_id"]
    stored = await room.repo.quiz_round(started["round_id"])
    assert stored["ended_at"] is not None
    assert sorted((a["identity"], a["correct"]) for a in stored["assignments"]) == \
        [(s.identity, i % 2 == 0) for i, s in enumerate(class_)]


async def test_quiz_timer_ends_round_and_late_answers_are_refused(make_room, interactive_store):
    store, _ = interactive_store
    name = await new_bank(store, 3)
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher, a = await joined(room, Client("teacher", "instructor"), Client("a"))
    refused(await request(room, a, "quiz.start", {"bank": name}), "forbidden")
    rid = ok(await request(room, teacher, "quiz.start", {"bank": name, "duration_s": 1}))["round_id"]
    refused(await request(room, teacher, "quiz.start", {"bank": name}), "conflict")
    assert (await room.state_for(a))["quiz"]["round_id"] == rid
    clock.advance(1)
    await eventually(lambda: a.of_type("quiz.ended"), what="quiz.ended")
    await room.flush()
    assert a.last("quiz.ended")["data"]["round_id"] == rid
    refused(await request(room, a, "quiz.answer", {"round_id": rid, "choice": 0}), "conflict")
    assert (await room.state_for(a))["quiz"] is None


async def test_quiz_round_without_duration_lasts_30_seconds(make_room, interactive_store):
    store, _ = interactive_store
    name = await new_bank(store, 2)
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher, a = await joined(room, Client("teacher", "instructor"), Client("a"))
    started = ok(await request(room, teacher, "quiz.start", {"bank": name}))
    assert started["ends_at"] == clock.now + 30
    question = a.last("quiz.question")["data"]
    assert question["duration_s"] == 30 and question["ends_at"] == clock.now + 30
    progress = teacher.last("quiz.progress")["data"]
    assert progress["duration_s"] == 30 and progress["ends_at"] - progress["started_at"] == 30
    assert (await room.repo.quiz_round(started["round_id"]))["duration_s"] == 30


async def test_quiz_with_empty_bank_or_no_students(make_room, interactive_store):
    store, _ = interactive_store
    room = make_room()  # no quiz_bank option: the bank is every imported question, and there are none yet
    teacher, viewer, student = await joined(room, Client("teacher", "instructor"), Client("watcher", "viewer"),
                                            Client("s1"))

    async def nothing_started() -> None:
        assert (await room.state_for(teacher))["quiz"] is None
        assert await room.repo.active_quiz_rounds(room.session_id) == []
        for m in (teacher, viewer, student):
            assert not m.of_type("quiz.question") and not m.of_type("quiz.progress")

    # An empty bank, with a student there to ask: refused for the bank; nothing stored or sent.
    for data in ({}, {"bank": f"empty-{uuid.uuid4().hex}"}):
        assert "bank is empty" in refused(await request(room, teacher, "quiz.start", data), "not_found")
    await nothing_started()
    # A bank with questions but no student to ask (a viewer is not one): refused for the students.
    name = await new_bank(store, 2)
    room.detach(student)
    assert "no students" in refused(await request(room, teacher, "quiz.start", {"bank": name}), "conflict")
    await nothing_started()
    # Once a student is back, the same bank starts a round.
    await joined(room, student)
    assert ok(await request(room, teacher, "quiz.start", {"bank": name}))["students"] == 1
    assert student.last("quiz.question")["data"]["question_id"]


# ---- whiteboard --------------------------------------------------------------------------------------------
async def test_whiteboard_permissions_undo_clear_and_late_joiner(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher, a, b = await joined(room, Client("teacher", "instructor"), Client("a"), Client("b"))
    line = {"tool": "line", "points": [[0.1, 0.1], [0.9, 0.9]], "color": "#FF0000", "width": 4}
    refused(await request(room, a, "whiteboard.stroke", line), "forbidden")
    refused(await request(room, a, "whiteboard.permit", {"identities": ["a"]}), "forbidden")
    s1 = ok(await request(room, teacher, "whiteboard.stroke", line))["stroke_id"]
    assert b.last("whiteboard.stroke")["data"]["color"] == "#ff0000"
    ok(await request(room, teacher, "whiteboard.permit", {"identities": ["a"]}))
    assert a.last("whiteboard.permissions")["data"]["may_draw"] is True
    assert b.last("whiteboard.permissions")["data"]["may_draw"] is False
    s2 = ok(await request(room, a, "whiteboard.stroke", {"tool": "pen", "points": [[0.2, 0.2], [0.3, 0.4]]}))
    refused(await request(room, b, "whiteboard.stroke", line), "forbidden")
    refused(await request(room, a, "whiteboard.stroke", {"tool": "pen", "points": [[0, 0]] * 2001}), "too_large")
    refused(await request(room, a, "whiteboard.stroke", {"tool": "rectangle", "points": [[0, 0]]}), "invalid")
    late = Client("late")
    board = (await room.state_for(late))["whiteboard"]
    assert [s["id"] for s in board["strokes"]] == [s1, s2["stroke_id"]] and board["may_draw"] is False
    ok(await request(room, a, "whiteboard.undo"))
    assert teacher.last("whiteboard.undone")["data"]["stroke_id"] == s2["stroke_id"]
    refused(await request(room, a, "whiteboard.undo"), "not_found")  # teacher's stroke is not a's to undo
    ok(await request(room, teacher, "whiteboard.permit", {"identities": "all"}))
    ok(await request(room, b, "whiteboard.stroke", {"tool": "text", "points": [[0.5, 0.5]], "text": "hi"}))
    refused(await request(room, b, "whiteboard.clear"), "forbidden")
    clock.advance(1)
    ok(await request(room, teacher, "whiteboard.clear"))
    assert b.last("whiteboard.cleared")
    clock.advance(1)
    s4 = ok(await request(room, b, "whiteboard.stroke", {"tool": "eraser", "points": [[0.5, 0.5]]}))["stroke_id"]
    assert [s["id"] for s in (await room.state_for(late))["whiteboard"]["strokes"]] == [s4]
    assert [s["id"] for s in await room.repo.board(room.session_id)] == [s4]


async def test_whiteboard_stroke_rate_limit_keeps_earlier_strokes(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher, a = await joined(room, Client("teacher", "instructor"), Client("a"))
    burst = int(room.options.rates["whiteboard"].burst)
    dot = {"tool": "pen", "points": [[0.5, 0.5]]}
    accepted = [ok(await request(room, teacher, "whiteboard.stroke", dot))["stroke_id"] for _ in range(burst)]
    msg = refused(await request(room, teacher, "whiteboard.stroke", dot), "rate_limited")
    assert "whiteboard" in msg
    assert [s["id"] for s in (await room.state_for(a))["whiteboard"]["strokes"]] == accepted
    assert [s["id"] for s in await room.repo.board(room.session_id)] == accepted
    assert len(a.of_type("whiteboard.stroke")) == burst
    clock.advance(1)
    later = ok(await request(room, teacher, "whiteboard.stroke", dot))["stroke_id"]
    assert [s["id"] for s in (await room.state_for(a))["whiteboard"]["strokes"]] == accepted + [later]


# ---- hands and reactions -----------------------------------------------------------------------------------
async def test_hands_queue_and_reactions(make_room):
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher, a, b, c = await joined(room, Client("teacher", "instructor"), Client("a"), Client("b"), Client("c"))
    for s in (b, a, c):
        clock.advance(1)
        ok(await request(room, s, "hand.raise"))
    assert [h["identity"] for h in teacher.last("hand.queue")["data"]["queue"]] == ["b", "a", "c"]
    assert a.last("hand.state")["data"] == {"raised": True, "position": 2, "count": 3}
    assert ok(await request(room, a, "hand.raise"))["already"] is True
    refused(await request(room, a, "hand.lower", {"identity": "b"}), "forbidden")
    ok(await request(room, teacher, "hand.lower", {"identity": "b"}))
    ok(await request(room, c, "hand.lower"))
    refused(await request(room, c, "hand.lower"), "not_found")
    assert [h["identity"] for h in teacher.last("hand.queue")["data"]["queue"]] == ["a"]
    assert (await room.state_for(a))["hands"] == {"raised": True, "position": 1, "count": 1}
    assert [h["identity"] for h in (await room.state_for(teacher))["hands"]["queue"]] == ["a"]

    ok(await request(room, a, "reaction.send", {"emoji": "👏"}))
    assert b.last("reaction")["data"]["emoji"] == "👏"
    refused(await request(room, a, "reaction.send", {"emoji": "hello"}), "invalid")
    codes = [(await request(room, a, "reaction.send", {"emoji": "🎉"}))["type"] for _ in range(8)]
    assert "error" in codes and a.last("error")["code"] == "rate_limited"


# ---- roles and flags ---------------------------------------------------------------------------------------
MODERATOR_ONLY = [
    ("chat.pin", {"message_id": 1}),
    ("qa.answer", {"question_id": "0" * 32, "text": "x"}),
    ("qa.dismiss", {"question_id": "0" * 32}),
    ("qa.feature", {"question_id": "0" * 32}),
    ("poll.create", {"question": "q", "options": ["a", "b"]}),
    ("poll.start", {"poll_id": "0" * 32}),
    ("poll.close", {"poll_id": "0" * 32}),
    ("whiteboard.clear", {}),
    ("whiteboard.permit", {"identities": "all"}),
    ("quiz.start", {}),
    ("quiz.end", {"round_id": "0" * 32}),
]


async def test_every_moderator_only_action_is_refused_for_students(make_room):
    room = make_room()
    teacher, student = await joined(room, Client("teacher", "instructor"), Client("student"))
    msg = ok(await request(room, student, "chat.send", {"text": "mine"}))["message_id"]
    for type_, data in MODERATOR_ONLY:
        data = {**data, "message_id": msg} if "message_id" in data else data
        reply = await request(room, student, type_, data)
        assert "instructor or moderator" in refused(reply, "forbidden"), type_
    # the other moderator-only actions with a target
    refused(await request(room, student, "hand.lower", {"identity": "teacher"}), "forbidden")
    other = ok(await request(room, teacher, "chat.send", {"text": "teacher's"}))["message_id"]
    refused(await request(room, student, "chat.delete", {"message_id": other}), "forbidden")
    assert not any(m["type"] not in ("state", "chat.message", "ack") for m in teacher.received)


async def test_viewers_and_members_without_data_grant_are_read_only(make_room):
    room = make_room()
    viewer, muted, a = await joined(room, Client("viewer", "viewer"),
                                    Client("muted", can_publish_data=False), Client("a"))
    for who in (viewer, muted):
        for type_, data in [("chat.send", {"text": "hi"}), ("hand.raise", {}), ("reaction.send", {"emoji": "👍"})]:
            refused(await request(room, who, type_, data), "forbidden")
    ok(await request(room, a, "chat.send", {"text": "hi"}))
    assert viewer.last("chat.message")["data"]["text"] == "hi"


async def test_feature_flags(make_room):
    room = make_room(features={"chat": False, "polls": False, "whiteboard": False, "quiz": False, "qa": False})
    teacher, a = await joined(room, Client("teacher", "instructor"), Client("a"))
    for who, type_, data in [(a, "chat.send", {"text": "x"}), (a, "qa.ask", {"text": "x"}),
                             (teacher, "poll.create", {"question": "q", "options": ["a", "b"]}),
                             (teacher, "whiteboard.stroke", {"tool": "pen", "points": [[0, 0]]}),
                             (teacher, "quiz.start", {})]:
        assert "disabled" in refused(await request(room, who, type_, data), "feature_disabled")
    state = await room.state_for(a)
    assert state["features"]["chat"] is False and state["chat"] == [] and state["whiteboard"] is None


# ---- robustness --------------------------------------------------------------------------------------------
async def test_a_failing_member_does_not_break_the_room(make_room):
    room = make_room(options=RoomOptions(send_timeout_s=0.2))
    broken, a, b = await joined(room, Client("broken", broken=True), Client("a"), Client("b"))
    ok(await request(room, a, "chat.send", {"text": "still here"}))
    assert b.last("chat.message")["data"]["text"] == "still here"
    await room.handle(broken, broken.envelope("chat.send", {"text": "from broken"}))
    await room.flush()
    assert b.last("chat.message")["data"]["text"] == "from broken"
    assert room.outbox_stats(broken)["failures"] >= 2

    class Hanging(Client):
        async def send(self, message):
            await asyncio.Event().wait()

    hanging = Hanging("hanging")
    room.attach(hanging)
    await room.handle(a, a.envelope("chat.send", {"text": "not blocked"}))
    # before the hanging send gave up (10 s)
    await eventually(lambda: b.of_type("chat.message")[-1]["data"]["text"] == "not blocked", timeout=5,
                     interval=0.01, what="the fan-out past a hanging member")
    await room.flush()  # the hanging member's send times out and counts as a failure
    assert room.outbox_stats(hanging)["failures"] >= 1
    room.detach(hanging)
    room.detach(broken)
    assert b.last("chat.message")["data"]["text"] == "not blocked"


async def test_engagement_counters_and_session_events(make_room, interactive_store):
    store, _ = interactive_store
    room = make_room()
    teacher, a = await joined(room, Client("teacher", "instructor"), Client("a"))
    ok(await request(room, a, "chat.send", {"text": "1"}))
    ok(await request(room, a, "chat.send", {"text": "2"}))
    qid = ok(await request(room, a, "qa.ask", {"text": "q"}))["question_id"]
    ok(await request(room, teacher, "qa.upvote", {"question_id": qid}))
    pid = ok(await request(room, teacher, "poll.create", {"question": "q", "options": ["a", "b"], "start": True}))
    ok(await request(room, a, "poll.vote", {"poll_id": pid["poll_id"], "choices": [0]}))
    ok(await request(room, a, "hand.raise"))
    ok(await request(room, a, "reaction.send", {"emoji": "🔥"}))
    ok(await request(room, teacher, "poll.close", {"poll_id": pid["poll_id"]}))
    counters = await room.repo.engagement(room.session_id)
    assert counters["a"] == {"chat_messages": 2, "questions": 1, "votes": 1, "hand_raises": 1, "reactions": 1,
                             "strokes": 0, "quiz_answers": 0}
    assert counters["teacher"]["votes"] == 1
    types = [e.type for e in await store.events.list(room.session_id)]
    assert types == ["chat.sent", "chat.sent", "question.asked", "question.voted", "poll.created", "poll.opened",
                     "poll.voted", "hand.raised", "reaction.sent", "poll.closed"]


async def test_engagement_counts_strokes_and_quiz_answers(make_room, interactive_store):
    store, _ = interactive_store
    name = await new_bank(store, 2)
    room = make_room()
    teacher, a, b = await joined(room, Client("teacher", "instructor"), Client("a"), Client("b"))
    ok(await request(room, teacher, "whiteboard.permit", {"identities": ["a"]}))
    ok(await request(room, a, "whiteboard.stroke", {"tool": "pen", "points": [[0.1, 0.1], [0.2, 0.2]]}))
    ok(await request(room, a, "whiteboard.stroke", {"tool": "pen", "points": [[0.3, 0.3]]}))
    rid = ok(await request(room, teacher, "quiz.start", {"bank": name, "duration_s": 600}))["round_id"]
    ok(await request(room, a, "quiz.answer", {"round_id": rid, "choice": 1}))
    counters = await room.repo.engagement(room.session_id)
    assert counters["a"] == {"chat_messages": 0, "questions": 0, "votes": 0, "hand_raises": 0, "reactions": 0,
                             "strokes": 2, "quiz_answers": 1}
    assert counters.get("b", {}).get("quiz_answers", 0) == 0  # assigned a question, did not answer


async def test_acknowledged_writes_survive_a_restart(interactive_store):
    store, url = interactive_store
    session = uuid.uuid4().hex
    name = await new_bank(store, 2)
    room = InteractiveRoom(store, session, "persist", {})
    teacher, a, b = await joined(room, Client("teacher", "instructor"), Client("a"), Client("b"))
    chat = ok(await request(room, a, "chat.send", {"text": "remember me"}))
    ok(await request(room, teacher, "chat.pin", {"message_id": chat["message_id"]}))
    qid = ok(await request(room, a, "qa.ask", {"text": "anon?", "anonymous": True}))["question_id"]
    ok(await request(room, b, "qa.upvote", {"question_id": qid}))
    ok(await request(room, teacher, "qa.answer", {"question_id": qid, "text": "yes"}))
    pid = ok(await request(room, teacher, "poll.create",
                           {"question": "q", "options": ["x", "y"], "start": True, "duration_s": 600}))["poll_id"]
    ok(await request(room, a, "poll.vote", {"poll_id": pid, "choices": [1]}))
    ok(await request(room, b, "poll.vote", {"poll_id": pid, "choices": [0]}))
    ok(await request(room, teacher, "whiteboard.stroke", {"tool": "pen", "points": [[0.1, 0.2], [0.3, 0.4]]}))
    ok(await request(room, b, "hand.raise"))
    rid = ok(await request(room, teacher, "quiz.start", {"bank": name, "duration_s": 600}))["round_id"]
    answer = ok(await request(room, a, "quiz.answer", {"round_id": rid, "choice": 1}))
    await room.close()
    await store.close()

    store2 = await open_store(url)
    try:
        room2 = InteractiveRoom(store2, session, "persist", {})
        try:
            a2, t2 = Client("a"), Client("teacher", "instructor")
            state = await room2.join(a2)
            assert [m["text"] for m in state["chat"]] == ["remember me"]
            assert [m["id"] for m in state["pinned"]] == [chat["message_id"]]
            (q,) = state["questions"]
            assert q["votes"] == 1 and q["answer"] == "yes" and q["mine"] is True
            (poll,) = state["polls"]
            assert poll["status"] == "open" and poll["my_choices"] == [1]
            assert poll["tally"]["counts"] == [1, 1]
            assert len(state["whiteboard"]["strokes"]) == 1
            assert state["quiz"]["round_id"] == rid and state["quiz"]["correct"] is answer["correct"]
            tstate = await room2.join(t2)
            assert [h["identity"] for h in tstate["hands"]["queue"]] == ["b"]
            assert tstate["quiz"]["students"][0]["choice"] == 1
            # the reopened room keeps working on the restored state: a vote change and a close
            ok(await request(room2, a2, "poll.vote", {"poll_id": pid, "choices": [0]}))
            assert ok(await request(room2, t2, "poll.close", {"poll_id": pid}))["results"]["counts"] == [2, 0]
            refused(await request(room2, a2, "quiz.answer", {"round_id": rid, "choice": 0}), "conflict")
        finally:
            await room2.close()
    finally:
        await store2.close()


# ---- helpers for the transport and the REST API ------------------------------------------------------------
async def test_history_board_png_and_registry(interactive_store):
    from classroom.interactive import RoomRegistry, board_png, chat_history
    from tests.test_interactive_units import decode_png

    store, _ = interactive_store
    registry = RoomRegistry(store)
    session = uuid.uuid4().hex
    room = await registry.get(session, "reg", {})
    assert await registry.get(session, "reg") is room
    teacher = Client("teacher", "instructor")
    await joined(room, teacher)
    for i in range(3):
        ok(await request(room, teacher, "chat.send", {"text": f"c{i}"}))
    ok(await request(room, teacher, "whiteboard.stroke",
                     {"tool": "line", "points": [[0, 0.5], [1, 0.5]], "color": "#00ff00", "width": 20}))
    await registry.close()
    assert room.closed
    page = await chat_history(store, session, limit=2)
    assert [m["text"] for m in page] == ["c2", "c1"]
    assert [m["text"] for m in await chat_history(store, session, before_id=page[-1]["id"])] == ["c0"]
    img = decode_png(await board_png(store, session, 100, 50))
    assert tuple(img[25, 50]) == (0, 255, 0) and tuple(img[5, 50]) == (255, 255, 255)


async def test_members_with_grants_like_the_signaling_participant(make_room):
    from shared.auth import Grants

    class Participant:  # the shape signaling.room.Participant has: grants carry can_publish_data
        def __init__(self, grants):
            self.grants, self.identity, self.name, self.role = grants, grants.identity, grants.name, grants.role
            self.received = []

        async def send(self, message):
            self.received.append(message)

    room = make_room()
    allowed = Participant(Grants(identity="p1", room="r", role="student", name="P One"))
    denied = Participant(Grants(identity="p2", room="r", role="student", can_publish_data=False))
    for p in (allowed, denied):
        await room.join(p)
    await room.handle(allowed, json.dumps({"v": 1, "type": "chat.send", "id": "1", "data": {"text": "hi"}}))
    await room.handle(denied, json.dumps({"v": 1, "type": "chat.send", "id": "2", "data": {"text": "hi"}}))
    await room.flush()
    assert [m["type"] for m in allowed.received] == ["state", "ack", "chat.message"]
    assert [m["code"] for m in denied.received if m["type"] == "error"] == ["forbidden"]
    assert allowed.received[-1]["data"]["name"] == "P One"


async def test_time_is_up_by_the_room_clock(make_room, interactive_store):
    store, _ = interactive_store
    name = await new_bank(store, 2)
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher, a = await joined(room, Client("teacher", "instructor"), Client("a"))
    rid = ok(await request(room, teacher, "quiz.start", {"bank": name, "duration_s": 30}))["round_id"]
    pid = ok(await request(room, teacher, "poll.create",
                           {"question": "q", "options": ["x", "y"], "duration_s": 30, "start": True}))["poll_id"]
    clock.now += 31  # time is up, but the timers have not run yet (a busy loop): answers go by the clock
    assert "time is up" in refused(await request(room, a, "quiz.answer", {"round_id": rid, "choice": 0}),
                                   "conflict")
    assert "run out of time" in refused(await request(room, a, "poll.vote", {"poll_id": pid, "choices": [0]}),
                                        "conflict")
    clock.advance(0)  # now they run: the round and the poll end
    await eventually(lambda: a.of_type("quiz.ended") and a.of_type("poll.closed"), what="the timers")


async def test_poll_results_every_vote_when_not_coalesced(make_room):
    room = make_room(options=RoomOptions(poll_results_interval_s=0))
    teacher, a = await joined(room, Client("teacher", "instructor"), Client("a"))
    pid = ok(await request(room, teacher, "poll.create", {"question": "?", "options": ["x", "y"], "start": True}))
    for choice in (0, 1, 0):
        ok(await request(room, a, "poll.vote", {"poll_id": pid["poll_id"], "choices": [choice]}))
    assert [m["data"]["tally"]["counts"] for m in a.of_type("poll.results")] == [[1, 0], [0, 1], [1, 0]]
