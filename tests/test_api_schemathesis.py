"""schemathesis against /api/openapi.json on a real server: with an instructor token and with an admin key,
no request gets a 5xx, every status the server answers is one the document lists for that operation, and
the answers have the documented content type and schema.

Bounded: a few examples per operation and mode, no shrinking, deadline off (the 2 cores are shared)."""

from __future__ import annotations

import asyncio

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                 status_code_conformance)

from tests.fixtures.api import ApiClient

EXAMPLES = 15
# No 5xx, only documented statuses, and (beyond the brief) the documented content types and body schemas.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _fuzz(base: str, headers: dict, session_id: str) -> list[str]:
    schema = schemathesis.openapi.from_url(base + "/api/openapi.json")
    failures: list[str] = []
    http = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        fixed = {}
        if "{session_id}" in operation.path:
            fixed["session_id"] = session_id  # an existing session reaches the handlers, not only 404
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)
            except Exception:  # no negative cases for an operation without inputs
                continue

            @given(case=strategy)
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def run(case) -> None:
                try:
                    case.call_and_validate(base_url=base, session=http, headers=headers, timeout=30,
                                           checks=CHECKS)
                except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                    failures.append(f"{case.method} {operation.path}: {str(exc)[:600]}")

            run()
    http.close()
    return failures


@pytest.mark.timeout(240)
async def test_schemathesis_finds_no_5xx_and_only_documented_statuses(stoa_server, api: ApiClient):
    session = await api.ok("POST", "/api/sessions", auth=api.admin,
                           json={"title": "Fuzzed", "instructor": "prof", "capacity": 5})
    instructor = api.bearer("*", "prof", "instructor")
    failures = []
    for headers in (instructor, api.admin):
        failures += await asyncio.to_thread(_fuzz, stoa_server.base, headers, session["id"])
    unique = sorted(set(failures))
    assert not unique, f"{len(unique)} failures:\n" + "\n".join(unique[:30])
