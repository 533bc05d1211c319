"""storage/recordings.py on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from storage.recordings import RecordingRepo
from tests.fixtures.recording import start_session

DAY = 1_780_000_000.0  # 2026-05-28 (UTC)


async def test_lifecycle_filters_and_views(store):
    repo = RecordingRepo(store)
    sid = await start_session(store, "algebra", instructor="ada")
    a = await repo.create(id="a" * 32, room="algebra", started_at=DAY + 100, directory="/r/a",
                          manifest_path="/r/a/manifest.json", session_id=sid)
    assert a.status == "recording" and a.instructor == "ada" and a.files == []
    await repo.create(id="b" * 32, room="adhoc", started_at=DAY + 86400 + 5, directory="/r/b",
                      manifest_path="/r/b/manifest.json")

    # Compare-and-set: only one of two racing stops wins.
    outcomes = await asyncio.gather(repo.transition(a.id, ["recording"], "processing", ended_at=DAY + 200),
                                    repo.transition(a.id, ["recording"], "processing", ended_at=DAY + 201))
    assert sum(o is not None for o in outcomes) == 1
    files = [{"name": "ada-cam.webm", "kind": "video", "size": 10}]
    ready = await repo.transition(a.id, ["processing"], "ready", duration_s=100.0, size_bytes=10, files=files)
    assert ready.status == "ready" and ready.files == files and ready.duration_s == 100.0
    assert await repo.transition(a.id, ["recording", "processing"], "failed") is None

    ids = lambda rows: [r.id for r in rows]  # noqa: E731
    assert ids(await repo.list()) == ["b" * 32, "a" * 32]  # newest first
    assert ids(await repo.list(room="algebra")) == ["a" * 32]
    assert ids(await repo.list(day=(DAY, DAY + 86400))) == ["a" * 32]
    assert ids(await repo.list(instructor="ada")) == ["a" * 32]
    assert ids(await repo.list(instructor="bob")) == []
    assert ids(await repo.in_status("recording")) == ["b" * 32]
    assert ids(await repo.list(session_ids=[sid])) == ["a" * 32]
    assert await repo.get("c" * 32) is None

    # Views: seconds watched only grow; completion at 90 % sticks.
    v = await repo.record_view(a.id, "sam", position=10, watched_seconds=50, duration=100.0, now=DAY + 300)
    assert not v.completed and v.seconds_watched == 50
    v = await repo.record_view(a.id, "sam", position=95, watched_seconds=90, duration=100.0, now=DAY + 400)
    assert v.completed
    v = await repo.record_view(a.id, "sam", position=3, watched_seconds=5, duration=100.0, now=DAY + 500)
    assert v.completed and v.seconds_watched == 90 and v.last_position == 3
    await repo.record_view(a.id, "kim", position=1, watched_seconds=89.9, duration=100.0, now=DAY + 500)
    views = await repo.views(a.id)
    assert [(x.identity, x.completed) for x in views] == [("kim", False), ("sam", True)]
    # Concurrent first reports of one viewer don't collide on the primary key.
    await asyncio.gather(*(repo.record_view("b" * 32, "zed", position=i, watched_seconds=i, duration=None,
                                            now=DAY + i) for i in range(5)))
    assert [x.seconds_watched for x in await repo.views("b" * 32)] == [4]
