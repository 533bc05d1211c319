"""Active speaker detection (sfu/speakers.py) on synthetic levels with an injected clock, and the room's
`speakers` events from two real aiortc publishers whose tones differ in loudness."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc.rtp import RtpPacket

from sfu.speakers import HOLD, LevelRing, SpeakerDetector
from tests.client import RoomClient
from tests.media import ToneAudioTrack


PTIME = 0.02


def feed(ring: LevelRing, level: int, start: float, seconds: float) -> float:
    """Levels (RFC 6464 -dBov) every 20 ms from `start` for `seconds`; returns the end time."""
    n = round(seconds / PTIME)
    for i in range(n):
        ring.add(level, start + i * PTIME)
    return start + n * PTIME


def detector_with(*names: str, **kw) -> tuple[SpeakerDetector, dict[str, LevelRing]]:
    det = SpeakerDetector(**kw)
    rings = {}
    for name in names:
        rings[name] = LevelRing()
        det.add_track(f"TR_{name}", name, rings[name])
    return det, rings


def keys(ranking) -> list[str] | None:
    return None if ranking is None else [s.key for s in ranking]


@pytest.mark.unit
def test_loudest_first_and_silence_is_nobody():
    det, rings = detector_with("ada", "bo", "cy")
    t0 = 1000.0
    feed(rings["ada"], 45, t0, 1.0)   # -45 dBov: quiet speech
    feed(rings["bo"], 15, t0, 1.0)    # -15 dBov: loud
    feed(rings["cy"], 127, t0, 1.0)   # silence
    ranking = det.update(t0 + 1.0)
    assert keys(ranking) == ["bo", "ada"]
    assert [s.level for s in ranking] == [-15.0, -45.0]
    assert det.update(t0 + 1.2) is None  # nothing changed: no event


@pytest.mark.unit
def test_the_mean_is_of_power_so_a_burst_counts_more_than_its_share():
    ring = LevelRing()
    feed(ring, 127, 0.0, 0.5)
    feed(ring, 10, 0.5, 0.1)          # 100 ms at -10 dBov within 600 ms
    level = ring.loudness(0.6, 0.6)
    assert -19 < level < -17          # 10*log10(1/6 * 0.1) = -17.8, far above an average of levels


@pytest.mark.unit
def test_a_speaker_is_held_through_pauses_then_dropped():
    det, rings = detector_with("ada")
    t = feed(rings["ada"], 20, 0.0, 1.0)
    assert keys(det.update(t)) == ["ada"]
    assert det.update(t + HOLD - 0.1) is None          # no packets (DTX) but within the hold
    assert keys(det.update(t + 0.6 + HOLD + 0.1)) == []   # out of the window, then out of the hold


@pytest.mark.unit
def test_order_switches_when_levels_swap_but_not_on_a_small_lead():
    det, rings = detector_with("ada", "bo")
    t = 0.0
    feed(rings["ada"], 15, t, 1.0)
    t = feed(rings["bo"], 40, t, 1.0)
    assert keys(det.update(t)) == ["ada", "bo"]
    feed(rings["ada"], 16, t, 1.0)                      # bo now 1 dB louder: ada keeps the lead
    t = feed(rings["bo"], 15, t, 1.0)
    assert det.update(t) is None
    feed(rings["ada"], 40, t, 1.0)                      # swapped
    t = feed(rings["bo"], 15, t, 1.0)
    assert keys(det.update(t)) == ["bo", "ada"]


@pytest.mark.unit
def test_events_are_at_least_min_interval_apart():
    det, rings = detector_with("ada", "bo", min_interval=0.5)
    t = feed(rings["ada"], 20, 0.0, 1.0)
    assert keys(det.update(t)) == ["ada"]
    t2 = feed(rings["bo"], 10, t, 0.2)
    assert det.update(t2) is None                       # bo speaks, but only 0.2 s after the last event
    assert keys(det.update(t + 0.5)) == ["bo", "ada"]   # reported once the interval has passed


@pytest.mark.unit
def test_removed_tracks_and_ring_wrap():
    det, rings = detector_with("ada", "bo")
    t = feed(rings["ada"], 20, 0.0, 10.0)               # many times the ring's size
    feed(rings["bo"], 30, 0.0, 10.0)
    assert keys(det.update(t)) == ["ada", "bo"]
    det.remove_track("TR_ada")
    assert keys(det.update(t + 1)) == ["bo"]
    assert len(det) == 1 and det.forget() and not det.forget()


@pytest.mark.unit
def test_the_ring_reads_the_rfc6464_extension_of_a_packet():
    ring = LevelRing()
    packet = RtpPacket(payload_type=111)
    packet.extensions.audio_level = (True, 33)
    ring.feed(packet, 5.0)
    ring.feed(RtpPacket(payload_type=111), 5.01)       # no extension: nothing recorded
    assert round(ring.loudness(5.02, 0.5)) == -33


async def test_speakers_events_name_the_loud_publisher_first_and_follow_a_swap(stoa_server):
    room = "speakers"
    loud, quiet = ToneAudioTrack(amplitude=8000), ToneAudioTrack(frequency=660, amplitude=250)  # ~-15 / ~-45 dBov
    ada = await RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "ada", "instructor")).connect()
    bo = await RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "bo", "student", can_publish=True)).connect()
    watcher = await RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "cy", "viewer")).connect()
    try:
        assert (await ada.publish(loud, sources=["microphone"]))["type"] == "answer"
        assert (await bo.publish(quiet, sources=["microphone"]))["type"] == "answer"

        async def ranking_becomes(order: list[str], timeout: float = 20.0) -> dict:
            deadline = time.monotonic() + timeout
            while True:
                event = await watcher.wait_for("speakers", timeout=max(0.1, deadline - time.monotonic()))
                if [s["identity"] for s in event["speakers"]] == order:
                    return event
                if time.monotonic() > deadline:
                    raise AssertionError(f"speakers never became {order}; last {event}")

        first = await ranking_becomes(["ada", "bo"])
        assert first["speakers"][0]["level"] > first["speakers"][1]["level"] + 20
        loud.amplitude, quiet.amplitude = 250, 8000
        swapped = await ranking_becomes(["bo", "ada"])
        assert swapped["speakers"][0]["level"] > swapped["speakers"][1]["level"] + 20
        loud.amplitude = quiet.amplitude = 0                 # both fall silent
        await ranking_becomes([])
    finally:
        for client in (ada, bo, watcher):
            await client.close()
