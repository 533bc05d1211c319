"""Persistence across a server restart, and the classroom REST routes (chat paging, whiteboard PNG, quiz
bank import), through the real server."""

from __future__ import annotations

import base64
import io

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from classroom.sessions import Actor
from signaling.api import SESSIONS
from stoa.app import build_app
from tests.fixtures.classroom_e2e import Member, close_all, start_all
from tests.fixtures.server import RunningServer

BANK = {"bank": "persist", "questions": [{"prompt": f"{i}?", "choices": ["yes", "no"], "answer": 0}
                                         for i in range(3)]}


async def restart(running: RunningServer) -> RunningServer:
    """Stop the server and start a new app on the same data dir (same SQLite database)."""
    await running.server.close()
    server = TestServer(build_app(running.settings), host="127.0.0.1", port=0)
    await server.start_server()
    return RunningServer(server, running.settings)


def admin_auth(settings) -> dict:
    raw = f"{settings.api_key}:{settings.api_secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("channel", [pytest.param(True, id="datachannel"), pytest.param(False, id="websocket")])
async def test_acknowledged_chat_votes_and_answers_survive_a_restart(stoa_server, channel):
    room = "persist"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stoa_server.base}/api/quiz/banks", json=BANK,
                             headers=admin_auth(stoa_server.settings)) as resp:
            assert resp.status == 201, await resp.text()
    teacher = Member(stoa_server, room, "teacher", "instructor", channel=channel)
    students = [Member(stoa_server, room, f"p{i}", channel=channel) for i in range(4)]
    await start_all([teacher, *students])
    second = None
    try:
        chat_ids = [(await s.ok("chat.send", {"text": f"line from {s.identity}"}))["message_id"] for s in students]
        reply = await students[1].ok("chat.send", {"text": "a reply", "reply_to": chat_ids[0]})
        poll_id = (await teacher.ok("poll.create", {"question": "Q?", "options": ["a", "b", "c"],
                                                    "start": True}))["poll_id"]
        for i, s in enumerate(students):
            await s.ok("poll.vote", {"poll_id": poll_id, "choices": [i % 3]})
        qid = (await students[0].ok("qa.ask", {"text": "Anon?", "anonymous": True}))["question_id"]
        await students[2].ok("qa.upvote", {"question_id": qid})
        await teacher.ok("qa.answer", {"question_id": qid, "text": "Stored answer"})
        round_id = (await teacher.ok("quiz.start", {"bank": "persist", "duration_s": 120}))["round_id"]
        graded = {}
        for i, s in enumerate(students):
            graded[s.identity] = (await s.ok("quiz.answer", {"round_id": round_id, "choice": i % 2}))["correct"]
        await teacher.ok("whiteboard.stroke", {"tool": "pen", "points": [[0.1, 0.5], [0.9, 0.5]],
                                               "color": "#ff0000", "width": 20})
    finally:
        await close_all([teacher, *students])

    second = await restart(stoa_server)
    try:
        teacher = await Member(second, room, "teacher", "instructor", channel=channel).start()
        student = await Member(second, room, "p3", channel=channel).start()
        try:
            t_state, s_state = teacher.state(), student.state()
            texts = {m["id"]: m for m in s_state["chat"]}
            for i, mid in enumerate(chat_ids):
                assert texts[mid]["text"] == f"line from p{i}"
            assert texts[reply["message_id"]]["reply_to"] == chat_ids[0]
            poll = next(p for p in t_state["polls"] if p["id"] == poll_id)
            assert poll["status"] == "open" and poll["tally"]["counts"] == [2, 1, 1]
            assert next(p for p in s_state["polls"] if p["id"] == poll_id)["my_choices"] == [0]
            q = next(q for q in s_state["questions"] if q["id"] == qid)
            assert q["votes"] == 1 and q["answer"] == "Stored answer" and q["identity"] is None
            progress = t_state["quiz"]
            assert progress["round_id"] == round_id
            assert {st["identity"]: st["correct"] for st in progress["students"]} == graded
            assert s_state["quiz"]["choice"] == 1 and s_state["quiz"]["correct"] is False
            assert len(s_state["whiteboard"]["strokes"]) == 1
            # Voting again after the restart changes the stored vote, it does not add one.
            await student.ok("poll.vote", {"poll_id": poll_id, "choices": [1]})
            closed = await teacher.ok("poll.close", {"poll_id": poll_id})
            assert closed["results"]["counts"] == [1, 2, 1]
        finally:
            await close_all([teacher, student])
    finally:
        await second.server.close()


