"""RFC 9457 problem details (`application/problem+json`) for every HTTP API under /api/.

Shared: any handler can `raise Problem(404, "not_found", "no such recording")`, or return `problem(...)`.
`problem_middleware` turns `Problem`, `classroom.errors.ClassroomError` and aiohttp's HTTP errors raised
under /api/ into problem+json bodies: {"type", "title", "status", "detail", "code"}.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web

from classroom.errors import ClassroomError

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


def from_classroom(err: ClassroomError) -> web.Response:
    return problem(err.status, err.code, err.message)


@web.middleware
async def problem_middleware(request: web.Request, handler):
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    try:
        return await handler(request)
    except Problem as exc:
        return exc.response()
    except ClassroomError as exc:
        return from_classroom(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large",
                415: "unsupported_media_type"}.get(exc.status, "http_error")
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return problem(exc.status, code, detail)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return problem(500, "internal", "the server failed to handle this request; it was logged")
