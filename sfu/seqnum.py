"""Wrap-around counters, the one home for them (mediasoup's RTC::SeqManager is the model): RTP sequence
numbers (16 bits) and timestamps (32 bits) compared, advanced and unwrapped. Used by sfu/ and recorder/.

sfu/forwarder.py inlines the same masks on its per-packet path: a call per packet and leg costs
measurable time there (bench/fanout.py).
"""

from __future__ import annotations

from typing import Optional


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b on the 16-bit circle."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


def ts_diff(a: int, b: int) -> int:
    """Signed distance a - b on the 32-bit circle."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


class Unwrapper:
    """Unwrap a wrapping counter (16-bit sequence numbers, 32-bit timestamps) to an integer that
    keeps growing. Values are compared with the highest value seen so far, so reordered and late
    values land on the right side of a wrap. The first value maps to ``value + 2**bits`` so that a
    slightly older packet arriving next never goes negative."""

    def __init__(self, bits: int) -> None:
        self._mod = 1 << bits
        self._half = 1 << (bits - 1)
        self._highest: Optional[int] = None

    def unwrap(self, value: int) -> int:
        if self._highest is None:
            self._highest = value + self._mod
            return self._highest
        delta = (value - self._highest) % self._mod
        if delta >= self._half:
            delta -= self._mod
        ext = self._highest + delta
        if ext > self._highest:
            self._highest = ext
        return ext

    @property
    def highest(self) -> Optional[int]:
        return self._highest


def unwrap_near(value: int, reference: int, bits: int = 32) -> int:
    """Unwrap ``value`` (a ``bits``-wide counter) to the extended value closest to ``reference``."""
    mod = 1 << bits
    delta = (value - reference) % mod
    if delta >= mod >> 1:
        delta -= mod
    return reference + delta
