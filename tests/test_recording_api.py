"""The recording HTTP API and review pages on a real server, over a real 3 s recording made through the SFU."""

from __future__ import annotations

import asyncio
import os
import re
import time
from datetime import datetime, timezone

import aiohttp
import av
import pytest

from recorder.service import RECORDINGS
from storage.store import STORE
from tests.client import RoomClient
from tests.fixtures.recording import basic, operator_token
from tests.serve import eventually

PROBLEM = "application/problem+json"


def callers(server, session_room="review"):
    """Every kind of caller, with the status a recording of `session_room` must give them."""
    s = server.settings
    return {
        "operator": ({"Authorization": f"Bearer {operator_token(server)}"}, 200),
        "admin": ({"Authorization": basic(s)}, 200),
        "instructor": ({"Authorization": f"Bearer {server.token(session_room, 'teacher', 'instructor')}"}, 200),
        "moderator": ({"Authorization": f"Bearer {server.token(session_room, 'mona', 'moderator')}"}, 200),
        "student participant": ({"Authorization": f"Bearer {server.token(session_room, 'sam', 'student')}"}, 200),
        "student who was absent": ({"Authorization": f"Bearer {server.token(session_room, 'ali', 'student')}"}, 403),
        "student of another room": ({"Authorization": f"Bearer {server.token('other', 'sam', 'student')}"}, 403),
        "viewer": ({"Authorization": f"Bearer {server.token(session_room, 'vic', 'viewer')}"}, 403),
        "no token": ({}, 401),
        "admin, key:secret unencoded": ({"Authorization": f"Basic {s.api_key}:{s.api_secret}"}, 401),  # as on /api/
        "bad admin secret": ({"Authorization": "Basic " + "ZGV2a2V5Ondyb25n"}, 401),
        "forged token": ({"Authorization": "Bearer abc.def.ghi"}, 401),
    }


async def _problem(resp, status):
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body = await resp.json()
    assert body["status"] == status and body["detail"] and body["code"]
    return body["detail"]


