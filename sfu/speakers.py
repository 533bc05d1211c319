"""Who is speaking: RFC 6464 audio levels of the forwarded audio, smoothed, ranked and debounced.

No decoding: every audio packet already carries the publisher's own level (0 = 0 dBov, loudest; 127 =
silence). The per-packet part is `LevelRing.feed` (a track sink: two array stores); `SpeakerDetector.update`
runs on a timer and does the arithmetic with numpy over the last `window` seconds of each ring.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np

RING_SLOTS = 128          # 2.5 s of 20 ms packets
WINDOW = 0.6              # s of levels averaged per decision
SPEAKING_DBOV = -50.0     # a window at least this loud is speech (silence is -127, quiet rooms ~ -60)
HOLD = 1.0                # s a speaker stays listed after falling quiet (pauses between words)
MIN_INTERVAL = 0.5        # s between two events
LEAD_MARGIN_DB = 3.0      # the first speaker yields only to someone this much louder


class LevelRing:
    """The recent audio levels of one track, preallocated; a PacketSink of its UpTrack."""

    __slots__ = ("levels", "times", "index", "mask")

    def __init__(self, slots: int = RING_SLOTS):
        if slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self.levels = array("B", bytes(slots))
        self.times = array("d", bytes(8 * slots))   # 0.0: empty
        self.index = 0
        self.mask = slots - 1

    def add(self, level: int, arrival: float) -> None:
        i = self.index
        self.levels[i] = level & 0x7F
        self.times[i] = arrival
        self.index = (i + 1) & self.mask

    def feed(self, packet, arrival_time: float) -> None:
        level = packet.extensions.audio_level  # (voice activity flag, -dBov) or None
        if level is not None:
            self.add(level[1], arrival_time)

    def loudness(self, now: float, window: float) -> float | None:
        """Mean power of the levels that arrived in (now - window, now], in dBov; None if none did."""
        times = np.frombuffer(self.times, dtype=np.float64)
        recent = times > now - window
        if not recent.any():
            return None
        levels = np.frombuffer(self.levels, dtype=np.uint8)[recent].astype(np.float64)
        power = np.mean(np.power(10.0, -levels / 10.0))
        return float(10.0 * np.log10(power))


@dataclass(frozen=True)
class Speaker:
    key: str          # the participant's identity
    level: float      # smoothed loudness, dBov (0 is the loudest)


class SpeakerDetector:
    """Ranks participants by the loudness of their audio tracks (the loudest track counts)."""

    def __init__(self, *, window: float = WINDOW, speaking_dbov: float = SPEAKING_DBOV, hold: float = HOLD,
                 min_interval: float = MIN_INTERVAL, lead_margin_db: float = LEAD_MARGIN_DB):
        self.window = window
        self.speaking_dbov = speaking_dbov
        self.hold = hold
        self.min_interval = min_interval
        self.lead_margin_db = lead_margin_db
        self._rings: dict[str, tuple[str, LevelRing]] = {}   # track id -> (participant, ring)
        self._last_loud: dict[str, float] = {}                # participant -> last time it was loud
        self._levels: dict[str, float] = {}                   # participant -> last loud level
        self._sent: list[str] | None = None                   # the last list reported
        self._sent_at = float("-inf")

    def add_track(self, track_id: str, participant: str, ring: LevelRing) -> None:
        self._rings[track_id] = (participant, ring)

    def remove_track(self, track_id: str) -> None:
        self._rings.pop(track_id, None)

    def __len__(self) -> int:
        return len(self._rings)

    def ranking(self, now: float) -> list[Speaker]:
        """Who counts as speaking at `now`, loudest first (the current first keeps its place unless
        someone is lead_margin_db louder)."""
        loud: dict[str, float] = {}
        for participant, ring in self._rings.values():
            level = ring.loudness(now, self.window)
            if level is not None and level >= self.speaking_dbov:
                loud[participant] = max(level, loud.get(participant, -127.0))
        for participant, level in loud.items():
            self._last_loud[participant] = now
            self._levels[participant] = level
        present = {p for p, _ in self._rings.values()}
        for participant in list(self._last_loud):
            if participant not in present or now - self._last_loud[participant] > self.hold:
                del self._last_loud[participant]
                self._levels.pop(participant, None)
        ranked = sorted(self._last_loud, key=lambda p: (-self._levels[p], p))
        previous = self._sent[0] if self._sent else None
        if ranked and previous in self._last_loud and ranked[0] != previous:
            if self._levels[ranked[0]] - self._levels[previous] < self.lead_margin_db:
                ranked.remove(previous)
                ranked.insert(0, previous)
        return [Speaker(p, round(self._levels[p], 1)) for p in ranked]

    def update(self, now: float) -> list[Speaker] | None:
        """The new ranking if it differs from the last one reported and min_interval has passed
        since that report; else None."""
        ranking = self.ranking(now)
        keys = [s.key for s in ranking]
        if keys == self._sent or now - self._sent_at < self.min_interval:
            return None
        self._sent, self._sent_at = keys, now
        return ranking

    def forget(self) -> bool:
        """Drop every speaker (no audio is left); True if the last report named someone."""
        named = bool(self._sent)
        self._last_loud.clear()
        self._levels.clear()
        self._sent, self._sent_at = [], float("-inf")
        return named
