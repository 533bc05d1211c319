"""The Store: one async engine (SQLite via aiosqlite or PostgreSQL via asyncpg), transactions, migrations."""

from __future__ import annotations

import contextlib
import contextvars
import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from storage.errors import ConfigError, SchemaError, StorageError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000


def driver_url(url: str) -> tuple[str, str]:
    """Map a plain URL (sqlite:///path, postgresql://...) to (backend, SQLAlchemy driver URL)."""
    if not isinstance(url, str) or not url:
        raise ConfigError("database URL is empty: use sqlite:///path/stoa.sqlite3 or postgresql://...")
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path or path == ":memory:":
            raise ConfigError(
                "an in-memory SQLite database is not supported: give a file, e.g. sqlite:///data/stoa.sqlite3")
        return "sqlite", "sqlite+aiosqlite:///" + path
    if url.startswith("sqlite+aiosqlite:///"):
        return "sqlite", url
    for prefix in ("postgresql://", "postgres://", "postgresql+asyncpg://"):
        if url.startswith(prefix):
            return "postgresql", "postgresql+asyncpg://" + url[len(prefix):]
    raise ConfigError(f"unsupported database URL {url.split('://')[0]!r}://...: "
                      "use sqlite:///path/stoa.sqlite3 or postgresql://user@host:port/db")


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://")[0] + "://..."


@dataclass(frozen=True)
class SchemaStatus:
    current: tuple[str, ...]   # revisions recorded in the database; () for an empty database
    head: tuple[str, ...]      # revisions this Stoa ships as latest
    state: str                 # "current" | "behind" | "ahead" | "empty"
    message: str

    @property
    def ok(self) -> bool:
        return self.state == "current"


def _alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _status_sync(sync_conn) -> SchemaStatus:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    heads = tuple(sorted(script.get_heads()))
    current = tuple(sorted(MigrationContext.configure(sync_conn).get_current_heads()))
    want = ", ".join(heads)
    if set(current) == set(heads):
        return SchemaStatus(current, heads, "current", f"database schema is at revision {want}")
    if not current:
        return SchemaStatus(current, heads, "empty",
                            f"database has no Stoa schema yet but this Stoa needs revision {want}: "
                            "run `stoa db upgrade`")
    have = ", ".join(current)
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = [rev for rev in current if rev not in known]
    if unknown:
        return SchemaStatus(current, heads, "ahead",
                            f"database schema {', '.join(unknown)} is newer than this Stoa knows "
                            f"(it knows up to {want}): upgrade Stoa")
    return SchemaStatus(current, heads, "behind",
                        f"database schema is at revision {have} but this Stoa needs {want}: "
                        "run `stoa db upgrade`")


def _upgrade_sync(sync_conn, target: str) -> None:
    from alembic import command

    if sync_conn.dialect.name == "postgresql":
        # Two nodes running `stoa db upgrade` at once: the second waits, then finds nothing to do.
        sync_conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtextextended('stoa:migrations', 0))")
    command.upgrade(_alembic_config(sync_conn), target)


# Alembic's `context` and `op` are process-global proxies: two migrations interleaving in one process would
# trample each other, so each runs in a worker thread with its own event loop, one at a time.
_ALEMBIC_LOCK = threading.Lock()


def _upgrade_blocking(backend: str, driver: str, target: str) -> None:
    async def run() -> None:
        engine = (_sqlite_engine(driver, poolclass=NullPool) if backend == "sqlite"
                  else create_async_engine(driver, poolclass=NullPool))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade_sync, target)
        finally:
            await engine.dispose()

    with _ALEMBIC_LOCK:
        asyncio.run(run())