async def test_access_range_progress_and_lists(stoa_server, short_recording):
    row = short_recording["row"]
    sid = short_recording["session_id"]
    store = stoa_server.app[STORE]
    await store.sessions.set_role(sid, "mona", "moderator", now=time.time())
    base = stoa_server.base
    video = next(f for f in row.files if f["kind"] == "video")
    path = os.path.join(row.directory, video["name"])
    data = open(path, "rb").read()

    async with aiohttp.ClientSession() as http:
        for who, (headers, status) in callers(stoa_server).items():
            for url in (f"/api/recordings/{row.id}", f"/recordings/{row.id}/files/{video['name']}"):
                async with http.get(base + url, headers=headers) as resp:
                    assert resp.status == status, f"{who} on {url}: {resp.status} {await resp.text()}"
                    if status != 200 and url.startswith("/api"):
                        await _problem(resp, status)

        # Ranges: exact bytes, 206 and Content-Range; suffix ranges; the whole file without Range.
        op = {"Authorization": f"Bearer {operator_token(stoa_server)}"}
        url = f"{base}/recordings/{row.id}/files/{video['name']}"
        async with http.get(url, headers={**op, "Range": "bytes=100-1099"}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
            assert await resp.read() == data[100:1100]
        async with http.get(url, headers={**op, "Range": "bytes=-64"}) as resp:
            assert resp.status == 206 and await resp.read() == data[-64:]
        async with http.get(url, headers={**op, "Range": f"bytes={len(data) - 10}-"}) as resp:
            assert resp.status == 206 and await resp.read() == data[-10:]
        async with http.get(url + f"?token={operator_token(stoa_server)}") as resp:
            assert resp.status == 200 and await resp.read() == data
            assert resp.headers["Accept-Ranges"] == "bytes"
        for bad in ("manifest.json", "..%2Fmanifest.json", "nope.webm"):
            async with http.get(f"{base}/recordings/{row.id}/files/{bad}", headers=op) as resp:
                assert resp.status == 404, bad

        # The session stops sharing: participants lose access, operators keep it.
        await store.sessions.update(sid, features={"recording": False, "chat": True})
        sam = {"Authorization": f"Bearer {stoa_server.token('review', 'sam', 'student')}"}
        async with http.get(f"{base}/api/recordings/{row.id}", headers=sam) as resp:
            assert "does not share" in await _problem(resp, 403)
        async with http.get(f"{base}/api/recordings/{row.id}", headers=op) as resp:
            assert resp.status == 200
        await store.sessions.update(sid, features={"recording": True, "chat": True})

        # Watch progress: completed at 90 % of the duration, never un-completed.
        purl = f"{base}/api/recordings/{row.id}/progress"
        async with http.post(purl, headers=sam, json={"position": 1.0, "watched_seconds": 1.0}) as resp:
            view = await resp.json()
            assert resp.status == 200 and view["completed"] is False and view["identity"] == "sam"
        async with http.post(purl, headers=sam, json={"position": 2.9, "watched_seconds": 0.9 * row.duration_s}) as resp:
            assert (await resp.json())["completed"] is True
        async with http.post(purl, headers=sam, json={"position": 0.2, "watched_seconds": 0.5}) as resp:
            view = await resp.json()
            assert view["completed"] is True and view["seconds_watched"] >= 0.9 * row.duration_s - 1e-6
        async with http.post(purl, headers=sam, json={"position": -1, "watched_seconds": 1}) as resp:
            assert "position" in await _problem(resp, 400)
        views = await stoa_server.app[RECORDINGS].repo.views(row.id)
        assert [(v.identity, v.completed) for v in views] == [("sam", True)]

        # Lists and filters.
        today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        for query, who, expected in [("room=review", op, 1), ("room=zzz", op, 0), (f"date={today}", op, 1),
                                     ("date=2001-01-01", op, 0), ("instructor=teacher", op, 1),
                                     ("instructor=nobody", op, 0), ("", sam, 1),
                                     ("", {"Authorization": f"Bearer {stoa_server.token('other', 'x', 'student')}"}, 0)]:
            async with http.get(f"{base}/api/recordings?{query}", headers=who) as resp:
                assert resp.status == 200, await resp.text()
                assert len((await resp.json())["recordings"]) == expected, query
        async with http.get(f"{base}/api/recordings?date=yesterday", headers=op) as resp:
            assert "date" in await _problem(resp, 400)
        async with http.get(f"{base}/api/recordings") as resp:
            await _problem(resp, 401)

        # Pages.
        token = operator_token(stoa_server)
        async with http.get(f"{base}/recordings?token={token}&room=review") as resp:
            page = await resp.text()
            assert resp.status == 200 and row.id in page
        async with http.get(f"{base}/recordings/{row.id}?token={token}") as resp:
            page = await resp.text()
            assert resp.status == 200
            assert "two seconds in" in page and "poll opened: Ready?" in page and "<svg" in page
            assert "secret question" in page and page.count('data-category="qa"') == 1
            question = re.search(r"<li[^>]*data-category=\"qa\".*?</li>", page, re.S).group(0)
            assert "secret question" in question and "sam" not in question, "anonymous stays anonymous"
            assert 'data-type="poll.voted"' not in page and 'data-type="poll.opened"' in page
            assert "Sam" in page  # attendance
        async with http.get(f"{base}/recordings/{row.id}") as resp:
            assert resp.status == 401
        async with http.get(f"{base}/recordings/{row.id}?token={stoa_server.token('review', 'vic', 'viewer')}") as resp:
            assert resp.status == 403


async def test_composite_export_job(stoa_server, short_recording):
    row = short_recording["row"]
    base = stoa_server.base
    op = {"Authorization": f"Bearer {operator_token(stoa_server)}"}
    sam = {"Authorization": f"Bearer {stoa_server.token('review', 'sam', 'student')}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/api/recordings/{row.id}/export", headers=sam, json={"layout": "grid"}) as resp:
            await _problem(resp, 403)
        async with http.post(f"{base}/api/recordings/{row.id}/export", headers=op, json={"layout": "mosaic"}) as resp:
            assert "layout" in await _problem(resp, 400)
        async with http.post(f"{base}/api/recordings/nope/export", headers=op, json={}) as resp:
            await _problem(resp, 404)
        async with http.post(f"{base}/api/recordings/{row.id}/export", headers=op, json={"layout": "speaker"}) as resp:
            assert resp.status == 202
            job = (await resp.json())["job"]
        seen = []

        async def finished():
            async with http.get(f"{base}/api/jobs/{job['id']}", headers=op) as resp:
                polled = (await resp.json())["job"]
            seen.append(polled["progress"])
            return polled if polled["status"] not in ("queued", "running") else None

        job = await eventually(finished, timeout=90, what="the export job")
        assert job["status"] == "done", job
        assert seen == sorted(seen) and seen[-1] == 1.0
        async with http.get(f"{base}/api/jobs/nope", headers=op) as resp:
            await _problem(resp, 404)
        async with http.get(f"{base}/api/recordings/{row.id}", headers=op) as resp:
            detail = await resp.json()
        assert detail["has_composite"]
        composite = next(f for f in detail["files"] if f["kind"] == "composite")
        async with http.get(f"{base}/recordings/{row.id}/files/{composite['name']}", headers=op) as resp:
            assert resp.status == 200 and resp.content_type == "video/mp4"
            body = await resp.read()
    out = os.path.join(str(stoa_server.settings.data_dir), "check.mp4")
    open(out, "wb").write(body)
    with av.open(out) as c:
        assert c.streams.video and c.streams.audio
        duration = float(c.duration) / av.time_base
        frames = sum(1 for _ in c.decode(c.streams.video[0]))
    assert abs(duration - row.duration_s) <= 0.25, (duration, row.duration_s)
    assert frames >= 0.95 * row.duration_s * 25


async def test_start_and_stop_over_http(stoa_server):
    base = stoa_server.base
    admin = {"Authorization": basic(stoa_server.settings)}
    url = f"{base}/api/rooms/lab/recording"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, headers=admin, json={"action": "start"}) as resp:
            assert "nobody" in await _problem(resp, 409)
        teacher = await RoomClient(stoa_server.ws_base, "lab", stoa_server.token("lab", "t", "instructor")).connect()
        student = await RoomClient(stoa_server.ws_base, "lab", stoa_server.token("lab", "s", "student")).connect()
        try:
            reply = await student.request({"type": "recording", "action": "start"}, "recording_ok", "error")
            assert reply["type"] == "error" and reply["code"] == "forbidden"
            st = {"Authorization": f"Bearer {stoa_server.token('lab', 's', 'student')}"}
            async with http.post(url, headers=st, json={"action": "start"}) as resp:
                await _problem(resp, 403)
            other = {"Authorization": f"Bearer {stoa_server.token('zoo', 't', 'instructor')}"}
            async with http.post(url, headers=other, json={"action": "start"}) as resp:
                await _problem(resp, 403)
            async with http.post(url, headers=admin, json={"action": "pause"}) as resp:
                assert "action" in await _problem(resp, 400)
            mod = {"Authorization": f"Bearer {stoa_server.token('lab', 'm', 'moderator')}"}
            async with http.post(url, headers=mod, json={"action": "start"}) as resp:
                assert resp.status == 201, await resp.text()
                rec = await resp.json()
                assert rec["status"] == "recording"
            note = await student.expect("recording")
            assert note["state"] == "started" and note["recording_id"] == rec["id"]
            async with http.post(url, headers=admin, json={"action": "start"}) as resp:
                assert "already" in await _problem(resp, 409)
            async with http.get(url, headers=mod) as resp:
                assert (await resp.json())["recording"]["recording_id"] == rec["id"]
            reply = await teacher.request({"type": "recording", "action": "stop"}, "recording_ok", "error")
            assert reply["type"] == "recording_ok"
            row = await stoa_server.app[RECORDINGS].repo.get(rec["id"])
            assert row.status == "failed" and row.error == "no media was recorded"
            async with http.post(url, headers=admin, json={"action": "stop"}) as resp:
                assert "not being recorded" in await _problem(resp, 409)
            # The recordings directory cannot be created (a file is in the way; root ignores permissions):
            # the start fails and says why, and nothing is left running.
            manager = stoa_server.app[RECORDINGS]
            blocker = os.path.join(stoa_server.settings.data_dir, "not-a-directory")
            open(blocker, "w").close()
            real_root, manager.root = manager.root, os.path.join(blocker, "recordings")
            try:
                async with http.post(url, headers=admin, json={"action": "start"}) as resp:
                    assert "cannot create the recording directory" in await _problem(resp, 500)
                assert "lab" not in manager.active
            finally:
                manager.root = real_root
            # The room empties: a running recording stops by itself.
            async with http.post(url, headers=admin, json={"action": "start"}) as resp:
                rec = await resp.json()
        finally:
            await teacher.close()
            await student.close()
        manager = stoa_server.app[RECORDINGS]

        async def settled():
            row = await manager.repo.get(rec["id"])
            return row if row.status not in ("recording", "processing") and "lab" not in manager.active else None

        row = await eventually(settled, what="the recording of the emptied room to stop")
        assert row.status in ("ready", "failed") and "lab" not in manager.active


