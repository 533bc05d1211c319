"""JSON Schemas: one for the envelope, one per inbound message type's `data`.

Every schema closes `additionalProperties` so a typo in a field name is refused with its path, not ignored.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

MAX_ID_LENGTH = 64
MAX_POINTS_PER_STROKE = 2000

ENVELOPE: dict[str, Any] = {
    "type": "object",
    "required": ["v", "type"],
    "properties": {
        "v": {"const": 1},
        "type": {"type": "string", "minLength": 1, "maxLength": 64},
        "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
        "data": {"type": "object"},
    },
    "additionalProperties": False,
}

_ID = {"type": "integer", "minimum": 1, "maximum": 2**62}  # chat messages, strokes
_UID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}  # questions, polls, quiz rounds and questions
_TEXT = {"type": "string", "minLength": 1, "pattern": r"\S"}
_IDENTITY = {"type": "string", "minLength": 1, "maxLength": 128}
_EMPTY: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": {}}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


DATA: dict[str, dict[str, Any]] = {
    # chat
    "chat.send": _obj(["text"], text=_TEXT, reply_to=_ID),
    "chat.edit": _obj(["message_id", "text"], message_id=_ID, text=_TEXT),
    "chat.delete": _obj(["message_id"], message_id=_ID),
    "chat.pin": _obj(["message_id"], message_id=_ID, pinned={"type": "boolean"}),
    "chat.typing": _obj([], typing={"type": "boolean"}),
    # Q&A
    "qa.ask": _obj(["text"], text={**_TEXT, "maxLength": 1000}, anonymous={"type": "boolean"}),
    "qa.upvote": _obj(["question_id"], question_id=_UID, on={"type": "boolean"}),
    "qa.answer": {
        **_obj(["question_id"], question_id=_UID, text={**_TEXT, "maxLength": 4000}, live={"const": True}),
        "anyOf": [{"required": ["text"]}, {"required": ["live"]}],
    },
    "qa.dismiss": _obj(["question_id"], question_id=_UID),
    "qa.feature": _obj(["question_id"], question_id=_UID, featured={"type": "boolean"}),
    # polls
    "poll.create": _obj(
        ["question", "options"],
        question={**_TEXT, "maxLength": 500},
        options={"type": "array", "minItems": 2, "maxItems": 10, "items": {**_TEXT, "maxLength": 200}},
        multiple={"type": "boolean"},
        anonymous={"type": "boolean"},
        results={"enum": ["live", "after_close"]},
        duration_s={"type": "integer", "minimum": 1, "maximum": 86400},
        start={"type": "boolean"},
    ),
    "poll.start": _obj(["poll_id"], poll_id=_UID),
    "poll.close": _obj(["poll_id"], poll_id=_UID),
    "poll.vote": _obj(
        ["poll_id", "choices"], poll_id=_UID,
        choices={"type": "array", "minItems": 1, "maxItems": 10, "uniqueItems": True,
                 "items": {"type": "integer", "minimum": 0, "maximum": 9}},
    ),
    # whiteboard: x, y normalized to [0, 1] of the board; width in pixels of a 1000-pixel-wide board
    "whiteboard.stroke": {
        **_obj(
            ["tool", "points"],
            tool={"enum": ["pen", "eraser", "line", "rectangle", "text"]},
            points={"type": "array", "minItems": 1,
                    "items": {"type": "array", "minItems": 2, "maxItems": 2,
                              "items": {"type": "number", "minimum": 0, "maximum": 1}}},
            color={"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"},
            width={"type": "number", "minimum": 0.5, "maximum": 200},
            text={**_TEXT, "maxLength": 500},
        ),
        "allOf": [{"if": {"properties": {"tool": {"const": "text"}}},
                   "then": {"required": ["text"]}}],
    },
    "whiteboard.clear": _EMPTY,
    "whiteboard.undo": _EMPTY,
    "whiteboard.permit": _obj(
        ["identities"],
        identities={"oneOf": [{"const": "all"},
                              {"type": "array", "maxItems": 1000, "uniqueItems": True, "items": _IDENTITY}]},
    ),
    # quizzes
    "quiz.start": _obj([], duration_s={"type": "integer", "minimum": 1, "maximum": 3600},
                       question_ids={"type": "array", "minItems": 1, "maxItems": 1000, "uniqueItems": True,
                                     "items": _UID},
                       bank={"type": "string", "minLength": 1, "maxLength": 128}),
    "quiz.answer": _obj(["round_id", "choice"], round_id=_UID,
                        choice={"type": "integer", "minimum": 0, "maximum": 25}),
    "quiz.end": _obj(["round_id"], round_id=_UID),
    # hands and reactions
    "hand.raise": _EMPTY,
    "hand.lower": _obj([], identity=_IDENTITY),
    "hand.lower_all": _EMPTY,
    "reaction.send": _obj(["emoji"], emoji={"type": "string", "minLength": 1, "maxLength": 16,
                                            "pattern": r"^[^\s\x00-\x7f]+$"}),
}

# Quiz bank files (`stoa quiz import FILE`): a list of questions or {"questions": [...]}.
QUIZ_QUESTION: dict[str, Any] = _obj(
    ["prompt", "choices", "answer"],
    prompt={**_TEXT, "maxLength": 2000},
    choices={"type": "array", "minItems": 2, "maxItems": 26, "items": {**_TEXT, "maxLength": 500}},
    answer={"type": "integer", "minimum": 0, "maximum": 25},
    explanation={"type": "string", "maxLength": 2000},
    tags={"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 20},
)
QUIZ_BANK: dict[str, Any] = {
    "oneOf": [
        {"type": "array", "minItems": 1, "maxItems": 10000, "items": QUIZ_QUESTION},
        _obj(["questions"], bank={"type": "string", "minLength": 1, "maxLength": 128},
             questions={"type": "array", "minItems": 1, "maxItems": 10000, "items": QUIZ_QUESTION}),
    ]
}

ENVELOPE_VALIDATOR = Draft202012Validator(ENVELOPE)
DATA_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in DATA.items()}
QUIZ_BANK_VALIDATOR = Draft202012Validator(QUIZ_BANK)
