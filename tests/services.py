"""Bring up the machine's PostgreSQL and Redis when they are down (see shared/services.md)."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import time

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(host: str, port: int, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _listening(host, port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start listening on {host}:{port} within {timeout:.0f} s")


def ensure_postgres() -> None:
    if _listening(PG_HOST, PG_PORT):
        return
    versions = sorted(os.path.basename(p) for p in glob.glob("/etc/postgresql/*"))
    if not versions:
        raise RuntimeError(
            "PostgreSQL is not running and not installed: apt-get install -y postgresql"
        )
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
        check=False,
    )
    _wait(PG_HOST, PG_PORT, "PostgreSQL")


def ensure_redis() -> None:
    if _listening(REDIS_HOST, REDIS_PORT):
        return
    os.makedirs("/var/lib/redis", exist_ok=True)
    os.makedirs("/var/log/redis", exist_ok=True)
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
         "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
         "--logfile", "/var/log/redis/ci.log"],
        check=False,
    )
    _wait(REDIS_HOST, REDIS_PORT, "Redis")
