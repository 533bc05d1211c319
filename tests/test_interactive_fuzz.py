"""Property-based fuzzing of the parser and the room: no input raises, every bad input gets an error to its
sender, and other members see nothing of it."""

from __future__ import annotations

import json
import uuid

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from classroom.interactive.envelope import ERROR_CODES, Envelope, ProtocolError, parse_message
from classroom.interactive.schemas import DATA
from tests.fixtures.interactive import Client, FakeClock, request

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=6)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=30)
FIELDS = sorted({key for schema in DATA.values() for key in schema.get("properties", {})})
field_values = (json_values | st.integers(0, 12) | st.just("0" * 32) | st.sampled_from(["all", "pen", "text", "#00ff00"])
                | st.lists(st.lists(st.floats(0, 1), min_size=2, max_size=2), max_size=5)
                | st.lists(st.integers(0, 11), max_size=4))
datas = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=5)
types = st.sampled_from(sorted(DATA)) | st.text(max_size=20)
envelopes = st.fixed_dictionaries({"v": st.just(1) | json_scalars, "type": types, "data": datas | json_values},
                                  optional={"id": st.text(min_size=1, max_size=70) | json_scalars})
raw_inputs = (st.binary(max_size=300) | st.text(max_size=300) | json_values.map(json.dumps)
              | envelopes.map(json.dumps) | envelopes.map(lambda e: json.dumps(e).encode()))


@settings(max_examples=400, deadline=None)
@given(raw_inputs)
def test_parse_message_never_raises_anything_but_protocol_error(raw):
    try:
        env = parse_message(raw)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES and exc.message
        assert json.dumps(exc.to_message())
    else:
        assert isinstance(env, Envelope) and env.type in DATA


def test_parse_message_names_the_problem():
    cases = {
        b"\xff\xfe": ("bad_json", "UTF-8"),
        "{": ("bad_json", "not valid JSON"),
        "[]": ("invalid", "envelope"),
        '{"v": 2, "type": "chat.send"}': ("invalid", "/v"),
        '{"v": 1, "type": "nope"}': ("unknown_type", "unknown message type 'nope'"),
        '{"v": 1, "type": "chat.send", "data": {"txt": "x"}}': ("invalid", "text"),
        '{"v": 1, "type": "poll.vote", "data": {"poll_id": "' + "a" * 32 + '", "choices": ["1"]}}':
            ("invalid", "/choices/0"),
        '{"v": 1, "type": "chat.send", "data": {"text": NaN}}': ("bad_json", "NaN"),
        json.dumps({"v": 1, "type": "chat.send", "data": {"text": "x" * 5000}}): ("too_large", "4096"),
        json.dumps({"v": 1, "type": "chat.send", "data": {"text": "x" * 17000}}): ("too_large", "16384"),
    }
    for raw, (code, fragment) in cases.items():
        try:
            parse_message(raw)
        except ProtocolError as exc:
            assert exc.code == code, (raw[:60], exc.code, exc.message)
            assert fragment in exc.message, (raw[:60], exc.message)
        else:
            raise AssertionError(f"{raw[:60]!r} was accepted")
    with_id = '{"v": 1, "type": "chat.send", "id": "abc", "data": {}}'
    try:
        parse_message(with_id)
    except ProtocolError as exc:
        assert exc.msg_id == "abc" and "'text' is a required property" in exc.message


async def _fuzz_room(make_room, sender_role, inputs):
    clock = FakeClock()
    room = make_room(clock=clock)
    sender = Client("fuzzer", sender_role)
    bystander, teacher = Client("bystander"), Client("teacher", "instructor")
    for c in (sender, bystander, teacher):
        await room.join(c)
    await room.flush()
    for raw in inputs:
        clock.advance(1.0)  # keep rate limits from answering everything
        before = len(sender.received)
        seen_by_others = len(bystander.received), len(teacher.received)
        await room.handle(sender, raw)
        await room.flush()
        replies = [m for m in sender.received[before:] if m["type"] in ("ack", "error")]
        try:
            env = parse_message(raw)
        except ProtocolError as exc:
            assert [m["type"] for m in replies] == ["error"], (raw, replies)
            assert replies[0]["code"] == exc.code and replies[0]["message"]
            assert (len(bystander.received), len(teacher.received)) == seen_by_others
            continue
        if env.type == "chat.typing":
            assert replies == []
            continue
        assert len(replies) == 1, (raw, replies)
        if replies[0]["type"] == "error":
            assert replies[0]["code"] in ERROR_CODES and replies[0]["code"] != "internal", replies[0]
            assert (len(bystander.received), len(teacher.received)) == seen_by_others
        for other in (bystander, teacher):
            assert not [m for m in other.received if m["type"] == "error"]
    # the room still works for everyone
    reply = await request(room, bystander, "chat.send", {"text": "still alive"})
    assert reply["type"] == "ack", reply
    assert teacher.last("chat.message")["data"]["text"] == "still alive"
    return room


