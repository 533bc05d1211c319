"""Last-N (sfu/lastn.py): the selection as a pure function, the protocol messages and the setting, and a room
where four aiortc publishers have cameras on and a viewer asks for two: it decodes the two most recent
speakers' videos (and a pinned one), never the others, and follows when someone else speaks."""

from __future__ import annotations

import asyncio

import pytest

from sfu.lastn import SpeakerOrder, Video, select_forwarded
from sfu.pool import RemoteRoomSubscriber
from shared.config import ConfigError, load_settings
from signaling.room import ROOMS
from signaling.schemas import ProtocolError, parse_client_message
from tests.client import RoomClient
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.serve import eventually
from tests.test_workers import workers_server  # noqa: F401  (a fixture: the app with two media workers)


def cams(*names: str, screen: tuple[str, ...] = (), muted: tuple[str, ...] = ()) -> list[Video]:
    out = [Video(f"TR_{n}", n, "camera", n in muted) for n in names]
    return out + [Video(f"TR_{n}_screen", n, "screen") for n in screen]


@pytest.mark.unit
def test_the_n_most_recent_speakers_then_publishing_order():
    videos = cams("ada", "bo", "cy", "dee")
    assert select_forwarded(videos, [], set(), 2) == {"TR_ada", "TR_bo"}            # nobody spoke: publish order
    assert select_forwarded(videos, ["cy", "ada"], set(), 2) == {"TR_cy", "TR_ada"}
    assert select_forwarded(videos, ["cy"], set(), 2) == {"TR_cy", "TR_ada"}         # unranked keep their order
    assert select_forwarded(videos, ["cy"], set(), 0) == {v.track_id for v in videos}  # 0: every video
    assert select_forwarded(videos, [], set(), 10) == {v.track_id for v in videos}


@pytest.mark.unit
def test_pins_count_towards_n_and_beyond_it_are_still_sent():
    videos = cams("ada", "bo", "cy", "dee")
    assert select_forwarded(videos, ["cy", "bo"], {"dee"}, 2) == {"TR_dee", "TR_cy"}
    assert select_forwarded(videos, ["cy", "bo"], {"dee", "ada", "bo"}, 2) == {"TR_dee", "TR_ada", "TR_bo"}
    assert select_forwarded(videos, [], {"nobody"}, 1) == {"TR_ada"}  # a pin of someone without video takes nothing


@pytest.mark.unit
def test_screens_are_always_sent_and_muted_cameras_take_no_place():
    videos = cams("ada", "bo", "cy", screen=("cy",), muted=("ada",))
    assert select_forwarded(videos, ["ada", "bo", "cy"], set(), 1) == {"TR_bo", "TR_cy_screen"}
    assert select_forwarded(videos, [], set(), 1) == {"TR_bo", "TR_cy_screen"}


@pytest.mark.unit
def test_speaker_order_moves_speakers_to_the_front_loudest_first():
    order = SpeakerOrder()
    for p in ("ada", "bo", "cy"):
        order.add(p)
    order.add("ada")  # publishing a second video keeps its place
    assert order.order == ["ada", "bo", "cy"]
    assert order.spoke(["cy", "bo"]) and order.order == ["cy", "bo", "ada"]
    assert not order.spoke(["cy", "bo"]) and not order.spoke([])  # nothing new; silence keeps the order
    assert order.spoke(["ada"]) and order.order == ["ada", "cy", "bo"]
    order.remove("cy")
    order.remove("nobody")
    assert order.order == ["ada", "bo"]


@pytest.mark.unit
def test_last_n_and_pin_messages_are_validated():
    assert parse_client_message('{"type": "last_n", "n": 4}')["n"] == 4
    assert parse_client_message('{"type": "last_n", "n": null}')["n"] is None
    assert parse_client_message('{"type": "pin", "participant": "ada"}')["participant"] == "ada"
    assert parse_client_message('{"type": "unpin", "participant": "ada"}')["participant"] == "ada"
    for bad, where in (('{"type": "last_n", "n": -1}', "last_n: n:"), ('{"type": "last_n"}', "'n' is a required"),
                       ('{"type": "last_n", "n": 2.5}', "last_n: n:"), ('{"type": "pin", "participant": ""}', "pin:"),
                       ('{"type": "unpin", "participant": "a", "x": 1}', "unpin:")):
        with pytest.raises(ProtocolError) as err:
            parse_client_message(bad)
        assert err.value.code == "invalid" and where in err.value.message, err.value.message


