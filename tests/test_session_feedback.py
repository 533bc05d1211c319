"""Feedback after a session over the real REST API, on SQLite and PostgreSQL: who may rate (people who took
part, not the instructor), validation errors that name the field, replacing a rating, the staff report, the
instructor's GET /api/feedback, the review page's panel, and the OpenAPI entries."""

from __future__ import annotations

import dataclasses

import pytest

from tests.client import RoomClient


@pytest.fixture
def server_settings(server_settings, _migrated_url):
    """Both backends: PostgreSQL from a migrated copy; SQLite is the server's own file (migrated on start)."""
    if _migrated_url.startswith("sqlite"):
        return server_settings
    return dataclasses.replace(server_settings, database=_migrated_url)


async def live_session(api, title="Poetry"):
    s = await api.ok("POST", "/api/sessions", auth=api.admin, json={"title": title, "instructor": "prof"})
    return await api.ok("POST", f"/api/sessions/{s['id']}/start", auth=api.admin)


async def joined(stoa_server, room, identity, name):
    client = await RoomClient(stoa_server.ws_base, room,
                              stoa_server.token(room, identity, "student", name=name)).connect()
    assert client.joined["type"] == "joined", client.joined
    return client


async def test_participants_rate_and_staff_read_it(stoa_server, api):
    s = await live_session(api)
    sid, room, path = s["id"], s["room"], f"/api/sessions/{s['id']}/feedback"
    ann, bob = await joined(stoa_server, room, "ann", "Ann Lee"), await joined(stoa_server, room, "bob", "Bob")
    try:
        student = api.bearer(room, "ann", "student", name="Ann Lee")
        got = await api.ok("POST", path, auth=student, json={"rating": 4, "comment": " clear slides "})
        assert (got["rating"], got["comment"], got["name"], got["identity"]) == (4, "clear slides", "Ann Lee", "ann")
        again = await api.ok("POST", path, auth=student, json={"rating": 5})  # replaces the first one
        assert again["rating"] == 5 and again["comment"] == "" and again["created_at"] == got["created_at"]
        await api.ok("POST", path, auth=api.bearer(room, "bob", "student"), json={"rating": 2, "comment": "fast"})

        report = await api.ok("GET", path, auth=api.bearer(room, "prof", "instructor"))
        assert report["summary"] == {"count": 2, "average": 3.5,
                                     "ratings": {"1": 0, "2": 1, "3": 0, "4": 0, "5": 1}}
        assert report["title"] == "Poetry" and {f["identity"] for f in report["items"]} == {"ann", "bob"}
        status, body = await api.call("GET", path, auth=student)
        assert status == 403 and body["code"] == "permission_denied"

        mine = await api.ok("GET", "/api/feedback", auth=api.bearer("*", "prof", "instructor"))
        assert [x["session_id"] for x in mine["sessions"]] == [sid] and mine["sessions"][0]["summary"]["count"] == 2
        assert (await api.ok("GET", "/api/feedback", auth=api.bearer("*", "other", "instructor")))["sessions"] == []
        status, body = await api.call("GET", "/api/feedback", auth=api.bearer("*", "ann", "student"))
        assert status == 403 and "instructors" in body["detail"]
    finally:
        await ann.close()
        await bob.close()


async def test_who_may_not_rate_and_what_is_refused(stoa_server, api):
    s = await live_session(api)
    room, path = s["room"], f"/api/sessions/{s['id']}/feedback"
    ann = await joined(stoa_server, room, "ann", "Ann")
    try:
        student = api.bearer(room, "ann", "student")
        for body, where in [({"rating": 0}, "rating"), ({"rating": 6}, "rating"), ({"rating": "5"}, "rating"),
                            ({}, "rating"), ({"rating": 3, "comment": "x" * 2001}, "comment"),
                            ({"rating": 3, "stars": 1}, "stars")]:
            status, problem = await api.call("POST", path, auth=student, json=body)
            assert status == 400 and problem["code"] == "invalid_input" and where in problem["detail"], (body, problem)
        status, problem = await api.call("POST", path, auth=api.bearer(room, "prof", "instructor"), json={"rating": 5})
        assert status == 403 and "own session" in problem["detail"]
        status, problem = await api.call("POST", path, auth=api.bearer(room, "eve", "student"), json={"rating": 1})
        assert status == 403 and "did not take part" in problem["detail"]
        status, problem = await api.call("POST", path, auth=api.bearer("elsewhere", "ann", "student"),
                                         json={"rating": 1})
        assert status == 403 and room in problem["detail"]
        status, problem = await api.call("POST", "/api/sessions/nope/feedback", auth=student, json={"rating": 1})
        assert status == 404
    finally:
        await ann.close()
    scheduled = await api.ok("POST", "/api/sessions", auth=api.admin, json={"title": "Later", "instructor": "prof"})
    status, problem = await api.call("POST", f"/api/sessions/{scheduled['id']}/feedback",
                                     auth=api.bearer(scheduled["room"], "ann", "student"), json={"rating": 3})
    assert status == 409 and problem["code"] == "conflict" and "scheduled" in problem["detail"]


async def test_openapi_documents_feedback(api):
    from classroom.feedback import SCHEMA

    doc = await api.ok("GET", "/api/openapi.json")
    post = doc["paths"]["/api/sessions/{session_id}/feedback"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == SCHEMA
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Feedback"}
    assert "get" in doc["paths"]["/api/sessions/{session_id}/feedback"] and "get" in doc["paths"]["/api/feedback"]
    assert "FeedbackReport" in doc["components"]["schemas"]
