"""Storage layer against both backends: migrations, schema checks, repositories, transactions."""

from __future__ import annotations

import asyncio
import os

import pytest
import sqlalchemy as sa

from storage import ConfigError, SchemaError, driver_url, open_store
from storage import schema as t


def test_driver_url_mapping():
    assert driver_url("sqlite:///data/stoa.sqlite3") == ("sqlite", "sqlite+aiosqlite:///data/stoa.sqlite3")
    assert driver_url("sqlite:////abs/x.db") == ("sqlite", "sqlite+aiosqlite:////abs/x.db")
    assert driver_url("postgresql://u@h:5432/db") == ("postgresql", "postgresql+asyncpg://u@h:5432/db")
    assert driver_url("postgres://u@h/db") == ("postgresql", "postgresql+asyncpg://u@h/db")
    with pytest.raises(ConfigError, match="unsupported database URL 'mysql'"):
        driver_url("mysql://x")
    with pytest.raises(ConfigError, match="in-memory"):
        driver_url("sqlite:///:memory:")


async def test_fresh_database_needs_upgrade(store_url):
    with pytest.raises(SchemaError, match="run `stoa db upgrade`"):
        await open_store(store_url)
    store = await open_store(store_url, check=False)
    try:
        status = await store.schema_status()
        assert status.state == "empty" and status.current == ()
        status = await store.upgrade()
        assert status.ok and status.current == status.head
        # Idempotent.
        assert (await store.upgrade()).ok
    finally:
        await store.close()
    store = await open_store(store_url)  # passes the check now
    await store.close()


async def test_sqlite_auto_upgrade_creates_parent_dir(tmp_path):
    path = tmp_path / "deep" / "er" / "stoa.sqlite3"
    store = await open_store(f"sqlite:///{path}", auto_upgrade=True)
    try:
        assert (await store.schema_status()).ok
        assert os.path.exists(path)
    finally:
        await store.close()


async def test_postgres_is_never_auto_upgraded(store_url):
    if not store_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    with pytest.raises(SchemaError, match="stoa db upgrade"):
        await open_store(store_url, auto_upgrade=True)


async def test_schema_behind_and_ahead_messages(store):
    async with store.transaction() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    status = await store.schema_status()
    assert status.state == "ahead"
    assert "newer than this Stoa knows" in status.message and "upgrade Stoa" in status.message
    with pytest.raises(SchemaError, match="ffff_future is newer than this Stoa knows"):
        await open_store(store.url)
    async with store.transaction() as conn:
        await conn.execute(sa.text("DELETE FROM alembic_version"))
    # Empty version table on existing tables reads as "no schema".
    assert (await store.schema_status()).state == "empty"