@pytest.mark.unit
def test_the_last_n_setting(tmp_path):
    assert load_settings(environ={}, overrides={"dev": True}).last_n == 9
    assert load_settings(environ={"STOA_LAST_N": "0"}, overrides={"dev": True}).last_n == 0
    config = tmp_path / "stoa.toml"
    config.write_text("last_n = 4\n")
    assert load_settings(str(config), environ={}, overrides={"dev": True}).last_n == 4
    with pytest.raises(ConfigError, match="last_n must be 0"):
        load_settings(environ={"STOA_LAST_N": "-2"}, overrides={"dev": True})


@pytest.mark.unit
async def test_a_leg_out_of_the_n_stays_paused_through_an_overload_resume_and_restarts_with_a_keyframe_request():
    from aiortc import RTCConfiguration, RTCPeerConnection

    from sfu.downtrack import DownTrack
    from tests.test_sfu_uptrack import make_track

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        leg = DownTrack(pc.addTransceiver("video", direction="sendonly").sender, subscriber_id="v", kind="video")
        up = make_track("video")
        leg.attach(up)
        assert leg.set_selected(False) and leg.paused and not leg.set_selected(False)
        leg.pause()
        leg.resume()          # overload shedding ends: Last-N still holds the leg
        assert leg.paused and leg.stats()["selected"] is False
        asked = up.keyframe_requests
        assert leg.set_selected(True) and not leg.paused
        assert up.keyframe_requests == asked + 1  # one PLI: the leg starts on the next keyframe
        leg.pause()
        leg.set_selected(False)
        leg.set_selected(True)
        assert leg.paused     # shed: it stays so until the shedding ends
        leg.resume()
        assert not leg.paused and up.keyframe_requests == asked + 2
    finally:
        await pc.close()


# -- four cameras, a viewer with N = 2 --------------------------------------------------------------

LOUD = 8000  # ~-15 dBov: a speaker (tests/test_speakers.py)


def frames_by_publisher(viewer: RoomClient) -> dict[str, int]:
    """Decoded video frames so far, per publishing participant (mid -> the offer's track map)."""
    out = {}
    for transceiver in viewer.sub.getTransceivers():
        info = viewer.track_info.get(transceiver.mid)
        collector = next((c for c in viewer.collectors if c.track is transceiver.receiver.track), None)
        if info and info["kind"] == "video" and collector is not None:
            out[info["participant"]] = collector.frames
    return out


async def decoding(viewer: RoomClient, expect: set[str], everyone: set[str], seconds: float = 3.0) -> dict:
    """The videos of `expect` decode frames over `seconds` and the others none, once what the others had in
    flight when they were paused has played out (at most 10 s); returns the deltas."""
    others = everyone - expect

    async def others_quiet() -> bool:
        before = frames_by_publisher(viewer)
        await asyncio.sleep(1.0)
        after = frames_by_publisher(viewer)
        return all(after.get(p, 0) == before.get(p, 0) for p in others)
    await eventually(others_quiet, 10, f"{sorted(others)} to stop decoding", interval=0)
    before = frames_by_publisher(viewer)
    await asyncio.sleep(seconds)
    after = frames_by_publisher(viewer)
    delta = {p: after.get(p, 0) - before.get(p, 0) for p in everyone}
    assert {p for p, d in delta.items() if d > 0} == expect, delta
    assert all(delta[p] >= 3 for p in expect), delta
    return delta


async def forwarded_becomes(viewer: RoomClient, publishers: set[str], tracks: dict[str, str], timeout=15.0) -> dict:
    want = {tracks[p] for p in publishers}

    def last():
        events = [e for e in viewer.events if e["type"] == "forwarded"]
        return events[-1] if events and set(events[-1]["track_ids"]) == want else None
    return await eventually(last, timeout, f"forwarded to become {sorted(publishers)}")


