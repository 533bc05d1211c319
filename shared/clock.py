"""The clock that time-based rules read and that their timers sleep on.

A service takes `clock: Clock = SYSTEM_CLOCK` and both reads the time (`clock()`, seconds since the epoch)
and waits (`await clock.sleep(seconds)`) on it, so a test that injects a clock it moves by hand
(tests/fixtures/clock.py `FakeClock`) ends a 30 s quiz round by advancing the clock, not by waiting 30 s,
and a timer never disagrees with the time the rules compare against.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time; sleeps on the event loop."""

    __slots__ = ()

    def __call__(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()  # stateless: one instance serves everyone