fuzz_settings = settings(max_examples=50, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@fuzz_settings
@given(st.lists(raw_inputs, min_size=1, max_size=12))
async def test_room_handle_fuzz_as_student(make_room, inputs):
    await _fuzz_room(make_room, "student", inputs)


@fuzz_settings
@given(st.lists(envelopes.map(json.dumps), min_size=1, max_size=12))
async def test_room_handle_fuzz_as_instructor(make_room, inputs):
    await _fuzz_room(make_room, "instructor", inputs)


async def test_handle_accepts_dicts_and_envelopes_and_odd_objects(make_room):
    room = make_room()
    a = Client("a")
    await room.join(a)
    for raw in (object(), 12, None, ["x"], {"v": 1, "type": "chat.send", "data": {"text": float("inf")}}):
        await room.handle(a, raw)
    await room.handle(a, {"v": 1, "type": "chat.send", "id": "d1", "data": {"text": "from a dict"}})
    await room.handle(a, Envelope(type="chat.send", id="e1", data={"text": "from an envelope"}))
    await room.flush()
    assert [m["type"] for m in a.received if m["type"] in ("ack", "error")] == ["error"] * 5 + ["ack", "ack"]
    assert a.reply_to("d1")["type"] == "ack" and a.reply_to("e1")["type"] == "ack"
    bad = Envelope(type="chat.send", id="e2", data={"text": 5})
    await room.handle(a, bad)
    await room.flush()
    assert a.reply_to("e2")["code"] == "invalid"


actions = st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["vote", "upvote", "upvote_on", "upvote_off"]),
                             st.integers(0, 1), st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True)),
                   min_size=1, max_size=40)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(actions)
async def test_votes_match_a_model_under_random_sequences(make_room, steps):
    """Random valid votes, vote changes and upvote toggles: counts always equal a plain model's."""
    clock = FakeClock()
    room = make_room(clock=clock)
    teacher = Client("teacher", "instructor")
    members = [Client(f"m{i}") for i in range(6)]
    for c in (teacher, *members):
        await room.join(c)
    polls = []
    for multiple in (False, True):
        reply = await request(room, teacher, "poll.create", {"question": "q", "options": ["a", "b", "c", "d"],
                                                             "multiple": multiple, "start": True})
        polls.append(reply["data"]["poll_id"])
    questions = [(await request(room, teacher, "qa.ask", {"text": f"q{i}"}))["data"]["question_id"] for i in range(2)]
    poll_model: list[dict[str, list[int]]] = [{}, {}]
    qa_model: list[set[str]] = [set(), set()]
    for who, action, target, choices in steps:
        clock.advance(1.0)
        m = members[who]
        if action == "vote":
            chosen = sorted(choices) if target == 1 else [choices[0]]
            reply = await request(room, m, "poll.vote", {"poll_id": polls[target], "choices": chosen})
            assert reply["type"] == "ack", reply
            poll_model[target][m.identity] = chosen
        else:
            data = {"question_id": questions[target]}
            if action != "upvote":
                data["on"] = action == "upvote_on"
            reply = await request(room, m, "qa.upvote", data)
            on = data.get("on", m.identity not in qa_model[target])
            (qa_model[target].add if on else qa_model[target].discard)(m.identity)
            assert reply["data"]["votes"] == len(qa_model[target])
    state = await room.state_for(teacher)
    for pid, model in zip(polls, poll_model):
        poll = next(p for p in state["polls"] if p["id"] == pid)
        expected = [sum(c in v for v in model.values()) for c in range(4)]
        assert poll["tally"]["counts"] == expected
        assert poll["voters"] == {k: v for k, v in sorted(model.items())}
    for qid, voters in zip(questions, qa_model):
        assert next(q for q in state["questions"] if q["id"] == qid)["votes"] == len(voters)
    # and storage agrees with memory
    stored = {p["id"]: p for p in await room.repo.list_polls(room.session_id)}
    for pid, model in zip(polls, poll_model):
        assert stored[pid]["votes"] == model
    stored_q = {q["id"]: q for q in await room.repo.list_questions(room.session_id)}
    for qid, voters in zip(questions, qa_model):
        assert stored_q[qid]["voters"] == voters


