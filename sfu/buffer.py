"""Per-track packet cache: answers subscriber NACKs without asking the publisher again."""

from __future__ import annotations

from dataclasses import dataclass

# 2048 slots hold >= 1 s up to ~2000 packets/s (about 15 Mbps of video); at 1.5 Mbps it is ~12 s.
DEFAULT_SLOTS = 2048


@dataclass(slots=True)
class CachedPacket:
    """A source packet as the publisher sent it (after RTX unwrap), payload intact."""

    seq: int
    timestamp: int
    marker: int
    payload: bytes
    audio_level: int | None
    arrival: float
    keyframe: bool = False


class PacketCache:
    """Ring buffer keyed by source sequence number."""

    __slots__ = ("_slots", "_mask")

    def __init__(self, slots: int = DEFAULT_SLOTS):
        if slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self._slots: list[CachedPacket | None] = [None] * slots
        self._mask = slots - 1

    def add(self, packet: CachedPacket) -> None:
        self._slots[packet.seq & self._mask] = packet

    def get(self, seq: int) -> CachedPacket | None:
        packet = self._slots[seq & self._mask]
        if packet is not None and packet.seq == seq:
            return packet
        return None

    def span_seconds(self) -> float:
        """How far back in time the cache currently reaches."""
        arrivals = [p.arrival for p in self._slots if p is not None]
        return max(arrivals) - min(arrivals) if arrivals else 0.0

    def __len__(self) -> int:
        return len(self._slots)
