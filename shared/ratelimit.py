"""The one token bucket: NACK budgets (sfu/retransmit.py), WebSocket frames (signaling/ws.py) and the
classroom's per-member message limits (classroom/interactive/limits.py) all spend from one of these."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second up to `depth`; `take` spends them if there are enough. Time is passed in
    (any monotonic clock, or a test's); a clock that steps back refills nothing."""

    __slots__ = ("rate", "depth", "tokens", "at")

    def __init__(self, rate: float, depth: float, now: float):
        self.rate = rate
        self.depth = depth
        self.tokens = depth
        self.at = now

    def refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.depth, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def take(self, amount: float, now: float) -> bool:
        self.refill(now)
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True

    def set_rate(self, rate: float, depth: float, now: float) -> None:
        self.refill(now)
        self.rate, self.depth = rate, depth
        self.tokens = min(self.tokens, depth)
