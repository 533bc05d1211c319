"""Interactive participants on several nodes (docs/scaling.md, "Classroom state across nodes"): students
served on the node they reach as edge members, their classroom messages carried to and from the room's home
over Redis streams. Several `stoa serve` processes on loopback, real Redis (the machine's, under the test's
prefix, or a private redis-server to pause), real aiortc peers over the data channel."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import aiohttp
import pytest
import redis.asyncio as aioredis

from shared.auth import mint_token
from signaling.cluster import Node
from shared.config import DEV_API_KEY, DEV_API_SECRET
from tests.client import RoomClient
from tests.fixtures.classroom_e2e import Member, close_all, start_all
from tests.media import CounterVideoTrack
from tests.serve import eventually
from tests.test_cluster import PrivateRedis, node, readyz, redis_client, upgrade  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


async def a_is_full(client, prefix: str) -> bool:
    """Whether node a's record says it is full (its participants at its capacity)."""
    text = await client.hget(prefix + "nodes", "a")
    return text is not None and Node.from_json(text).participants >= Node.from_json(text).capacity > 0
SPREAD = {"STOA_SPREAD_MEMBERS": "true"}
ADMIN = aiohttp.BasicAuth(DEV_API_KEY, DEV_API_SECRET)


class On:
    """A node as tests.fixtures.classroom_e2e.Member wants a server: its WebSocket base and its tokens."""

    def __init__(self, server):
        self.server, self.ws_base = server, server.base.replace("http", "ws")

    def token(self, room: str, identity: str, role: str, name: str = "") -> str:
        return mint_token(DEV_API_KEY, DEV_API_SECRET, room=room, identity=identity, role=role, name=name)


def chats(member: Member, kind: str = "user") -> list[str]:
    return [p["data"]["text"] for p in member.of_type("chat.message") if p["data"]["kind"] == kind]


def assert_exactly_once_in_order(member: Member, senders: dict[str, int]) -> None:
    got = [t for t in chats(member) if t.startswith("line ")]
    assert len(got) == len(set(got)), f"{member.identity} got a line twice: {got}"
    for sender, n in senders.items():
        mine = [t for t in got if t.startswith(f"line {sender} ")]
        assert mine == [f"line {sender} {i}" for i in range(n)], f"{member.identity} got {sender}'s lines as {mine}"


@contextlib.asynccontextmanager
async def nodes(tmp_path, redis_url: str, prefix: str, names: str, *extra: str, env: dict | None = None):
    servers = [node(tmp_path, n, redis_url, prefix, *extra, env={**SPREAD, **(env or {})}) for n in names]
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(s.wait_up(http) for s in servers))
            yield http, servers
    finally:
        for s in servers:
            s.stop()