async def test_migrations_match_schema_module(store):
    """The migrated database has exactly the tables and columns storage.schema declares."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def diff(sync_conn):
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return compare_metadata(ctx, t.metadata)

    async with store.read() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []


async def test_transaction_rolls_back_on_error(store):
    with pytest.raises(RuntimeError):
        async with store.transaction() as conn:
            await conn.execute(t.api_keys.insert().values(key="k1", secret="s", created_at=1.0))
            raise RuntimeError("boom")
    assert await store.api_keys.active() == {}


async def test_nested_transactions_join_outer(store):
    with pytest.raises(RuntimeError):
        async with store.transaction():
            await store.api_keys.create(now=1.0, key="inner", secret="s")
            assert "inner" in await store.api_keys.active()  # sees its own write
            raise RuntimeError("abort everything")
    assert await store.api_keys.active() == {}


async def test_json_and_bool_roundtrip(store):
    sess = await store.sessions.create(room="r-json", title="T", type="class", instructor="teach",
                                       features={"chat": True, "polls": False}, status="scheduled",
                                       created_at=10.5)
    got = await store.sessions.get(sess.id)
    assert got.features == {"chat": True, "polls": False}
    assert got.created_at == 10.5
    hook = await store.webhooks.add(url="http://127.0.0.1:1/x", secret="s", events=["session.started"], now=1)
    assert (await store.webhooks.get(hook.id)).active is True


async def test_room_is_unique(store):
    await store.sessions.create(room="dup", title="a", type="class", instructor="i", features={},
                                status="scheduled", created_at=1)
    with pytest.raises(sa.exc.IntegrityError):
        await store.sessions.create(room="dup", title="b", type="class", instructor="i", features={},
                                    status="scheduled", created_at=2)


async def test_session_transition_is_compare_and_set(store):
    sess = await store.sessions.create(room="cas", title="a", type="class", instructor="i", features={},
                                       status="scheduled", created_at=1)
    live = await store.sessions.transition(sess.id, ["scheduled"], "live", actual_start=5.0)
    assert live.status == "live" and live.actual_start == 5.0
    assert await store.sessions.transition(sess.id, ["scheduled"], "live") is None
    assert (await store.sessions.get(sess.id)).status == "live"


async def test_api_keys(store):
    key, secret = await store.api_keys.create(now=1.0)
    assert (await store.api_keys.active()) == {key: secret}
    assert await store.api_keys.revoke(key, now=2.0)
    assert not await store.api_keys.revoke(key, now=3.0)
    assert await store.api_keys.active() == {}
    assert (await store.api_keys.list())[0]["revoked_at"] == 2.0


async def test_session_events_timeline(store):
    for i, kind in enumerate(["session.started", "chat.sent", "poll.opened", "session.ended"]):
        await store.events.append("s1", kind, ts=100.0 + i, actor="alice", payload={"i": i})
    await store.events.append("s2", "session.started", ts=100.0)
    with pytest.raises(ValueError, match="unknown session event 'chat'"):  # one vocabulary: storage.events.EVENTS
        await store.events.append("s1", "chat", ts=100.0)
    events = await store.events.list("s1")
    assert [e.type for e in events] == ["session.started", "chat.sent", "poll.opened", "session.ended"]
    assert events[1].payload == {"i": 1}
    assert [e.type for e in await store.events.list("s1", since=101.5)] == ["poll.opened", "session.ended"]
    assert [e.type for e in await store.events.list("s1", types=["chat.sent"])] == ["chat.sent"]
    assert len(await store.events.list("s1", after_id=events[2].id)) == 1


async def test_engagement_counters(store):
    await asyncio.gather(*[store.sessions.increment_engagement("s", "bob", "chat_messages") for _ in range(10)])
    await store.sessions.increment_engagement("s", "bob", "votes", 3)
    eng = await store.sessions.engagement("s")
    assert eng["bob"]["chat_messages"] == 10 and eng["bob"]["votes"] == 3 and eng["bob"]["strokes"] == 0
    with pytest.raises(ValueError, match="unknown engagement counter 'likes'"):
        await store.sessions.increment_engagement("s", "bob", "likes")


async def test_writes_are_durable_across_reopen(store):
    await store.api_keys.create(now=1.0, key="durable", secret="s3cret")
    url = store.url
    other = await open_store(url)
    try:
        assert (await other.api_keys.active())["durable"] == "s3cret"
    finally:
        await other.close()


async def test_unreachable_postgres_names_the_problem():
    from storage import StorageError

    # Port 9 on loopback: nothing listens, connection refused at once.
    with pytest.raises(StorageError, match=r"cannot open database postgresql://stoa:\*\*\*@127.0.0.1:9/x"):
        await open_store("postgresql://stoa:hunter2@127.0.0.1:9/x")


async def test_concurrent_upgrades_are_safe(store_url):
    stores = [await open_store(store_url, check=False) for _ in range(2)]
    try:
        statuses = await asyncio.gather(*[s.upgrade() for s in stores])
        assert all(s.ok for s in statuses)
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_presence_joins_open_one_interval(store):
    results = await asyncio.gather(*[
        store.sessions.presence_join("s", "ann", name="Ann", role="student", now=10.0, grace_s=30)
        for _ in range(8)])
    assert sorted(how for _, how in results) == ["extra"] * 7 + ["new"]
    intervals = await store.sessions.intervals("s")
    assert len(intervals) == 1 and intervals[0].connections == 8
    for _ in range(8):
        await store.sessions.presence_leave("s", "ann", now=20.0)
    assert (await store.sessions.intervals("s"))[0].left_at == 20.0
    assert await store.sessions.close_open_intervals(now=30.0) == 0


async def test_close_open_intervals_after_crash(store):
    await store.sessions.presence_join("s", "a", name="", role="student", now=10.0, grace_s=30)
    await store.sessions.presence_join("s2", "b", name="", role="student", now=50.0, grace_s=30)
    assert await store.sessions.close_open_intervals(now=40.0) == 2
    by = {iv.identity: iv.left_at for iv in await store.sessions.intervals("s")
          + await store.sessions.intervals("s2")}
    assert by == {"a": 40.0, "b": 50.0}  # never before the join


async def test_old_event_names_are_renamed_by_the_migration(store_url):
    """Rows the interactive layer wrote before one vocabulary (`chat`, `hand`, ...) read as the new names."""
    from storage import schema as t
    from storage.events import EVENTS

    store = await open_store(store_url, check=False)
    try:
        await store.upgrade("0002_feedback")
        old = [("chat", {"message_id": 1}), ("chat_pin", {"message_id": 1, "pinned": False}),
               ("hand", {"raised": True}), ("hand", {"raised": False, "identity": "a"}),
               ("question_vote", {"question_id": "q", "on": False}), ("poll_open", {"poll_id": "p"}),
               ("whiteboard_permit", {"identities": ["a"]}), ("session.started", None)]
        async with store.transaction() as conn:
            for i, (kind, payload) in enumerate(old):
                await conn.execute(t.session_events.insert().values(session_id="s", ts=float(i), type=kind,
                                                                    actor="a", payload=payload))
        await store.upgrade()
        events = await store.events.list("s")
        assert [e.type for e in events] == ["chat.sent", "chat.unpinned", "hand.raised", "hand.lowered",
                                            "question.unvoted", "poll.opened", "whiteboard.permitted",
                                            "session.started"]
        assert all(e.type in EVENTS for e in events) and events[3].payload == {"raised": False, "identity": "a"}
    finally:
        await store.close()