@pytest.mark.slow
async def test_cli_list_and_export(stoa_server, short_recording):
    import sys

    row = short_recording["row"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOA_")}

    async def stoa(*argv):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stoa.cli", "recording", "--data-dir", stoa_server.settings.data_dir, *argv,
            cwd=root, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode, out.decode(), err.decode()

    # `stoa token --role operator --room '*'` mints a token the review API accepts.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stoa.cli", "token", "--dev", "--role", "operator", "--room", "*", "--identity", "olga",
        cwd=root, env=env, stdout=asyncio.subprocess.PIPE)
    minted = (await proc.communicate())[0].decode().strip()
    assert proc.returncode == 0
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stoa_server.base}/api/recordings/{row.id}?token={minted}") as resp:
            assert resp.status == 200, await resp.text()

    code, out, _ = await stoa("list", "--room", "review")
    assert code == 0 and row.id in out and "ready" in out
    code, out, err = await stoa("list", "--date", "31/01/2026")
    assert code == 2 and "--date" in err
    code, out, err = await stoa("export", "nope")
    assert code == 1 and "no recording" in err
    code, out, err = await stoa("export", row.id, "--layout", "grid")
    assert code == 0, err
    assert "100.0%" in err and "composite-grid.mp4" in out
    fresh = await stoa_server.app[RECORDINGS].repo.get(row.id)
    assert fresh.composite_path.endswith("composite-grid.mp4") and os.path.getsize(fresh.composite_path) > 0
    assert [f["name"] for f in fresh.files if f["kind"] == "composite"] == ["composite-grid.mp4"]


