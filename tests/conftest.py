"""Shared fixtures. Real services only: PostgreSQL and Redis are started when down, never mocked."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from tests import services

# Each fixture module registers itself here.
pytest_plugins = [
    "tests.fixtures.server",
    "tests.fixtures.api",
    "tests.fixtures.storage",
    "tests.fixtures.interactive",
    "tests.fixtures.recording",
    "tests.browser",
]


@pytest.fixture(scope="session")
def pg_dsn():
    """A PostgreSQL database of this test run's own, dropped at the end."""
    import asyncpg

    services.ensure_postgres()
    name = f"stoa_test_{uuid.uuid4().hex[:10]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url():
    """Redis on loopback; tests isolate themselves with redis_prefix."""
    services.ensure_redis()
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_prefix():
    return f"stoa-test-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def artifacts_dir():
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "artifacts")
    os.makedirs(path, exist_ok=True)
    return path
