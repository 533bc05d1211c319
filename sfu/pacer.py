"""Paces one viewer leg: a leaky bucket that lets ordinary packets through at once and queues bursts.

libwebrtc paces everything at 2.5x the target rate in 5 ms steps; Stoa forwards in the receive
callback, and pacing every healthy leg costs more than it buys (on loopback a paced send wakes the
receiver more often: +10% CPU per forwarded packet at 30 viewers). So a leg paces its media only
while `pacing_media` is set, which the leg does while its viewer shows loss (a short queue on its link
is turning bursts into loss); retransmissions are always paced.

The bucket fills at PACING_FACTOR x the leg's media rate, BURST seconds deep (at least MIN_BURST bytes,
so ordinary frames pass and keyframes and batches of retransmissions are what gets paced). A packet that
finds enough tokens and an empty queue is sent at once (the hot path pays one comparison and a few
additions); otherwise it waits in the queue, which a timer drains in steps of at least STEP seconds.
Retransmissions go ahead of queued media. Nothing is dropped: a long queue drains faster than the
pacing rate, and a packet that has waited MAX_DELAY goes at the next step whatever the bucket holds,
so pacing never adds more latency than that.

A switch up to a higher simulcast layer starts on a keyframe several times a frame's size, sent
while the link carries the lower layer's rate: `pace_burst` paces the leg's media for a moment, at
the new layer's rate (sfu/layers.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable

PACING_FACTOR = 2.5
BURST = 0.04
MIN_BURST = 24_000          # bytes: twenty full packets, a large ordinary video frame
DEFAULT_RATE = 1_250_000.0  # bytes/s (10 Mbps) until the leg's media rate is known
MIN_RATE = 125_000.0          # bytes/s: pacing a leg below 1 Mbit/s would only add delay
STEP = 0.005
MAX_DELAY = 0.2


class Pacer:
    __slots__ = ("rate", "depth", "tokens", "at", "backlog", "pacing_media", "_media", "_rtx", "_queued_bytes",
                 "_send", "_clock", "_loop", "_timer", "paced", "bursts", "_wanted", "_burst_timer")

    def __init__(self, send: Callable[[bytes], bool], *, clock: Callable[[], float] = time.time,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.rate = DEFAULT_RATE
        self.depth = max(MIN_BURST, DEFAULT_RATE * BURST)
        self.tokens = self.depth
        self.at = clock()
        self.backlog = 0  # packets queued
        self.pacing_media = False  # the leg's media goes through the bucket too, not only retransmissions
        self._wanted = False  # pacing_media as the leg asked (set_pacing_media); a burst sets it meanwhile
        self._burst_timer: asyncio.TimerHandle | None = None
        self._media: deque[tuple[float, bytes]] = deque()  # (queued at, packet)
        self._rtx: deque[tuple[float, bytes]] = deque()
        self._queued_bytes = 0
        self._send = send
        self._clock = clock
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self.paced = 0   # packets that had to wait
        self.bursts = 0  # times the queue started

    def set_media_rate(self, bytes_per_second: float) -> None:
        self.rate = max(MIN_RATE, PACING_FACTOR * bytes_per_second)
        self.depth = max(MIN_BURST, self.rate * BURST)
        if self.tokens > self.depth:
            self.tokens = self.depth

    def set_pacing_media(self, on: bool) -> None:
        """Pace the leg's media (its viewer shows loss), or stop (unless a burst is being paced)."""
        self._wanted = on
        if self._burst_timer is None:
            self.pacing_media = on

    def pace_burst(self, seconds: float, bytes_per_second: float = 0.0) -> None:
        """Pace the leg's media for `seconds` (a keyframe that starts a higher layer), at the rate
        `bytes_per_second` of media calls for if given."""
        if bytes_per_second > 0:
            self.set_media_rate(bytes_per_second)
        self.pacing_media = True
        if self._burst_timer is not None:
            self._burst_timer.cancel()
        self._burst_timer = (self._loop or asyncio.get_event_loop()).call_later(seconds, self.end_burst)

    def end_burst(self) -> None:
        self._burst_timer = None
        self.pacing_media = self._wanted

    def admit(self, size: int, now: float) -> bool:
        """Spend tokens for a packet sent now, if there are enough (the caller checks `backlog`)."""
        tokens = self.tokens
        if now > self.at:
            tokens += (now - self.at) * self.rate
            if tokens > self.depth:
                tokens = self.depth
            self.at = now
        if tokens < size:
            self.tokens = tokens
            return False
        self.tokens = tokens - size
        return True

    def send(self, data: bytes, now: float, *, rtx: bool = False) -> None:
        """Send now if the bucket allows and nothing waits, else queue."""
        if not self.backlog and self.admit(len(data), now):
            self._send(data)
        else:
            self.enqueue(data, rtx=rtx)

    def enqueue(self, data: bytes, *, rtx: bool = False) -> None:
        (self._rtx if rtx else self._media).append((self._clock(), data))
        if not self.backlog:
            self.bursts += 1
        self.backlog += 1
        self.paced += 1
        self._queued_bytes += len(data)
        if self._timer is None:
            self._schedule(STEP)

    def drain(self) -> float | None:
        """Send what the bucket allows; the delay until the next step, or None if the queue is empty."""
        self._timer = None
        now = self._clock()
        # A long queue drains within MAX_DELAY whatever the rate: pacing must not become latency.
        rate = max(self.rate, self._queued_bytes / MAX_DELAY)
        if now > self.at:
            self.tokens = min(max(self.depth, rate * STEP), self.tokens + (now - self.at) * rate)
            self.at = now
        overdue = now - MAX_DELAY
        while self.backlog:
            queue = self._rtx or self._media
            queued_at, data = queue[0]
            size = len(data)
            if self.tokens >= size:
                self.tokens -= size
            elif queued_at > overdue:
                break
            queue.popleft()
            self.backlog -= 1
            self._queued_bytes -= size
            self._send(data)
        if not self.backlog:
            return None
        head = (self._rtx or self._media)[0]
        delay = min(max(STEP, (len(head[1]) - self.tokens) / rate), max(STEP, head[0] - overdue))
        self._schedule(delay)
        return delay

    def _schedule(self, delay: float) -> None:
        loop = self._loop or asyncio.get_event_loop()
        self._timer = loop.call_later(delay, self.drain)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._burst_timer is not None:
            self._burst_timer.cancel()
            self._burst_timer = None
        self._media.clear()
        self._rtx.clear()
        self.backlog = self._queued_bytes = 0
