"""Errors raised by classroom services. Each has a stable `code` (for API bodies), an HTTP-ish `status`
and a message that names the problem. `to_dict()` gives {"error": code, "message": message}."""

from __future__ import annotations


class ClassroomError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class InvalidInput(ClassroomError):
    code, status = "invalid_input", 400


class NotFound(ClassroomError):
    code, status = "not_found", 404


class PermissionDenied(ClassroomError):
    code, status = "permission_denied", 403


class InvalidTransition(ClassroomError):
    code, status = "invalid_transition", 409


class Conflict(ClassroomError):
    code, status = "conflict", 409


class SessionFull(ClassroomError):
    code, status = "session_full", 409


class SessionClosed(ClassroomError):
    code, status = "session_closed", 409


class Banned(ClassroomError):
    code, status = "banned", 403


class BadPassword(ClassroomError):
    code, status = "bad_password", 401


class Unavailable(ClassroomError):
    """Another part the action needs did not answer (the node serving an edge member)."""
    code, status = "unavailable", 503
