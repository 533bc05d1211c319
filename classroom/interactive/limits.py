"""Token buckets for per-member, per-message-type rate limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from shared.ratelimit import TokenBucket


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: float


# bucket name -> rate; each handler names its bucket in its @handles spec (classroom/interactive/base.py).
DEFAULT_RATES: dict[str, Rate] = {
    "chat": Rate(5, 10),
    "typing": Rate(0.5, 2),
    "qa": Rate(2, 6),
    "vote": Rate(5, 10),
    "moderation": Rate(10, 30),
    "whiteboard": Rate(30, 60),
    "reaction": Rate(2, 5),
    "hand": Rate(1, 4),
    "quiz": Rate(5, 10),
}


class RateLimiter:
    """Buckets keyed by (identity, bucket name) so a reconnect does not refill them."""

    def __init__(self, rates: dict[str, Rate], clock: Callable[[], float]):
        self.rates = rates
        self.clock = clock
        self.buckets: dict[tuple[str, str], TokenBucket] = {}

    def allow(self, identity: str, bucket: str) -> bool:
        rate = self.rates.get(bucket)
        if rate is None:
            return True
        now = self.clock()
        key = (identity, bucket)
        tb = self.buckets.get(key)
        if tb is None:
            tb = self.buckets[key] = TokenBucket(rate.per_second, rate.burst, now)
        return tb.take(1, now)
