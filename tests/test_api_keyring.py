"""API keys (KeyRing) and configured webhooks at the storage level, on SQLite and PostgreSQL; the
`stoa apikey` CLI; start-up housekeeping of a real server (crash-left presence intervals, config webhooks)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from classroom.errors import Conflict, NotFound
from classroom.webhooks import WebhookDispatcher
from shared.auth import TokenError, mint_token
from shared.config import load_settings
from signaling.api import sync_config_webhooks
from signaling.api.identity import KeyRing
from storage import open_store
from storage.store import STORE

SECRET = "s" * 40


def settings(**kw):
    return load_settings(environ={}, overrides={"api_key": "main", "api_secret": SECRET,
                                                "api_keys": {"cfg": "c" * 40}, **kw})


async def test_keyring_merges_config_and_table_and_revokes(store):
    ring = KeyRing(settings(), store, clock=lambda: 1000.0)
    assert await ring.active() == {"main": SECRET, "cfg": "c" * 40}
    key, secret = await ring.create("lms")
    assert (await ring.active())["lms"] == secret
    assert await ring.check_secret("lms", secret) and not await ring.check_secret("lms", "nope")
    token = mint_token("lms", secret, room="*", identity="t", role="instructor")
    assert (await ring.verify(token)).identity == "t"
    with pytest.raises(Conflict):
        await ring.create("lms")
    with pytest.raises(Conflict):
        await ring.create("cfg")

    await ring.revoke("lms")
    with pytest.raises(TokenError):
        await ring.verify(token)
    with pytest.raises(Conflict):
        await ring.revoke("lms")
    # A key from the config file is masked by a revoked row.
    await ring.revoke("cfg")
    assert set(await ring.active()) == {"main"}
    assert not await ring.check_secret("cfg", "c" * 40)
    with pytest.raises(Conflict):
        await ring.revoke("main")
    with pytest.raises(NotFound):
        await ring.revoke("ghost")
    listed = {r["key"]: r for r in await ring.list()}
    assert listed["lms"]["revoked_at"] == 1000.0 and listed["lms"]["source"] == "database"
    assert listed["cfg"]["revoked_at"] == 1000.0 and listed["cfg"]["source"] == "config"
    assert listed["main"]["revoked_at"] is None


async def test_config_webhooks_are_kept_in_step(store):
    dispatcher = WebhookDispatcher(store)
    conf = [{"url": "http://127.0.0.1:9/a", "secret": "x" * 20, "events": ["session.started"]},
            {"url": "http://127.0.0.1:9/b"}]
    await sync_config_webhooks(dispatcher, conf)
    hooks = {h.url: h for h in await dispatcher.list_webhooks()}
    assert hooks["http://127.0.0.1:9/a"].secret == "x" * 20
    assert hooks["http://127.0.0.1:9/a"].events == ["session.started"]
    assert hooks["http://127.0.0.1:9/b"].events == ["*"]
    await sync_config_webhooks(dispatcher, conf)  # unchanged: nothing replaced
    again = {h.url: h for h in await dispatcher.list_webhooks()}
    assert {u: h.id for u, h in again.items()} == {u: h.id for u, h in hooks.items()}
    conf[0]["events"] = ["*"]
    await sync_config_webhooks(dispatcher, conf)
    changed = {h.url: h for h in await dispatcher.list_webhooks()}
    assert changed["http://127.0.0.1:9/a"].events == ["*"] and len(changed) == 2


def test_cli_apikey_create_list_revoke(tmp_path):
    def stoa(*args):
        return subprocess.run([sys.executable, "-m", "stoa.cli", "apikey", "--data-dir", str(tmp_path / "d"),
                               *args], capture_output=True, text=True, timeout=60)

    out = stoa("create", "lms")
    assert out.returncode == 0, out.stderr
    assert "secret" in out.stdout
    assert "lms\tactive\tdatabase" in stoa("list").stdout
    assert stoa("revoke", "lms").returncode == 0
    assert "lms\trevoked\tdatabase" in stoa("list").stdout
    again = stoa("revoke", "lms")
    assert again.returncode == 1 and "already revoked" in again.stderr


@pytest.fixture
async def crashed_data_dir(tmp_path):
    """A data dir whose database holds a live session with a presence interval left open (a crash)."""
    url = f"sqlite:///{tmp_path}/data/stoa.sqlite3"
    store = await open_store(url, auto_upgrade=True)
    try:
        rec = await store.sessions.create(id="s1", room="r1", title="t", description="", type="class",
                                          instructor="prof", scheduled_start=None, scheduled_end=None,
                                          capacity=None, password_hash=None, features={}, status="live",
                                          actual_start=100.0, actual_end=None, created_at=100.0)
        await store.sessions.presence_join(rec.id, "stu", name="Stu", role="student", now=150.0, grace_s=30)
    finally:
        await store.close()
    return tmp_path / "data"


@pytest.fixture
def server_settings(crashed_data_dir):
    return load_settings(environ={}, overrides={
        "dev": True, "host": "127.0.0.1", "port": 8080, "ice_addresses": ["127.0.0.1"],
        "data_dir": str(crashed_data_dir),
        "webhooks": [{"url": "http://127.0.0.1:9/lms", "secret": "y" * 20, "events": ["attendance.ready"]}],
    })


async def test_startup_closes_crash_left_intervals_and_loads_config_webhooks(stoa_server, api):
    store = stoa_server.app[STORE]
    [interval] = await store.sessions.intervals("s1")
    assert interval.left_at is not None and interval.left_at >= interval.joined_at
    hooks = await api.ok("GET", "/api/webhooks", auth=api.admin)
    assert [(h["url"], h["events"]) for h in hooks] == [("http://127.0.0.1:9/lms", ["attendance.ready"])]