async def test_a_chat_on_a_reaches_members_on_b_and_c_once_and_a_poll_is_the_same_everywhere(
        tmp_path, redis_url, redis_prefix, redis_client, pg_dsn):  # noqa: F811
    upgrade(pg_dsn)
    async with nodes(tmp_path, redis_url, redis_prefix, "abc", "--database", pg_dsn) as (http, (a, b, c)):
        async with http.post(a.base + "/api/sessions", auth=ADMIN,
                             json={"title": "Optics", "instructor": "prof", "capacity": 20}) as resp:
            assert resp.status in (200, 201), await resp.text()
            session = await resp.json()
        room = session["room"]
        async with http.post(f"{a.base}/api/sessions/{session['id']}/start", auth=ADMIN) as resp:
            assert resp.status == 200, await resp.text()

        teacher = Member(On(a), room, "prof", "instructor")
        await teacher.start()  # the first join places the room on a
        assert await redis_client.hget(redis_prefix + "room_node_map", room) == "a"
        await teacher.client.publish(CounterVideoTrack(), sources=["camera"])
        camera = (await teacher.client.expect("track_published", timeout=10))["track"]
        students = {"sa": Member(On(a), room, "sa"), "sb": Member(On(b), room, "sb"),
                    "sb2": Member(On(b), room, "sb2"), "sc": Member(On(c), room, "sc")}
        everyone = [teacher, *students.values()]
        extra: list = []
        try:
            await start_all(list(students.values()))
            for identity, served in (("sa", "a"), ("sb", "b"), ("sb2", "b"), ("sc", "c")):
                joined = students[identity].client.joined
                assert joined["cluster"]["node"] == served, joined  # not redirected: served where it landed
                if served != "a":
                    assert joined["cluster"]["home"] == "a"
                    # The home's state (its InteractiveRoom: chat history, polls) came over Redis.
                    assert students[identity].state()["room"] == room
                    # Its `joined` lists the home's relayed tracks: its page shows the teacher's camera on.
                    assert camera["track_id"] in {t["track_id"] for t in joined["room"]["tracks"]}, joined["room"]
                    relayed = next(t for t in joined["room"]["tracks"] if t["track_id"] == camera["track_id"])
                    assert relayed["participant"] == "prof" and relayed["source"] == "camera", relayed

            # An edge member hears the home room's presence: the teacher and the classmates on other nodes.
            for identity in ("sb", "sc"):
                client = students[identity].client
                await eventually(lambda c=client: {"prof", "sa", "sb2" if identity == "sc" else "sc"} <= {
                    e["participant"]["identity"] for e in c.events if e["type"] == "participant_joined"}, 10,
                    f"{identity} to hear who is in the room")

            # An edge member decodes the teacher's video, relayed a -> edge (frame counters read back).
            for identity in ("sb", "sc"):
                video = await students[identity].client.wait_track("video", timeout=15)
                await eventually(lambda v=video: len(v.counters) >= 20, 15, f"{identity} to decode 20 frames")
                assert video.counters == sorted(video.counters), "frames out of order"

            # Chat from a, b and c: every member, wherever it is, gets each line once, in order per sender.
            lines = {"sa": 5, "sb": 5, "sc": 5, "prof": 3}
            for i in range(5):
                for identity in ("sa", "sb", "sc", "prof"):
                    if i < lines[identity]:
                        who = teacher if identity == "prof" else students[identity]
                        await who.send("chat.send", {"text": f"line {identity} {i}"})
            total = sum(lines.values())
            for member in everyone:
                await eventually(lambda m=member: len([t for t in chats(m) if t.startswith("line ")]) >= total, 15,
                                 f"{member.identity}'s chat lines")
            await asyncio.sleep(0.5)  # a duplicate would come right after
            for member in everyone:
                assert_exactly_once_in_order(member, lines)
            # Acks and refusals go back to the sender on its node only.
            refused = await students["sc"].call("poll.create", {"question": "?", "options": ["x", "y"]})
            assert refused["type"] == "error" and refused["code"] == "forbidden", refused

            # A poll voted from b and c: the same results on every node.
            created = await teacher.ok("poll.create", {"question": "Lens?", "options": ["convex", "concave"],
                                                      "results": "live", "start": True})
            poll_id = created["poll_id"]
            for s in students.values():
                await s.wait(lambda p: p["type"] == "poll.opened" and p["data"]["id"] == poll_id)
            for identity, choice in (("sb", 0), ("sb2", 1), ("sc", 0), ("sa", 0)):
                assert (await students[identity].call("poll.vote", {"poll_id": poll_id, "choices": [choice]})
                        )["type"] == "ack"
            closed = await teacher.ok("poll.close", {"poll_id": poll_id})
            assert closed["results"]["counts"] == [3, 1]
            for member in everyone:
                final = await member.wait(lambda p: p["type"] == "poll.closed" and p["data"]["id"] == poll_id)
                assert final["data"]["tally"] == closed["results"], member.identity

            # Presence and attendance count the edge members: the home's participant list, and the session's.
            late = Member(On(a), room, "late")
            everyone.append(late)
            await late.start()
            listed = {p["identity"]: p for p in late.client.joined["room"]["participants"]}
            assert {"prof", "sa", "sb", "sb2", "sc"} <= set(listed), listed
            assert listed["sc"]["node"] == "c" and listed["sb"]["node"] == "b"
            async with http.get(f"{a.base}/api/sessions/{session['id']}/participants", auth=ADMIN) as resp:
                present = {p["identity"] for p in (await resp.json())["participants"]}
            assert {"prof", "sa", "sb", "sb2", "sc", "late"} <= present, present
            # An edge member that leaves is gone from the home's list; its classmates are told.
            await students["sc"].close()
            await teacher.client.wait_for("participant_left", timeout=10)
            await eventually(lambda: "SC left" in chats(teacher, "system"), 10, "the home to say sc left")
            assert "SB joined" in chats(late, "system") or "SB joined" in chats(teacher, "system")
            # A student who may publish is an edge member too; publishing, it is told to move to the home.
            speaker = RoomClient(On(c).ws_base, room, mint_token(DEV_API_KEY, DEV_API_SECRET, room=room,
                                                                  identity="speaker", role="student",
                                                                  can_publish=True))
            extra.append(speaker)
            await speaker.connect()
            assert speaker.joined["cluster"] == {**speaker.joined["cluster"], "node": "c", "home": "a"}
            refusal = await speaker.request({"type": "publish", "sdp": "v=0\r\n"}, "error")
            assert refusal["code"] == "publish_on_home" and refusal["node"] == "a", refusal
            assert refusal["page"] == f"{a.base}/rooms/{room}", refusal
        finally:
            await close_all(everyone)
            for client in extra:
                await client.close()


