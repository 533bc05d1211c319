"""`stoa serve` and `stoa db status|upgrade` against a database they cannot use: one line on stderr saying what
is wrong and what to do, never a traceback (real subprocesses, SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import sqlalchemy as sa

from storage import open_store

FUTURE = "ffff_future"


def stoa(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOA_")}
    out = subprocess.run([sys.executable, "-m", "stoa.cli", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def serve(tmp_path, database: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return stoa(tmp_path, "serve", "--dev", "--host", "127.0.0.1", "--port", str(port), "--ice-address",
                "127.0.0.1", "--data-dir", str(tmp_path / "serve-data"), "--database", database)


def head_revision(url: str) -> str:
    async def run() -> str:
        store = await open_store(url, check=False)
        try:
            return ", ".join((await store.schema_status()).head)
        finally:
            await store.close()

    return asyncio.run(run())


def stamp(url: str, revision: str) -> None:
    """What a newer Stoa's migration would leave behind."""
    async def run() -> None:
        store = await open_store(url, check=False)
        try:
            async with store.transaction() as conn:
                await conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
        finally:
            await store.close()

    asyncio.run(run())


def test_db_commands_and_serve_say_what_is_wrong_with_the_schema(store_url, tmp_path):
    head = head_revision(store_url)
    # An empty database: status says so, serve refuses (PostgreSQL, and SQLite named by --database, are never
    # migrated implicitly), upgrade migrates.
    status = stoa(tmp_path, "db", "status", "--database", store_url)
    assert status.returncode == 1
    assert status.stdout.strip() == (f"database has no Stoa schema yet but this Stoa needs revision {head}: "
                                     "run `stoa db upgrade`")
    refused = serve(tmp_path, store_url)
    assert refused.returncode == 2 and "Stoa listening" not in refused.stdout
    assert refused.stderr.strip().splitlines()[-1] == f"stoa serve: {status.stdout.strip()}"
    upgraded = stoa(tmp_path, "db", "upgrade", "--database", store_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"database schema is at revision {head}"  # not a SchemaStatus(...) repr
    status = stoa(tmp_path, "db", "status", "--database", store_url)
    assert (status.returncode, status.stdout.strip()) == (0, f"database schema is at revision {head}")
    again = stoa(tmp_path, "db", "upgrade", "--database", store_url)
    assert (again.returncode, again.stdout) == (0, upgraded.stdout)

    # A database a newer Stoa migrated: nothing here touches it.
    stamp(store_url, FUTURE)
    newer = f"database schema {FUTURE} is newer than this Stoa knows (it knows up to {head}): upgrade Stoa"
    status = stoa(tmp_path, "db", "status", "--database", store_url)
    assert (status.returncode, status.stdout.strip()) == (1, newer)
    advice = f"{newer}, or point --database (or STOA_DATABASE) at another database"
    upgrade = stoa(tmp_path, "db", "upgrade", "--database", store_url)
    assert upgrade.returncode == 2 and upgrade.stdout == ""
    assert upgrade.stderr.strip() == f"stoa db upgrade: {advice}"
    refused = serve(tmp_path, store_url)
    assert refused.returncode == 2 and "Stoa listening" not in refused.stdout
    assert refused.stderr.strip().splitlines()[-1] == f"stoa serve: {advice}"
    assert stoa(tmp_path, "db", "status", "--database", store_url).stdout.strip() == newer  # still FUTURE


def test_serve_on_the_embedded_database_of_a_newer_stoa(tmp_path):
    """The default SQLite in --data-dir is auto-upgraded when behind, but never when ahead."""
    data_dir = tmp_path / "data"
    url = f"sqlite:///{data_dir}/stoa.sqlite3"
    assert stoa(tmp_path, "db", "upgrade", "--data-dir", str(data_dir)).returncode == 0
    stamp(url, FUTURE)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = stoa(tmp_path, "serve", "--dev", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir))
    assert out.returncode == 2 and "Stoa listening" not in out.stdout
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"stoa serve: database schema {FUTURE} is newer than this Stoa knows")
    assert line.endswith("upgrade Stoa, or point --database (or STOA_DATABASE) at another database")


def test_unreachable_database_is_named_without_its_password(tmp_path):
    url = "postgresql://stoa:hunter2@127.0.0.1:9/x"  # port 9 on loopback: connection refused at once
    hint = "is it running, and is --database (or STOA_DATABASE) right?"
    refused = serve(tmp_path, url)
    assert refused.returncode == 2 and "Stoa listening" not in refused.stdout
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("stoa serve: cannot open database postgresql://stoa:***@127.0.0.1:9/x: ")
    assert line.endswith(hint) and "hunter2" not in refused.stderr
    for action in ("status", "upgrade"):
        out = stoa(tmp_path, "db", action, "--database", url)
        assert out.returncode == 2 and out.stdout == ""
        err = out.stderr.strip()
        assert err.startswith(f"stoa db {action}: cannot reach the database postgresql://stoa:***@127.0.0.1:9/x: ")
        assert err.endswith(hint) and "hunter2" not in err
