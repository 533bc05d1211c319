"""A tutoring request nobody accepts expires (short TTL setting); the student is told over /ws/notify."""

from __future__ import annotations

import pytest

from shared.config import load_settings
from tests.test_tutoring_flow import Notify


@pytest.fixture
def server_settings(tmp_path):
    return load_settings(environ={}, overrides={
        "dev": True, "host": "127.0.0.1", "port": 8080, "ice_addresses": ["127.0.0.1"],
        "data_dir": str(tmp_path / "data"), "tutoring_ttl": 1, "tutoring_expire_interval": 1,
    })


async def test_unaccepted_request_expires_and_the_student_hears_it(stoa_server, api):
    stu_n = await Notify(stoa_server, "stu", "student").connect()
    prof_n = await Notify(stoa_server, "prof", "instructor").connect()
    stu = api.bearer("*", "stu", "student")
    req = await api.ok("POST", "/api/tutoring", auth=stu, json={"course_ref": "MATH-2"})
    # Nobody calls the API: the server's own expiry task does it.
    msg = await stu_n.wait("tutoring.expired", id=req["id"], timeout=10)
    assert msg["request"]["status"] == "expired"
    assert msg["view"]["counts"]["pending"] == 0 and msg["view"]["closed"][0]["id"] == req["id"]
    assert (await prof_n.wait("tutoring.expired", id=req["id"]))["view"]["pending"] == []
    status, body = await api.call("POST", f"/api/tutoring/{req['id']}/accept",
                                  auth=api.bearer("*", "prof", "instructor"))
    assert status == 409 and "expired" in body["detail"]
    # The student may ask again.
    again = await api.ok("POST", "/api/tutoring", auth=stu, json={})
    assert again["status"] == "pending"
    await stu_n.close()
    await prof_n.close()