async def test_redis_paused_loses_no_accepted_chat_between_home_and_edge(tmp_path, redis_prefix):
    redis = PrivateRedis(tmp_path)
    redis.start()
    await redis.wait_up()
    try:
        # No spread_members here: the home at its node_capacity (1: the teacher) is what spreads the student.
        env = {"STOA_SPREAD_MEMBERS": "false", "STOA_NODE_CAPACITY": "1"}
        async with nodes(tmp_path, redis.url, redis_prefix, "ab", env=env) as (http, (a, b)):
            room = "paused"
            teacher = Member(On(a), room, "prof", "instructor")
            await teacher.start()
            watcher = aioredis.Redis.from_url(redis.url, decode_responses=True)
            try:
                await eventually(lambda: a_is_full(watcher, redis_prefix), 10, "a's record to count the teacher")
            finally:
                await watcher.aclose()
            edge = Member(On(b), room, "sb")
            await edge.start()
            assert edge.client.joined["cluster"]["home"] == "a"
            everyone = [teacher, edge]
            try:
                await edge.ok("chat.send", {"text": "line sb 0"})
                redis.proc.send_signal(signal.SIGSTOP)  # hung: connections stay open, nothing answers
                try:
                    # ~7 s, past redis-py's own timeouts and retries: sent during the pause, the teacher's lines
                    # are accepted at once on a, the edge's wait on b for Redis.
                    for i in range(1, 9):
                        await teacher.ok("chat.send", {"text": f"line prof {i - 1}"})
                        await edge.send("chat.send", {"text": f"line sb {i}"})
                        await asyncio.sleep(0.85)
                    assert (await readyz(http, b))[0] == 503  # the node saw Redis hang
                finally:
                    redis.proc.send_signal(signal.SIGCONT)
                lines = {"prof": 8, "sb": 9}
                for member in everyone:
                    await eventually(lambda m=member: len([t for t in chats(m) if t.startswith("line ")]) >= 17,
                                     20, f"{member.identity}'s chat lines after the pause")
                await asyncio.sleep(0.5)
                for member in everyone:
                    assert_exactly_once_in_order(member, lines)
                acks = [p for p in edge.of_type("ack") if p["id"].startswith("sb-")]
                assert len(acks) == 9, acks  # each of the edge's lines was accepted once, by the home
            finally:
                await close_all(everyone)
    finally:
        redis.kill()


