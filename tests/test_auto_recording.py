"""A session whose `recording` flag is on records itself from its first participant to its end."""

from __future__ import annotations

import asyncio

from recorder.service import RECORDINGS
from tests.client import RoomClient
from tests.media import CounterVideoTrack


async def test_session_flag_records_automatically(stoa_server, api):
    session = await api.ok("POST", "/api/sessions", auth=api.admin, json={
        "title": "Recorded lecture", "instructor": "prof", "room": "lecture-rec",
        "features": {"recording": True}})
    await api.ok("POST", f"/api/sessions/{session['id']}/start", auth=api.admin)
    prof = await RoomClient(stoa_server.ws_base, "lecture-rec",
                            stoa_server.token("lecture-rec", "prof", "instructor")).connect()
    manager = stoa_server.app[RECORDINGS]
    status = manager.status("lecture-rec")
    assert status is not None, "the recording started when the first participant joined"
    await prof.publish(CounterVideoTrack(), sources=["camera"])
    for _ in range(100):
        if manager.status("lecture-rec")["tracks"]:
            break
        await asyncio.sleep(0.05)
    assert manager.status("lecture-rec")["tracks"] == 1
    await asyncio.sleep(1.0)
    await api.ok("POST", f"/api/sessions/{session['id']}/end", auth=api.admin)
    for _ in range(100):
        if manager.status("lecture-rec") is None:
            break
        await asyncio.sleep(0.05)
    assert manager.status("lecture-rec") is None, "ending the session stopped the recording"
    rec = await api.ok("GET", f"/api/recordings/{status['recording_id']}", auth=api.admin)
    assert rec["status"] in ("processing", "ready")
    await prof.close()


async def test_serve_record_flag_records_every_room(tmp_path):
    from aiohttp.test_utils import TestServer

    from shared.config import load_settings
    from stoa.app import build_app
    from tests.fixtures.server import RunningServer

    settings = load_settings(environ={}, overrides={
        "dev": True, "ice_addresses": ["127.0.0.1"], "data_dir": str(tmp_path / "data"), "record_all": True})
    server = TestServer(build_app(settings), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        running = RunningServer(server, settings)
        client = await RoomClient(running.ws_base, "any-room", running.token("any-room", "t", "instructor")).connect()
        manager = running.app[RECORDINGS]
        assert manager.status("any-room") is None, "nothing is recorded before a track exists"
        await client.publish(CounterVideoTrack(), sources=["camera"])
        for _ in range(100):
            status = manager.status("any-room")
            if status and status["tracks"]:
                break
            await asyncio.sleep(0.05)
        assert manager.status("any-room")["tracks"] == 1
        await client.close()
    finally:
        await server.close()
