"""The interactive room over real aiortc data channels on loopback (one peer connection per member)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from classroom.interactive.channel import ChannelMember
from tests.peers import answer_offer, apply_answer, client_pc, make_offer


class Peer:
    """A client: its own RTCPeerConnection with the reliable, ordered "stoa" channel it opened."""

    def __init__(self, identity: str):
        self.identity = identity
        self.pc = client_pc()
        self.channel = self.pc.createDataChannel("stoa", ordered=True)
        self.received: list[dict] = []
        self.channel.on("message", lambda raw: self.received.append(json.loads(raw)))

    def send(self, type: str, data: dict | None = None, *, id: str | None = None) -> str:
        msg_id = id or uuid.uuid4().hex[:8]
        self.channel.send(json.dumps({"v": 1, "type": type, "id": msg_id, "data": data or {}}))
        return msg_id

    async def wait_for(self, predicate, timeout: float = 10.0) -> dict:
        async def poll():
            while True:
                for m in self.received:
                    if predicate(m):
                        return m
                await asyncio.sleep(0.01)
        return await asyncio.wait_for(poll(), timeout)

    async def reply(self, msg_id: str) -> dict:
        return await self.wait_for(lambda m: m.get("id") == msg_id and m["type"] in ("ack", "error"))


async def connect(room, identity: str, role: str = "student"):
    """Negotiate a loopback peer connection; the server side wraps the channel in a ChannelMember."""
    peer = Peer(identity)
    server_pc = client_pc()
    opened: asyncio.Future = asyncio.get_running_loop().create_future()

    @server_pc.on("datachannel")
    def on_channel(channel):
        if not opened.done():
            opened.set_result(channel)

    await apply_answer(peer.pc, await answer_offer(server_pc, await make_offer(peer.pc)))
    channel = await asyncio.wait_for(opened, 15)
    if channel.readyState != "open":
        ready = asyncio.get_running_loop().create_future()
        channel.on("open", lambda: ready.done() or ready.set_result(None))
        await asyncio.wait_for(ready, 15)
    member = ChannelMember(room, channel, identity=identity, name=identity.title(), role=role)
    await member.start()
    await peer.wait_for(lambda m: m["type"] == "state")
    return peer, server_pc, member


@pytest.fixture
async def channel_room(make_room):
    room = make_room()
    connections = []

    async def add(identity, role="student"):
        conn = await connect(room, identity, role)
        connections.append(conn)
        return conn[0]

    yield room, add
    for peer, server_pc, member in connections:
        await member.stop()
        await peer.pc.close()
        await server_pc.close()


async def test_room_over_real_data_channels(channel_room):
    room, add = channel_room
    teacher = await add("teacher", "instructor")
    class_ = [await add(f"s{i}") for i in range(4)]

    # chat: acked to the sender with the stored id, fanned out to everyone
    msg_id = class_[0].send("chat.send", {"text": "héllo über channel"})
    ack = await class_[0].reply(msg_id)
    assert ack["type"] == "ack" and ack["data"]["message_id"] >= 1
    for p in (teacher, *class_):
        got = await p.wait_for(lambda m: m["type"] == "chat.message")
        assert got["data"]["text"] == "héllo über channel"

    # a poll: every vote counted, results reach the instructor
    pid = (await teacher.reply(teacher.send("poll.create", {"question": "?", "options": ["a", "b"],
                                                            "start": True})))["data"]["poll_id"]
    for i, p in enumerate(class_):
        assert (await p.reply(p.send("poll.vote", {"poll_id": pid, "choices": [i % 2]})))["type"] == "ack"
    final = await teacher.reply(teacher.send("poll.close", {"poll_id": pid}))
    assert final["data"]["results"]["counts"] == [2, 2]

    # a student's moderator-only action and garbage are refused with errors, over the same channel
    denied = await class_[1].reply(class_[1].send("whiteboard.clear"))
    assert denied["code"] == "forbidden"
    class_[1].channel.send("{not json")
    bad = await class_[1].wait_for(lambda m: m["type"] == "error" and "not valid JSON" in m["message"])
    assert bad["id"] is None

    # one member's channel closing does not disturb the others
    await class_[3].pc.close()
    await asyncio.sleep(0.2)
    after = teacher.send("chat.send", {"text": "after a member left"})
    assert (await teacher.reply(after))["type"] == "ack"
    for p in class_[:3]:
        await p.wait_for(lambda m: m["type"] == "chat.message" and m["data"]["text"] == "after a member left")


async def test_messages_from_one_member_are_handled_in_order(channel_room):
    room, add = channel_room
    a = await add("a")
    b = await add("b")
    room.limiter.rates = {}  # order, not rate limits, is under test
    ids = [a.send("chat.send", {"text": f"n{i}"}) for i in range(30)]
    for msg_id in ids:
        assert (await a.reply(msg_id))["type"] == "ack"
    await b.wait_for(lambda m: m["type"] == "chat.message" and m["data"]["text"] == "n29")
    texts = [m["data"]["text"] for m in b.received if m["type"] == "chat.message"]
    assert texts == [f"n{i}" for i in range(30)]


async def test_thirty_members_over_data_channels_poll_and_quiz(channel_room, interactive_store):
    from classroom.interactive.quiz import import_bank

    store, _ = interactive_store
    room, add = channel_room
    teacher = await add("teacher", "instructor")
    class_ = list(await asyncio.gather(*(add(f"s{i:02d}") for i in range(29))))
    assert len(room.members) == 30

    pid = (await teacher.reply(teacher.send("poll.create", {"question": "?", "options": ["a", "b", "c"],
                                                            "start": True})))["data"]["poll_id"]
    ids = [(p, p.send("poll.vote", {"poll_id": pid, "choices": [i % 3]})) for i, p in enumerate(class_)]
    for p, msg_id in ids:
        assert (await p.reply(msg_id))["type"] == "ack"
    final = await teacher.reply(teacher.send("poll.close", {"poll_id": pid}))
    assert final["data"]["results"]["counts"] == [10, 10, 9]

    bank = f"dc-{uuid.uuid4().hex[:6]}"
    await import_bank(store, {"bank": bank, "questions": [{"prompt": f"q{i}", "choices": ["x", "y"], "answer": 0}
                                                          for i in range(10)]})
    rid = (await teacher.reply(teacher.send("quiz.start", {"bank": bank})))["data"]["round_id"]
    got = [await p.wait_for(lambda m: m["type"] == "quiz.question") for p in class_]
    counts: dict[str, int] = {}
    for q in got:
        counts[q["data"]["question_id"]] = counts.get(q["data"]["question_id"], 0) + 1
    assert len(counts) == 10 and max(counts.values()) == 3  # 29 students, 10 questions: 3,3,...,2
    for p in class_:
        assert (await p.reply(p.send("quiz.answer", {"round_id": rid, "choice": 0})))["data"]["correct"] is True
    progress = await teacher.wait_for(lambda m: m["type"] == "quiz.progress"
                                      and sum(q["answered"] for q in m["data"]["questions"]) == 29)
    assert all(q["accuracy"] == 1.0 for q in progress["data"]["questions"])