async def test_a_stream_entry_added_twice_is_handled_once_and_a_fanout_is_one_entry(
        redis_url, redis_prefix, redis_client):  # noqa: F811
    """The streams' exactly-once rule on the machine's Redis: a retried XADD that had landed (the same writer
    and sequence number again) is dropped by the reader; one message for several members is one entry."""
    from signaling.cluster import connect
    from signaling.edge_members import StreamReader, StreamWriter

    key = redis_prefix + "classroom:out:test"
    client = connect(redis_url)
    got: list = []

    async def handle(entry: dict) -> None:
        got.append((entry["m"]["n"], entry.get("to")))

    reader = StreamReader(client, key, handle)
    writer = StreamWriter(client, key, "w1")
    try:
        await eventually(lambda: reader.last_id is not None, 5, "the reader to start")
        for n in range(3):
            writer.add({"n": n})
        shared = {"n": 3}
        for member in ("k1", "k2", "k3"):
            writer.add(shared, to=member)  # a fan-out: the same message object for three members
        await eventually(lambda: len(got) == 4, 5, "four entries")
        await client.xadd(key, {"e": '{"w":"w1","s":2,"m":{"n":1}}'})  # what a retry that had landed leaves
        writer.add({"n": 4})
        await eventually(lambda: len(got) == 5, 5, "the next entry")
        assert got == [(0, None), (1, None), (2, None), (3, ["k1", "k2", "k3"]), (4, None)]
        assert reader.duplicates == 1
        assert await client.xlen(key) == 6
    finally:
        await reader.close()
        await writer.close()
        await client.aclose()


async def test_an_edge_that_dies_leaves_the_homes_list_and_a_home_that_dies_reloads_its_edge_members(
        tmp_path, redis_url, redis_prefix, redis_client):  # noqa: F811
    async with nodes(tmp_path, redis_url, redis_prefix, "abc") as (http, (a, b, c)):
        room = "dies"
        teacher = Member(On(a), room, "prof", "instructor")
        await teacher.start()
        sb, sc = Member(On(b), room, "sb"), Member(On(c), room, "sc")
        everyone = [teacher, sb, sc]
        try:
            await start_all([sb, sc])
            assert sb.client.joined["cluster"]["home"] == sc.client.joined["cluster"]["home"] == "a"
            c.proc.send_signal(signal.SIGKILL)  # its edge member cannot say it left: the home sees c gone
            c.proc.wait(10)
            left = await teacher.client.wait_for("participant_left", timeout=15)
            assert left["identity"] == "sc"
            await eventually(lambda: "SC left" in chats(teacher, "system"), 5, "the home to say sc left")
            assert "SC left" in chats(sb, "system")

            a.proc.send_signal(signal.SIGKILL)  # the home: b's relay from it ends, b reloads its edge member
            a.proc.wait(10)
            moved = await sb.client.expect("redirect", timeout=5)
            assert moved["node"] == "b" and moved["page"] == f"{b.base}/rooms/{room}", moved
            await eventually(lambda: sb.client.ws.closed, 5, "the socket to close")
            assert sb.client.ws.close_code == 4307
            # The page's reload there: a's relay cannot be opened and a does not answer, so it is forgotten and
            # the room placed again, on b; the join after that is served on b, the room's new home.
            for _ in range(3):
                again = Member(On(b), room, "sb")
                everyone.append(again)
                await again.client.connect(join=False)
                reply = await again.client.request({"type": "join", "token": again.client.token}, "joined",
                                                   "error", "redirect")
                if reply["type"] == "joined":
                    again.client.joined = reply
                    break
                assert reply["type"] == "redirect" and reply["node"] == "b", reply
            else:
                raise AssertionError("sb was not served on b after its home died")
            assert "home" not in again.client.joined["cluster"], again.client.joined
            assert await redis_client.hget(redis_prefix + "room_node_map", room) == "b"
            await again.wait(lambda p: p.get("type") == "state")
            channel = lambda: again.client.data_channel  # noqa: E731
            await eventually(lambda: channel() is not None and channel().readyState == "open", 10, "its channel")
            await again.ok("chat.send", {"text": "line sb after"})
        finally:
            await close_all(everyone)