def _valid_data(type_: str, r, pools: dict, bank: str) -> dict:
    """Schema-valid data for `type_`, aimed at ids the room knows (sometimes at unknown ones)."""
    def pick(pool, unknown):
        return r.choice(pools[pool]) if pools[pool] and r.random() < 0.9 else unknown
    mid, uid = (lambda: pick("messages", 10**6)), (lambda pool: pick(pool, "f" * 32))
    points = [[round(r.random(), 3), round(r.random(), 3)] for _ in range(r.randint(1, 6))]
    return {
        "chat.send": lambda: {"text": f"hi {r.random()}", **({"reply_to": mid()} if r.random() < 0.3 else {})},
        "chat.edit": lambda: {"message_id": mid(), "text": "edited"},
        "chat.delete": lambda: {"message_id": mid()},
        "chat.pin": lambda: {"message_id": mid(), "pinned": r.random() < 0.7},
        "chat.typing": lambda: {"typing": True},
        "qa.ask": lambda: {"text": "why?", "anonymous": r.random() < 0.5},
        "qa.upvote": lambda: {"question_id": uid("questions")},
        "qa.answer": lambda: {"question_id": uid("questions"), **({"text": "because"} if r.random() < 0.5
                                                                  else {"live": True})},
        "qa.dismiss": lambda: {"question_id": uid("questions")},
        "qa.feature": lambda: {"question_id": uid("questions"), "featured": r.random() < 0.5},
        "poll.create": lambda: {"question": "?", "options": ["a", "b", "c"][:r.randint(2, 3)],
                                "multiple": r.random() < 0.5, "anonymous": r.random() < 0.5,
                                "results": r.choice(["live", "after_close"]), "start": r.random() < 0.7},
        "poll.start": lambda: {"poll_id": uid("polls")},
        "poll.close": lambda: {"poll_id": uid("polls")},
        "poll.vote": lambda: {"poll_id": uid("polls"), "choices": r.sample([0, 1, 2], r.randint(1, 2))},
        "whiteboard.stroke": lambda: {"tool": r.choice(["pen", "eraser", "line", "rectangle"]), "points": points},
        "whiteboard.clear": lambda: {},
        "whiteboard.undo": lambda: {},
        "whiteboard.permit": lambda: {"identities": r.choice(["all", [], ["s0"], ["s0", "s1"]])},
        "quiz.start": lambda: {"bank": bank, "duration_s": 600},
        "quiz.answer": lambda: {"round_id": uid("rounds"), "choice": r.randint(0, 2)},
        "quiz.end": lambda: {"round_id": uid("rounds")},
        "hand.raise": lambda: {},
        "hand.lower": lambda: r.choice([{}, {"identity": r.choice(["s0", "s1", "s2"])}]),
        "hand.lower_all": lambda: {},
        "reaction.send": lambda: {"emoji": r.choice(["👍", "🎉", "❤️"])},
    }[type_]()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(sorted(DATA)), st.integers(0, 2**32)),
                min_size=5, max_size=40))
async def test_valid_message_sequences_keep_the_room_consistent(make_room, interactive_store, steps):
    """Random sequences of schema-valid messages from instructors and students: every message gets exactly
    one ack or a named refusal (never an internal error), anonymity holds, and the state stays servable."""
    import random as _random

    from classroom.interactive.quiz import import_bank

    store, _ = interactive_store
    bank = f"fz-{uuid.uuid4().hex[:8]}"
    await import_bank(store, {"bank": bank, "questions": [
        {"prompt": f"q{i}", "choices": ["a", "b", "c"], "answer": i % 3} for i in range(3)]})
    clock = FakeClock()
    room = make_room(clock=clock)
    members = [Client("teacher", "instructor"), Client("mod", "moderator"), Client("s0"), Client("s1"),
               Client("s2")]
    for m in members:
        await room.join(m)
    pools: dict[str, list] = {"messages": [], "questions": [], "polls": [], "rounds": []}
    for who, type_, seed in steps:
        clock.advance(0.5)
        sender = members[who]
        data = _valid_data(type_, _random.Random(seed), pools, bank)
        reply = await request(room, sender, type_, data) if type_ != "chat.typing" else None
        if reply is None:
            continue
        event(f"{type_}: {reply.get('code', 'ack')}")
        if reply["type"] == "error":
            assert reply["code"] in ERROR_CODES and reply["code"] != "internal", (type_, data, reply)
            continue
        ack = reply["data"]
        for key, pool in (("message_id", "messages"), ("question_id", "questions"), ("poll_id", "polls"),
                          ("round_id", "rounds")):
            if key in ack and ack[key] not in pools[pool]:
                pools[pool].append(ack[key])
    for m in members:
        json.dumps(await room.state_for(m))
        assert not [x for x in m.received if x["type"] == "error" and x.get("code") == "internal"]
    # anonymity: no student ever saw another student's anonymous question with a name attached
    for student in members[2:]:
        for msg in student.received:
            questions = ([msg["data"]] if msg["type"] == "qa.question"
                         else msg["data"].get("questions", []) if msg["type"] == "state" else [])
            for q in questions:
                if q["anonymous"] and not q["mine"]:
                    assert q["identity"] is None and q["name"] == "Anonymous", q
