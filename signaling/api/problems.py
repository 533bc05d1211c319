"""RFC 9457 problem details (`application/problem+json`) for every HTTP API under /api/.

Shared: any handler can `raise Problem(404, "not_found", "no such recording")`, or return `problem(...)`.
`answer` turns `Problem`, `classroom.errors.ClassroomError`, `recorder.service.RecordingError` and aiohttp's
HTTP errors into problem+json bodies: {"type", "title", "status", "detail", "code"}; every `OPS` route answers
with it, and `problem_middleware` for anything else under /api/.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web

from classroom.errors import ClassroomError
from recorder.service import RecordingError

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/problem+json"
API_PREFIX = "/api/"


def problem_type(code: str) -> str:
    return f"urn:stoa:problem:{code}"


def problem(status: int, code: str, detail: str, *, title: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    body = {"type": problem_type(code), "title": title or _title(status), "status": status,
            "detail": detail, "code": code, **extra}
    return web.Response(status=status, text=json.dumps(body), content_type=CONTENT_TYPE,
                        headers=headers)


class Problem(Exception):
    """Raise from a handler; the middleware renders it."""

    def __init__(self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None,
                 **extra: Any):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.extra = status, code, detail, headers, extra

    def response(self) -> web.Response:
        return problem(self.status, self.code, self.detail, headers=self.headers, **self.extra)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def answer(request: web.Request, exc: Exception) -> web.Response | None:
    """The problem+json answer to an exception a handler raised: `Problem`, the classroom's and the recorder's
    errors (each with its own code), aiohttp's HTTP errors, and 500 `internal` (logged) for anything else.
    None for what is not an error (a redirect): let it propagate."""
    if isinstance(exc, Problem):
        return exc.response()
    if isinstance(exc, (ClassroomError, RecordingError)):
        return problem(exc.status, exc.code, exc.message)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large",
                415: "unsupported_media_type"}.get(exc.status, "http_error")
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return problem(exc.status, code, detail)
    log.error("%s %s failed", request.method, request.path, exc_info=exc)
    return problem(500, "internal", "the server failed to handle this request; it was logged")


async def answered(request: web.Request, handler) -> web.StreamResponse:
    """`handler`'s response, or the problem+json `answer` to what it raised."""
    try:
        return await handler(request)
    except Exception as exc:
        response = answer(request, exc)
        if response is None:
            raise
        return response


@web.middleware
async def problem_middleware(request: web.Request, handler):
    """Every error under /api/ (unknown paths and methods included) is problem+json."""
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    return await answered(request, handler)
