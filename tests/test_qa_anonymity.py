"""Anonymous Q&A when the session hides askers from staff too (feature qa_anonymous_to_staff): the asker's
identity reaches no staff client, no session event actor and no engagement counter; on SQLite and PostgreSQL
(make_room). Without the feature, staff still see the name and the ask form is told so (state `qa`)."""

from __future__ import annotations

import json

from classroom.interactive import InteractiveRoom
from tests.fixtures.interactive import Client, request
from tests.test_interactive import joined, ok

HIDE = {"qa_anonymous_to_staff": True}


async def test_hidden_asker_reaches_no_staff_client(make_room):
    room = make_room(features=HIDE)
    teacher, mod, asker, other = await joined(room, Client("teacher", "instructor"), Client("mod", "moderator"),
                                              Client("asker", name="Ann Asker"), Client("other"))
    assert (await room.state_for(asker))["qa"] == {"anonymous_to_staff": True}
    qid = ok(await request(room, asker, "qa.ask", {"text": "Is this graded?", "anonymous": True}))["question_id"]
    ok(await request(room, teacher, "qa.answer", {"question_id": qid, "text": "no"}))
    ok(await request(room, other, "qa.upvote", {"question_id": qid}))
    for m in (teacher, mod, other):
        seen = m.last("qa.question")["data"]
        assert seen["identity"] is None and seen["name"] == "Anonymous" and seen["anonymous"]
        assert "asker" not in json.dumps(m.received) and "Ann Asker" not in json.dumps(m.received)
    assert asker.last("qa.question")["data"]["mine"] is True
    # a staff member joining later, and the state after a reload from storage, hide it too
    fresh = InteractiveRoom(room.repo, room.session_id, room.room_name, {})  # the feature turned off since
    try:
        late = Client("late-mod", "moderator")
        assert (await fresh.state_for(late))["questions"][0]["identity"] is None
        assert (await fresh.state_for(Client("asker")))["questions"][0]["mine"] is True
    finally:
        await fresh.close()
    # analytics: the event has no actor and nobody's `questions` counter moved
    events = await room.repo.store.events.list(room.session_id, types=["question.asked"])
    assert [e.actor for e in events] == [None]
    engagement = await room.repo.store.sessions.engagement(room.session_id)
    assert engagement.get("asker", {}).get("questions", 0) == 0


async def test_without_the_feature_staff_see_the_name_and_the_form_says_so(make_room):
    room = make_room()
    teacher, asker = await joined(room, Client("teacher", "instructor"), Client("asker", name="Ann Asker"))
    assert (await room.state_for(asker))["qa"] == {"anonymous_to_staff": False}
    ok(await request(room, asker, "qa.ask", {"text": "Is this graded?", "anonymous": True}))
    assert teacher.last("qa.question")["data"]["name"] == "Ann Asker"
    events = await room.repo.store.events.list(room.session_id, types=["question.asked"])
    assert [e.actor for e in events] == ["asker"]
    # a question asked openly in a hiding session keeps its name for everyone
    hiding = make_room(features=HIDE)
    t2, a2 = await joined(hiding, Client("teacher", "instructor"), Client("asker", name="Ann Asker"))
    ok(await request(hiding, a2, "qa.ask", {"text": "Open question", "anonymous": False}))
    assert t2.last("qa.question")["data"]["name"] == "Ann Asker"


async def test_the_session_feature_is_validated_and_kept(api):
    s = await api.ok("POST", "/api/sessions", auth=api.admin,
                     json={"title": "Ethics", "instructor": "prof", "features": HIDE})
    assert s["features"]["qa_anonymous_to_staff"] is True
    status, body = await api.call("PATCH", f"/api/sessions/{s['id']}", auth=api.admin,
                                  json={"features": {"qa_anonymous_to_staff": "yes"}})
    assert status == 400 and "qa_anonymous_to_staff" in body["detail"]