async def test_a_viewer_with_n_2_decodes_the_two_recent_speakers_and_a_pinned_one(stoa_server):
    room = "lastn"
    names = ["p1", "p2", "p3", "p4"]
    everyone = set(names)
    publishers, tones, viewer = {}, {}, None
    try:
        for name in names:  # published in this order: the order before anyone speaks
            client = await RoomClient(stoa_server.ws_base, room,
                                      stoa_server.token(room, name, "student", can_publish=True)).connect()
            publishers[name] = client
            tones[name] = ToneAudioTrack(amplitude=0)  # silence until it speaks
            reply = await client.publish(CounterVideoTrack(fps=10), tones[name], sources=["camera", "microphone"])
            assert reply["type"] == "answer", reply
        # The viewer comes last, so one offer carries every track (a viewer in the room first is
        # tests/test_viewer_first.py).
        viewer = await RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "viewer", "viewer")).connect()
        first = await viewer.request({"type": "last_n", "n": 2}, "forwarded")
        assert first["last_n"] == 2 and len(first["track_ids"]) == 2 and first["pinned"] == []
        tracks = {}
        for t in viewer.joined["room"]["tracks"]:
            if t["kind"] == "video":
                tracks[t["participant"]] = t["track_id"]
        assert set(tracks) == everyone
        await eventually(lambda: len(frames_by_publisher(viewer)) == 4, 15, "four video tracks at the viewer")

        # Nobody has spoken: the first two to publish.
        await forwarded_becomes(viewer, {"p1", "p2"}, tracks)
        await eventually(lambda: all(frames_by_publisher(viewer)[p] > 0 for p in ("p1", "p2")), 15, "p1, p2 decode")
        await decoding(viewer, {"p1", "p2"}, everyone)

        # p3 speaks: its video decodes within a few seconds, the least recent of the two (p2) stops.
        tones["p3"].amplitude = LOUD
        await forwarded_becomes(viewer, {"p3", "p1"}, tracks)
        start = frames_by_publisher(viewer)["p3"]
        await eventually(lambda: frames_by_publisher(viewer)["p3"] > start + 5, 5, "p3's video to decode")
        tones["p3"].amplitude = 0
        await decoding(viewer, {"p3", "p1"}, everyone)

        # The viewer pins p4: p4 and the most recent speaker (p3); then p1 speaks and p4 stays.
        pinned = await viewer.request({"type": "pin", "participant": "p4"}, "forwarded")
        assert pinned["pinned"] == ["p4"] and set(pinned["track_ids"]) == {tracks["p4"], tracks["p3"]}
        start = frames_by_publisher(viewer)["p4"]
        await eventually(lambda: frames_by_publisher(viewer)["p4"] > start + 5, 5, "p4's video to decode")
        tones["p1"].amplitude = LOUD
        await forwarded_becomes(viewer, {"p4", "p1"}, tracks)
        tones["p1"].amplitude = 0
        await decoding(viewer, {"p4", "p1"}, everyone)

        # Off (0): every video again.
        await viewer.request({"type": "last_n", "n": 0}, "forwarded")
        start = frames_by_publisher(viewer)
        await eventually(lambda: all(frames_by_publisher(viewer)[p] > start[p] for p in names), 10, "all to decode")
        await decoding(viewer, everyone, everyone)
        refused = await viewer.request({"type": "pin", "participant": "nobody"}, "error")
        assert refused["code"] == "not_found" and "nobody" in refused["message"]
    finally:
        for client in (viewer, *publishers.values()):
            if client is not None:
                await client.close()


@pytest.mark.slow
async def test_a_viewer_on_a_media_worker_gets_only_its_n_and_its_pin(workers_server):
    room = "lastn-workers"
    names = ["p1", "p2", "p3"]
    publishers, viewer = [], None
    try:
        for name in names:
            client = await RoomClient(workers_server.ws_base, room,
                                      workers_server.token(room, name, "student", can_publish=True)).connect()
            publishers.append(client)
            assert (await client.publish(CounterVideoTrack(fps=10), sources=["camera"]))["type"] == "answer"
        token = workers_server.token(room, "viewer", "viewer")
        viewer = await RoomClient(workers_server.ws_base, room, token).connect()
        sub = workers_server.app[ROOMS].rooms[room].participants["viewer"].subscriber
        assert isinstance(sub, RemoteRoomSubscriber)  # its connection runs in a media worker
        tracks = {t["participant"]: t["track_id"] for t in viewer.joined["room"]["tracks"]}
        await viewer.request({"type": "last_n", "n": 1}, "forwarded")
        await forwarded_becomes(viewer, {"p1"}, tracks)
        await eventually(lambda: len(frames_by_publisher(viewer)) == 3, 15, "three video tracks at the viewer")
        await eventually(lambda: frames_by_publisher(viewer)["p1"] > 0, 15, "p1 decodes")
        await decoding(viewer, {"p1"}, set(names))
        await viewer.request({"type": "pin", "participant": "p3"}, "forwarded")
        start = frames_by_publisher(viewer)["p3"]
        await eventually(lambda: frames_by_publisher(viewer)["p3"] > start + 3, 10, "p3's video to decode")
        await decoding(viewer, {"p3"}, set(names))
    finally:
        for client in (viewer, *publishers):
            if client is not None:
                await client.close()
