"""Tutoring dashboards: /dashboard?token=... for students and instructors.

The page reads its JSON from GET /api/tutoring (Bearer: the same token) and updates live over
/ws/notify?token=... (no polling). The token may carry room "*" (`stoa token --room '*' ...`).
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from shared.appkeys import KEYRING
from shared.auth import TokenError
from shared.roles import DASHBOARD_ROLES


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/dashboard", dashboard_page)


async def dashboard_page(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    try:
        grants = await request.app[KEYRING].verify(token)
    except TokenError as exc:
        return aiohttp_jinja2.render_template("error.html", request, {"message": exc.reason}, status=401)
    if grants.role not in DASHBOARD_ROLES:
        return aiohttp_jinja2.render_template(
            "error.html", request, {"message": f"dashboards are for students and instructors, not {grants.role}s"},
            status=403)
    return aiohttp_jinja2.render_template(f"dashboard_{grants.role}.html", request, {
        "token": token, "grants": grants,
        "config": {"token": token, "role": grants.role, "identity": grants.identity, "name": grants.name},
    })
