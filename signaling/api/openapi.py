"""The OpenAPI 3.1 document, generated from the route table (signaling.api.routes.OPS) and the same JSON
Schemas the handlers validate with. Every /api/ route is in that table (tests/test_api_sessions.py checks)."""

from __future__ import annotations

import copy
import re

from aiohttp import web

from classroom.tutoring import REQUEST_SCHEMA
from shared import __version__
from signaling import recordings_api

PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "code": {"type": "string"}},
    "required": ["type", "title", "status", "detail", "code"],
}
SESSION = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "room": {"type": "string"}, "title": {"type": "string"},
        "description": {"type": "string"},
        "type": {"enum": ["class", "workshop", "webinar", "office_hours", "tutoring"]},
        "instructor": {"type": "string"},
        "scheduled_start": {"type": ["number", "null"]}, "scheduled_end": {"type": ["number", "null"]},
        "capacity": {"type": ["integer", "null"]}, "has_password": {"type": "boolean"},
        "features": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "status": {"enum": ["scheduled", "live", "ended", "cancelled"]},
        "actual_start": {"type": ["number", "null"]}, "actual_end": {"type": ["number", "null"]},
        "created_at": {"type": "number"},
    },
}
TUTORING = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "student": {"type": "string"}, "student_name": {"type": "string"},
        **{k: v for k, v in REQUEST_SCHEMA["properties"].items()},
        "status": {"enum": ["pending", "accepted", "rejected", "expired", "cancelled", "ended"]},
        "instructor": {"type": ["string", "null"]}, "reason": {"type": ["string", "null"]},
        "session_id": {"type": ["string", "null"]}, "created_at": {"type": "number"},
        "expires_at": {"type": "number"}, "accepted_at": {"type": ["number", "null"]},
        "ended_at": {"type": ["number", "null"]}, "ended_by": {"type": ["string", "null"]},
        "duration_s": {"type": ["number", "null"]},
        "instructor_name": {"type": ["string", "null"], "description": "the accepting instructor's name"},
    },
}
FEEDBACK = {
    "type": "object",
    "properties": {"session_id": {"type": "string"}, "identity": {"type": "string"}, "name": {"type": "string"},
                   "rating": {"type": "integer", "minimum": 1, "maximum": 5}, "comment": {"type": "string"},
                   "created_at": {"type": "number"}, "updated_at": {"type": "number"}},
}
FEEDBACK_REPORT = {
    "type": "object",
    "properties": {
        "session_id": {"type": "string"}, "room": {"type": "string"}, "title": {"type": "string"},
        "instructor": {"type": "string"}, "status": {"type": "string"},
        "summary": {"type": "object", "properties": {
            "count": {"type": "integer"}, "average": {"type": ["number", "null"]},
            "ratings": {"type": "object", "description": "how many gave each rating, keys \"1\" to \"5\"",
                        "additionalProperties": {"type": "integer"}}}},
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Feedback"}},
    },
}
JOIN_LINK = {
    "type": "object",
    "properties": {"room": {"type": "string"}, "identity": {"type": "string"}, "role": {"type": "string"},
                   "token": {"type": "string", "description": "JWT for the room protocol"},
                   "url": {"type": "string", "description": "the room page, /rooms/{room}?token=..."}},
}


def _response_schema(response) -> dict:
    if isinstance(response, str):
        if response == "object":
            return {"type": "object"}
        return {"$ref": f"#/components/schemas/{response}"}
    return response


def _operation(op) -> dict:
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in re.findall(r"{(\w+)}", op.path)]
    params += [{"in": "query", **q} for q in op.query]
    out: dict = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": f"Who may call it: {op.auth}.",
        "tags": [op.tag],
        "responses": {},
    }
    if params:
        out["parameters"] = params
    if op.public:
        out["security"] = []
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required,
                              "content": {"application/json": {"schema": copy.deepcopy(op.body)}}}
    if op.status == 204:
        out["responses"]["204"] = {"description": "done"}
    else:
        content = ({"application/json": {"schema": _response_schema(op.response)}}
                   if op.content == "application/json" else {op.content: {}})
        if op.csv:
            content["text/csv"] = {"schema": {"type": "string"}}
        for status in (op.status, *op.also):
            out["responses"][str(status)] = {"description": "success", "content": content}
    errors = op.errors + ((413, 415) if op.body is not None else ())
    for status in errors:
        out["responses"][str(status)] = {"$ref": f"#/components/responses/E{status}"}
    return out


_ERRORS = {400: "invalid input", 401: "no or bad credentials", 403: "not allowed for this caller",
           404: "no such resource", 409: "conflicts with the current state (e.g. invalid transition, full)",
           410: "gone (a recording's file is no longer on disk)",
           413: "the body is larger than 64 KiB", 415: "the body is not application/json",
           500: "the server failed (e.g. cannot create a recording's directory)",
           503: "the server is shutting down", 507: "no space left for a recording"}


def document(app: web.Application) -> dict:
    from signaling.api.routes import OPS

    paths: dict[str, dict] = {}
    for op in OPS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": "Stoa API", "version": __version__,
                 "description": "Sessions, join tokens, participants, attendance, moderation, feedback, 1:1 tutoring, "
                                "webhooks, API keys, classroom history and recordings. Errors are "
                                "application/problem+json. See docs/api.md."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "a Stoa access token (role instructor, moderator, student or viewer)"},
                "apiKey": {"type": "http", "scheme": "basic",
                           "description": "an API key and its secret: the caller is an admin"},
            },
            "schemas": {"Problem": PROBLEM, "Session": SESSION, "TutoringRequest": TUTORING,
                        "JoinLink": JOIN_LINK, "Feedback": FEEDBACK, "FeedbackReport": FEEDBACK_REPORT,
                        "Recording": recordings_api.RECORDING, "RecordingView": recordings_api.VIEW},
            "responses": {f"E{code}": {"description": text, "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                for code, text in _ERRORS.items()},
        },
    }