class Store:
    """Owns the engine. Write with `async with store.transaction() as conn`, read with `store.read()`.

    On SQLite, writes are serialized in-process by an asyncio lock (one writer at a time is SQLite's rule
    anyway; taking it up front avoids SQLITE_BUSY on lock upgrades). Transactions nest: an inner
    `transaction()`/`read()` in the same task joins the outer one.
    """

    def __init__(self, url: str, engine: AsyncEngine, backend: str):
        self.url = url
        self.engine = engine
        self.backend = backend
        self._write_lock = asyncio.Lock() if backend == "sqlite" else None
        self._current: contextvars.ContextVar[AsyncConnection | None] = contextvars.ContextVar(
            f"stoa_store_txn_{id(self)}", default=None)
        from storage.apikeys import ApiKeyRepo
        from storage.events import EventRepo
        from storage.feedback import FeedbackRepo
        from storage.sessions import SessionRepo
        from storage.tutoring import TutoringRepo
        from storage.webhooks import WebhookRepo

        self.sessions = SessionRepo(self)
        self.tutoring = TutoringRepo(self)
        self.webhooks = WebhookRepo(self)
        self.api_keys = ApiKeyRepo(self)
        self.events = EventRepo(self)
        self.feedback = FeedbackRepo(self)

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed when the block exits without an exception."""
        outer = self._current.get()
        if outer is not None:
            yield outer
            return
        lock = self._write_lock or contextlib.nullcontext()
        async with lock:
            async with self.engine.begin() as conn:
                token = self._current.set(conn)
                try:
                    yield conn
                finally:
                    self._current.reset(token)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (joins the current write transaction when there is one)."""
        outer = self._current.get()
        if outer is not None:
            yield outer
            return
        async with self.engine.connect() as conn:
            async with conn.begin():
                token = self._current.set(conn)
                try:
                    yield conn
                finally:
                    self._current.reset(token)

    async def schema_status(self) -> SchemaStatus:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_status_sync)

    async def upgrade(self, target: str = "heads") -> SchemaStatus:
        """Apply migrations up to `target` (what `stoa db upgrade` runs). Returns the new status."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock:
            await asyncio.to_thread(_upgrade_blocking, self.backend, driver_url(self.url)[1], target)
        return await self.schema_status()

    async def check(self) -> None:
        status = await self.schema_status()
        if not status.ok:
            raise SchemaError(status.message, status)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# app[STORE]: the one Store of a running server (opened and closed by stoa/app.py's store context).
STORE = web.AppKey("store", Store)


def _sqlite_engine(driver: str, **kwargs: Any) -> AsyncEngine:
    path = make_url(driver).database
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    engine = create_async_engine(driver, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)

    # pysqlite's implicit transactions skip BEGIN before SELECT and break transactional DDL; take over
    # BEGIN ourselves (SQLAlchemy's documented recipe).
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN")

    return engine


async def open_store(url: str, *, check: bool = True, auto_upgrade: bool = False,
                     pool_size: int = 10) -> Store:
    """Open the database at `url` (sqlite:///path or postgresql://...).

    check: raise SchemaError unless the schema is at this Stoa's head revision.
    auto_upgrade: on SQLite (the embedded default), apply pending migrations first so a bare machine works.
    PostgreSQL is never upgraded implicitly: run `stoa db upgrade`.
    """
    backend, driver = driver_url(url)
    if backend == "sqlite":
        engine = _sqlite_engine(driver)
    else:
        engine = create_async_engine(driver, pool_size=pool_size, max_overflow=pool_size,
                                     pool_pre_ping=True)
    store = Store(url, engine, backend)
    try:
        if check or auto_upgrade:
            try:
                status = await store.schema_status()
            except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                raise StorageError(f"cannot open database {safe_url(url)}: {exc}") from exc
            if auto_upgrade and backend == "sqlite" and status.state in ("empty", "behind"):
                status = await store.upgrade()
            if check and not status.ok:
                raise SchemaError(status.message, status)
    except BaseException:
        await store.close()
        raise
    return store


async def lock_key(conn: AsyncConnection, key: str) -> None:
    """Serialize transactions on `key` until this transaction ends. PostgreSQL: an advisory transaction lock;
    SQLite: nothing to do, writes are already serialized by the Store."""
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key})
