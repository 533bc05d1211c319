"""The roles a token carries: one list; every role check in every layer uses it or a subset below."""

from __future__ import annotations

ROLES = ("instructor", "moderator", "student", "viewer", "operator")
# Moderate a room and its session (promote, mute, end, see everything).
STAFF_ROLES = ("instructor", "moderator")
# Take part in a session; an "operator" reviews recordings of every room (room claim "*") and never joins.
PARTICIPANT_ROLES = tuple(r for r in ROLES if r != "operator")
# Never publish media, whatever the token says.
RECEIVE_ONLY_ROLES = ("viewer", "operator")
# Tutoring dashboards and /ws/notify.
DASHBOARD_ROLES = ("instructor", "student")
# What the public join form (/) lets a visitor pick.
SELF_JOIN_ROLES = ("instructor", "student", "viewer")