async def test_the_staff_on_the_home_mute_remove_and_ban_an_edge_member_as_a_local_one(
        tmp_path, redis_url, redis_prefix, redis_client, pg_dsn):  # noqa: F811
    """The home forwards a moderation of an edge member to its edge over the classroom streams; the edge does
    it to its Participant: the student gets the same refusals, `left` and close as a local one."""
    upgrade(pg_dsn)
    async with nodes(tmp_path, redis_url, redis_prefix, "ab", "--database", pg_dsn) as (http, (a, b)):
        async with http.post(a.base + "/api/sessions", auth=ADMIN,
                             json={"title": "Ethics", "instructor": "prof", "capacity": 20}) as resp:
            assert resp.status in (200, 201), await resp.text()
            session = await resp.json()
        room = session["room"]
        async with http.post(f"{a.base}/api/sessions/{session['id']}/start", auth=ADMIN) as resp:
            assert resp.status == 200, await resp.text()

        def client(server, identity: str, role: str = "student") -> RoomClient:
            on = On(server)
            made = RoomClient(on.ws_base, room, on.token(room, identity, role))
            clients.append(made)
            return made

        clients: list[RoomClient] = []
        try:
            teacher = await client(a, "prof", "instructor").connect()
            assert teacher.joined["type"] == "joined", teacher.joined
            sa, sb, sb2 = client(a, "sa"), client(b, "sb"), client(b, "sb2")
            for c in (sa, sb, sb2):
                await c.connect()
                assert c.joined["type"] == "joined", c.joined
            assert sa.joined["cluster"]["node"] == "a" and "home" not in sa.joined["cluster"]
            assert sb.joined["cluster"]["home"] == sb2.joined["cluster"]["home"] == "a"
            await eventually(lambda: {"sb", "sb2"} <= {e["participant"]["identity"] for e in teacher.events
                                                      if e["type"] == "participant_joined"}, 10,
                             "the home to list its edge members")

            async def moderate(**message) -> dict:
                return await teacher.request({"type": "moderate", **message}, "moderated", "error")

            # Neither publishes: the same refusals, whether the edge or the home answers.
            for action in ("mute", "allow_unmute"):
                local, edge = await moderate(action=action, identity="sa"), await moderate(action=action, identity="sb")
                assert local["type"] == edge["type"] == "error" and local["code"] == edge["code"] == "not_found", \
                    (local, edge)
                assert edge["message"] == local["message"].replace("sa", "sb"), (local, edge)

            # Remove: the same answer to the teacher, the same `left` and close to the student.
            for target in ("sa", "sb"):
                out = await moderate(action="remove", identity=target, reason="off topic")
                assert out == {"type": "moderated", "action": "remove", "identity": target, "ref": None}, out
            left_a, left_b = await sa.expect("left"), await sb.expect("left")
            assert left_b == left_a == {"type": "left", "code": "removed", "reason": "off topic", "by": "prof"}, \
                (left_a, left_b)
            await eventually(lambda: sa.ws.closed and sb.ws.closed, 5, "both sockets to close")
            assert sb.ws.close_code == sa.ws.close_code, (sa.ws.close_code, sb.ws.close_code)
            # The home's participant list has it no more (its edge's `leave` reached the home).
            await eventually(lambda: any(e["type"] == "participant_left" and e["identity"] == "sb"
                                         for e in teacher.events), 10, "the home to see sb leave")
            late = await client(a, "late").connect()
            listed = {p["identity"] for p in late.joined["room"]["participants"]}
            assert "sb" not in listed and "sa" not in listed and "sb2" in listed, listed

            # Ban: the edge member is disconnected as banned, and its next join (on its edge) is refused.
            out = await moderate(action="ban", identity="sb2", reason="spam")
            assert out["type"] == "moderated", out
            left = await sb2.expect("left")
            assert left["code"] == "banned" and left["reason"] == "banned from this session: spam", left
            again = await client(b, "sb2").connect()
            assert again.joined["type"] == "error" and again.joined["code"] == "banned", again.joined
            # A target the home does not know anywhere: the local answer.
            gone = await moderate(action="remove", identity="sb")
            assert gone["type"] == "error" and gone["code"] == "not_found", gone
        finally:
            for c in clients:
                await c.close()


