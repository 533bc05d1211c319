"""`stoa serve` in a process of its own (uvloop, as in production), and a bounded poll for tests."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from shared.auth import mint_token
from shared.config import DEV_API_KEY, DEV_API_SECRET

ROOT = Path(__file__).resolve().parent.parent


async def eventually(check, timeout: float = 20.0, what: str | None = None, interval: float = 0.1):
    """Poll `check` (a function, or a coroutine function) until it returns something true, and return that;
    AssertionError after `timeout` seconds. The tests' one poll-until helper: use it instead of a sleep."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r})" if what
                                 else f"not true within {timeout:.0f} s (last: {last!r})")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`stoa serve` (uvloop, as in production) in its own process, with debug hooks on."""

    def __init__(self, tmp_path: Path, *extra: str, env: dict | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.log"
        self._out = open(self.log, "ab")  # a node started again on the same directory logs on
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "stoa"), "serve", "--dev", "--port", str(self.port),
             "--ice-address", "127.0.0.1", "--data-dir", str(tmp_path / "data"), "--log-level", "warning", *extra],
            stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)

    async def wait_up(self, http: aiohttp.ClientSession) -> None:
        async def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"stoa serve exited: {self.log.read_text()}")
            try:
                async with http.get(self.base + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        deadline = time.monotonic() + 30
        while not await up():
            assert time.monotonic() < deadline, "stoa serve did not come up in 30 s"
            await asyncio.sleep(0.2)

    def token(self, room: str, identity: str, role: str) -> str:
        return mint_token(DEV_API_KEY, DEV_API_SECRET, room=room, identity=identity, role=role)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
