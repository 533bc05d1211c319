"""The forwarding path alone, without signaling: real aiortc peers on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from sfu.aiortc_seam import decoder_running
from sfu.peer import IceSettings, PeerFactory
from sfu.publisher import Publisher
from sfu.subscriber import Subscriber
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.peers import FrameCollector, answer_offer, apply_answer, client_pc, make_offer


async def start_publisher(peers, video_track, audio_track=None):
    published = []
    pc = client_pc()
    pc.addTrack(video_track)
    if audio_track is not None:
        pc.addTrack(audio_track)
    publisher = Publisher("alice", peers, on_published=published.append, on_unpublished=lambda t: None)
    answer = await publisher.negotiate(await make_offer(pc))
    await apply_answer(pc, answer)
    return pc, publisher, published


async def start_subscriber(peers, name, uptracks):
    offers = asyncio.Queue()

    async def send_offer(sdp, tracks):
        await offers.put(sdp)

    sub = Subscriber(name, peers, send_offer)
    pc = client_pc()
    collectors = []
    pc.on("track", lambda track: collectors.append(FrameCollector(track)))
    for up in uptracks:
        sub.add_track(up)
    await sub.negotiate()
    await sub.on_answer(await answer_offer(pc, await offers.get()))
    return pc, sub, collectors


async def test_forwards_video_and_audio_without_decoding():
    peers = PeerFactory(IceSettings(addresses=["127.0.0.1"]))
    video = CounterVideoTrack()
    pub_pc, publisher, published = await start_publisher(peers, video, ToneAudioTrack())
    assert {t.kind for t in published} == {"video", "audio"}
    subs = [await start_subscriber(peers, f"s{i}", published) for i in range(3)]
    for _, _, collectors in subs:
        for c in collectors:
            await c.wait_frames(30 if c.kind == "video" else 50, timeout=15)
    for up in published:
        assert not decoder_running(up.receiver)
    for pc, sub, collectors in subs:
        vid = next(c for c in collectors if c.kind == "video")
        counters = vid.counters
        assert counters == sorted(counters)
        assert counters[-1] - counters[0] + 1 - len(counters) <= 0.1 * len(counters)
        for c in collectors:
            c.stop()
        await pc.close()
        await sub.close()
    await pub_pc.close()
    await publisher.close()
    assert not peers.live