async def test_review_pages_ask_a_browser_for_the_admin_login(stoa_server):
    """Without a token or credentials the pages answer 401 with a Basic challenge, so a browser asks for the API
    key and secret; with them (HTTP Basic) they open. Token links are answered as before, with no challenge."""
    repo = stoa_server.app[RECORDINGS].repo
    directory = os.path.join(stoa_server.settings.data_dir, "recordings", "rec-basic")
    row = await repo.create(id="rec-basic", room="review", started_at=time.time(), directory=directory,
                            manifest_path=os.path.join(directory, "manifest.json"))
    await repo.transition(row.id, ("recording",), "ready", ended_at=time.time(), duration_s=0.0, files=[])
    base = stoa_server.base
    s = stoa_server.settings
    async with aiohttp.ClientSession() as http:
        for url in ("/recordings", f"/recordings/{row.id}"):
            async with http.get(base + url) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"] == 'Basic realm="Stoa"'
            async with http.get(base + url, auth=aiohttp.BasicAuth(s.api_key, s.api_secret)) as resp:
                assert resp.status == 200, await resp.text()
                assert row.id in await resp.text()
            async with http.get(base + url, auth=aiohttp.BasicAuth(s.api_key, "wrong")) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Basic realm="Stoa"'
            for bad in ("?token=abc.def.ghi", ""):
                headers = {} if bad else {"Authorization": "Bearer abc.def.ghi"}
                async with http.get(base + url + bad, headers=headers) as resp:
                    assert resp.status == 401 and "WWW-Authenticate" not in resp.headers
        async with http.get(f"{base}/recordings?token={operator_token(stoa_server)}") as resp:
            assert resp.status == 200 and row.id in await resp.text()
        async with http.get(f"{base}/api/recordings") as resp:  # the JSON API: as every /api/ route
            await _problem(resp, 401)
            assert "Basic" in resp.headers["WWW-Authenticate"]
        # A bad token never gets a Basic challenge: the player's fetch and <video> must not pop up a login.
        for url in ("/api/recordings?token=abc.def.ghi", f"/recordings/{row.id}/files/x.webm?token=abc.def.ghi"):
            async with http.get(base + url) as resp:
                assert (await resp.json())["code"] == "unauthorized"
                assert resp.headers["WWW-Authenticate"].startswith("Bearer") and "Basic" not in resp.headers[
                    "WWW-Authenticate"], url