async def test_a_moderation_sent_to_an_edge_is_answered_on_the_homes_stream_or_fails_clearly(
        redis_url, redis_prefix, redis_client, monkeypatch):  # noqa: F811
    """The home's side of a moderation on the machine's Redis: the `moderate` entry goes to the member's edge
    stream `to` its key; the edge's answer (done, or a refusal) comes back on the home's stream and is
    returned or raised as the same error; no answer is `Unavailable`, naming the node."""
    from types import SimpleNamespace

    from classroom.errors import NotFound, Unavailable
    from signaling import edge_members
    from signaling.cluster import connect
    from signaling.routing import CLUSTER

    client = connect(redis_url)
    relay = SimpleNamespace(redis=client, prefix=redis_prefix, node_id="h")
    home = edge_members.HomeSide({CLUSTER: SimpleNamespace(healthy=False)}, relay)
    to_edge = edge_members.StreamWriter(client, edge_members.out_key(redis_prefix, "e"), "home-writer")
    to_home = edge_members.StreamWriter(client, edge_members.in_key(redis_prefix, "h"), "edge-writer")
    home.members["e:1"] = (SimpleNamespace(identity="sb", node="e", writer=to_edge), "r")
    seen: list = []

    async def edge(entry: dict) -> None:
        request = entry["m"]["moderate"]
        seen.append((request, entry["to"]))
        to_home.add({"op": "moderated", "req": "not-this-one"})  # another request's: not taken for this one
        to_home.add({"op": "moderated"})  # malformed: ignored (logged)
        if request["action"] == "mute":
            to_home.add({"op": "moderated", "req": request["req"],
                         "error": {"code": "not_found", "message": "sb publishes no tracks"}})
        else:
            to_home.add({"op": "moderated", "req": request["req"]})

    edge_reader = edge_members.StreamReader(client, edge_members.out_key(redis_prefix, "e"), edge)
    try:
        await eventually(lambda: edge_reader.last_id is not None and home.reader.last_id is not None, 5,
                         "both readers to start")
        done = await home.moderate("r", "sb", {"action": "disconnect", "reason": "off topic", "kind": "removed",
                                               "extra": {"by": "prof"}})
        assert done["op"] == "moderated" and "error" not in done, done
        request, to = seen[0]
        assert to == ["e:1"] and edge_members.MODERATE.is_valid(request), request
        assert request == {"req": done["req"], "home": "h", "room": "r", "identity": "sb", "action": "disconnect",
                           "reason": "off topic", "kind": "removed", "extra": {"by": "prof"}}
        with pytest.raises(NotFound, match="sb publishes no tracks"):
            await home.moderate("r", "sb", {"action": "mute", "track_id": None, "by": "prof"})
        with pytest.raises(NotFound, match="nobody is not in room r"):
            await home.moderate("r", "nobody", {"action": "mute", "by": "prof"})
        await edge_reader.close()  # the edge stops answering
        monkeypatch.setattr(edge_members, "ANSWER_S", 0.5)
        with pytest.raises(Unavailable, match="node e, which serves sb, did not answer"):
            await home.moderate("r", "sb", {"action": "mute", "by": "prof"})
        assert not home.answers, "a request that timed out is forgotten"
    finally:
        await edge_reader.close()
        home.members.clear()  # no RemoteMember to stop
        await home.close()
        await to_edge.close()
        await to_home.close()
        await client.aclose()
