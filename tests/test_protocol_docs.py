"""docs/protocol.md lists every classroom message type with an example, and the examples are valid."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from classroom.interactive import schemas
from classroom.interactive.envelope import parse_message

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER_ONLY = {"ack", "error", "state", "reaction"}  # built without a dotted literal in the sources


def _examples(heading: str) -> list[dict]:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    section = doc.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    blocks = re.findall(r"```json\n(.*?)```", section, re.S)
    return [json.loads(line) for block in blocks for line in block.splitlines() if line.strip()]


def _server_types_in_code() -> set[str]:
    found = set()
    for path in (ROOT / "classroom" / "interactive").glob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'"type":\s*"([a-z]+\.[a-z_]+)"', text))
        found |= set(re.findall(r'_publish\([^)]*"([a-z]+\.[a-z_]+)"\)', text))
    return found | SERVER_ONLY


def test_every_client_type_is_documented_and_its_example_passes_the_schema():
    examples = _examples("### Client → server (one example per type)")
    assert {e["type"] for e in examples} == set(schemas.DATA)
    for example in examples:
        envelope = parse_message(json.dumps(example))  # raises, naming the problem, if the doc is wrong
        assert envelope.type == example["type"]


def test_every_server_type_is_documented():
    examples = _examples("### Server → client (one example per type)")
    assert {e["type"] for e in examples} == _server_types_in_code()
    assert all(e["v"] == 1 for e in examples)


def test_every_room_protocol_message_is_documented_and_its_example_parses():
    from signaling.schemas import CLIENT_MESSAGES, parse_client_message

    doc = (ROOT / "docs" / "protocol.md").read_text()
    client = doc.split("## Client → server", 1)[1].split("\n## ", 1)[0]
    headings = {h.strip() for line in re.findall(r"^### (.+)$", client, re.M) for h in line.split(",")}
    assert set(CLIENT_MESSAGES) <= headings
    decoder = json.JSONDecoder()
    for block in re.findall(r"```json\n(.*?)```", client, re.S):
        pos, block = 0, block.strip()
        while pos < len(block):  # one or more JSON values, each on one line or several
            value, end = decoder.raw_decode(block, pos)
            parse_client_message(json.dumps(value))  # raises ProtocolError naming the problem
            pos = len(block) - len(block[end:].lstrip())


def _documented_error_codes() -> set[str]:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    table = doc.split("### Error codes", 1)[1].split("\n## ", 1)[0]
    return {code for row in re.findall(r"^\| (`.*?) \|", table, re.M) for code in re.findall(r"`([a-z_]+)`", row)}


def _error_codes_in_code() -> set[str]:
    """Every code a `{"type": "error"}` can carry: literal codes where the room protocol, the classroom
    layer and /ws/notify raise or build errors, plus the mapping of classroom service errors."""
    from signaling.api.roomhooks import ADMISSION_CODES

    patterns = [r'ProtocolError\(\s*"([a-z_]+)"', r'\berror\(\s*"([a-z_]+)"', r'error_message\(\s*"([a-z_]+)"',
                r'"type": "error", "code": "([a-z_]+)"']
    found = set(ADMISSION_CODES.values()) | {"invalid"}  # room_code()'s fallback
    files = [*(ROOT / "signaling").glob("*.py"), ROOT / "signaling" / "api" / "roomhooks.py",
             *(ROOT / "classroom" / "interactive").glob("*.py")]
    for path in files:
        text = path.read_text()
        for pattern in patterns:
            found |= set(re.findall(pattern, text))
    return found


def test_every_error_code_the_server_sends_is_in_the_one_documented_list():
    sent, documented = _error_codes_in_code(), _documented_error_codes()
    assert {"bad_json", "unknown_type", "invalid", "too_large", "conflict", "feature_disabled"} <= sent
    assert sent - documented == set(), "codes the server sends but docs/protocol.md does not list"
    assert documented - sent == set(), "codes docs/protocol.md lists but the server never sends"


def test_the_classroom_error_codes_are_part_of_the_list():
    from classroom.interactive.envelope import ERROR_CODES

    assert set(ERROR_CODES) <= _documented_error_codes()


def test_speakers_event_is_documented_as_the_room_sends_it():
    from sfu.speakers import LevelRing, SpeakerDetector

    examples = _examples("### speakers")
    assert examples and all(e["type"] == "speakers" for e in examples)
    ring = LevelRing()
    for i in range(30):
        ring.add(18, 100.0 + i * 0.02)
    detector = SpeakerDetector()
    detector.add_track("TR_1", "ada", ring)
    sent = {"type": "speakers", "speakers": [{"identity": s.key, "level": s.level} for s in detector.update(100.6)]}
    assert set(sent) == set(examples[0]) and set(sent["speakers"][0]) == set(examples[0]["speakers"][0])
