"""Every JSON body is validated whole before a handler sees it: `null`, arrays, strings and numbers where an
object belongs get 400 problem+json naming the problem, never 500 (found by a fuzzer with admin credentials)."""

from __future__ import annotations

import json

import pytest

from signaling.api.routes import OPS

NOT_OBJECTS = [b"null", b"[]", b"[{\"identity\": \"x\"}]", b"\"identity\"", b"42", b"true"]


@pytest.mark.parametrize("raw", NOT_OBJECTS, ids=lambda r: r.decode())
async def test_a_body_that_is_not_an_object_is_a_400_on_every_json_endpoint(api, raw):
    session = await api.ok("POST", "/api/sessions", auth=api.admin,
                           json={"title": "Bodies", "instructor": "prof", "capacity": 5})
    params = {"session_id": session["id"], "identity": "bo", "request_id": "nope", "webhook_id": "nope",
              "key": "nope", "room": session["room"], "id": "nope"}
    paths = [(op.method, op.path.format(**params)) for op in OPS if op.body is not None]
    assert ("POST", f"/api/rooms/{session['room']}/recording") in paths
    assert ("POST", "/api/recordings/nope/progress") in paths
    assert ("POST", "/api/quiz/banks") in paths
    assert ("POST", f"/api/sessions/{session['id']}/moderators") in paths
    assert ("POST", "/api/webhooks") in paths
    for method, path in paths:
        for auth in (api.admin, api.bearer("*", "prof", "instructor")):
            status, headers, body = await api.raw(method, path, auth=auth, data=raw,
                                                  headers={"Content-Type": "application/json"})
            if status in (401, 403) and auth is not api.admin:
                continue  # refused before the body matters (an instructor on an admin route)
            if (method, path) == ("POST", "/api/quiz/banks") and raw.startswith(b"["):
                assert status in (201, 400), (path, raw, status, body)  # a bank may be a list of questions
                continue
            assert status == 400, (method, path, raw, status, body)
            assert headers["Content-Type"].startswith("application/problem+json")
            problem = json.loads(body)
            assert problem["status"] == 400 and problem["detail"]
            assert problem["code"] == "invalid_input"
            assert "request body" in problem["detail"] and "is not of type 'object'" in problem["detail"]