async def test_rest_chat_history_pages_and_whiteboard_png(stoa_server):
    import av

    room = "rest"
    teacher = Member(stoa_server, room, "teacher", "instructor")
    await start_all([teacher])
    try:
        ids = [(await teacher.ok("chat.send", {"text": f"m{i}"}))["message_id"] for i in range(7)]
        await teacher.ok("whiteboard.stroke", {"tool": "pen", "points": [[0.0, 0.5], [1.0, 0.5]],
                                               "color": "#0000ff", "width": 40})
    finally:
        await teacher.close()
    student_token = stoa_server.token(room, "s1", "student")
    async with aiohttp.ClientSession() as http:
        url = f"{stoa_server.base}/api/rooms/{room}/chat"
        async with http.get(url, params={"limit": "3"}, headers=bearer(student_token)) as resp:
            assert resp.status == 200
            page1 = await resp.json()
        users = [m for m in page1["messages"]]
        assert [m["text"] for m in users][:3] == ["m6", "m5", "m4"] or users[0]["kind"] == "system"
        collected = []
        before = None
        while True:
            params = {"limit": "3", **({"before": str(before)} if before else {})}
            async with http.get(url, params=params, headers=bearer(student_token)) as resp:
                page = await resp.json()
            collected += page["messages"]
            before = page["next_before"]
            if before is None:
                break
        user_ids = [m["id"] for m in collected if m["kind"] == "user"]
        assert user_ids == sorted(ids, reverse=True)
        assert [m["id"] for m in collected] == sorted((m["id"] for m in collected), reverse=True)

        async with http.get(url, params={"limit": "0"}, headers=bearer(student_token)) as resp:
            assert resp.status == 400 and resp.content_type == "application/problem+json"
            assert "limit" in (await resp.json())["detail"]
        async with http.get(url) as resp:
            assert resp.status == 401 and resp.content_type == "application/problem+json"
        other = stoa_server.token("elsewhere", "s1", "student")
        async with http.get(url, headers=bearer(other)) as resp:
            assert resp.status == 403 and resp.content_type == "application/problem+json"

        async with http.get(f"{stoa_server.base}/api/rooms/{room}/whiteboard.png",
                            params={"width": "200", "height": "100"}, headers=bearer(student_token)) as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
            png = await resp.read()
        with av.open(io.BytesIO(png)) as container:
            pixels = next(container.decode(video=0)).to_ndarray(format="rgb24")
        assert pixels.shape == (100, 200, 3)
        assert tuple(pixels[50, 100]) == (0, 0, 255)
        assert tuple(pixels[5, 100]) == (255, 255, 255)


async def test_rest_uses_the_rooms_session(stoa_server):
    """A room with a session row keeps its classroom under the session id, and REST reads that one."""
    session = await stoa_server.app[SESSIONS].create(Actor("prof", instructor=True),
                                                     {"room": "lecture", "title": "Lecture"})
    await stoa_server.app[SESSIONS].start(Actor("prof", instructor=True), session.id)
    prof = await Member(stoa_server, "lecture", "prof", "instructor").start()
    try:
        assert prof.state()["session_id"] == str(session.id)
        mid = (await prof.ok("chat.send", {"text": "in the session"}))["message_id"]
    finally:
        await prof.close()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stoa_server.base}/api/rooms/lecture/chat",
                            headers=admin_auth(stoa_server.settings)) as resp:
            body = await resp.json()
    assert mid in [m["id"] for m in body["messages"]]


async def test_quiz_bank_import_rest_and_openapi(stoa_server):
    async with aiohttp.ClientSession() as http:
        url = f"{stoa_server.base}/api/quiz/banks"
        inst = stoa_server.token("r", "prof", "instructor")
        async with http.post(url, json=BANK, headers=bearer(inst)) as resp:
            assert resp.status == 201
            body = await resp.json()
            assert body["bank"] == "persist" and body["count"] == 3
        student = stoa_server.token("r", "stu", "student")
        async with http.post(url, json=BANK, headers=bearer(student)) as resp:
            assert resp.status == 403 and resp.content_type == "application/problem+json"
        bad = {"questions": [{"prompt": "?", "choices": ["a", "b"], "answer": 5}]}
        async with http.post(url, json=bad, headers=bearer(inst)) as resp:
            assert resp.status == 400 and resp.content_type == "application/problem+json"
            assert "answer" in (await resp.json())["detail"]
        async with http.post(url, data=b"{", headers={**bearer(inst), "Content-Type": "application/json"}) as resp:
            assert resp.status == 400
        async with http.get(f"{stoa_server.base}/api/openapi.json") as resp:
            doc = await resp.json()
    paths = doc["paths"]
    assert "get" in paths["/api/rooms/{room}/chat"]
    assert "get" in paths["/api/rooms/{room}/whiteboard.png"]
    assert "post" in paths["/api/quiz/banks"]


def test_stoa_quiz_import_cli(tmp_path, capsys):
    import asyncio
    import json

    from stoa.cli import main
    from storage import open_store

    bank_file = tmp_path / "bank.json"
    bank_file.write_text(json.dumps(BANK))
    data_dir = tmp_path / "data"
    assert main(["quiz", "import", str(bank_file), "--data-dir", str(data_dir)]) == 0
    assert "imported 3 questions into bank 'persist'" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"questions": [{"prompt": "?", "choices": ["a"], "answer": 0}]}))
    assert main(["quiz", "import", str(bad), "--data-dir", str(data_dir)]) == 1
    assert "quiz bank is invalid" in capsys.readouterr().err

    async def stored() -> list:
        from classroom.interactive.room import as_repository

        store = await open_store(f"sqlite:///{data_dir}/stoa.sqlite3")
        try:
            return await as_repository(store).quiz_questions(bank="persist")
        finally:
            await store.close()
    assert len(asyncio.run(stored())) == 3
