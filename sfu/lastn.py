"""Last-N: which video legs one viewer is sent (Jitsi's lastN and selected endpoints, much reduced).

A viewer gets every screen share, the cameras of the participants it pinned, and the cameras of the most
recent speakers until N cameras are sent (pins count towards N; pins beyond N are still sent: the viewer
asked for them). Video of a muted track takes no place. Audio is never selected: it is always sent. The
other video legs are paused (DownTrack.set_selected) and the page shows an avatar for them.

"Most recent speakers" is `SpeakerOrder`: whoever the speaker detector lists moves to the front, loudest
first; before anyone has spoken, the order in which participants published video. Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Sequence


@dataclass(frozen=True)
class Video:
    track_id: str
    participant: str
    source: str          # "screen" is always sent
    muted: bool = False  # a muted track sends nothing: it takes no place among the N


def select_forwarded(videos: Iterable[Video], order: Sequence[str], pinned: Collection[str], n: int) -> set[str]:
    """The track ids to send: screens, the pinned participants' cameras, then cameras by `order` (most
    recent speaker first; participants not in it after, in the order given) up to `n`. n <= 0: all."""
    videos = list(videos)
    if n <= 0:
        return {v.track_id for v in videos}
    chosen = {v.track_id for v in videos if v.source == "screen"}
    cameras = [v for v in videos if v.source != "screen" and not v.muted]
    pins = [v for v in cameras if v.participant in pinned]
    chosen.update(v.track_id for v in pins)
    rank = {p: i for i, p in enumerate(order)}
    rest = sorted((v for v in cameras if v.participant not in pinned),
                  key=lambda v: rank.get(v.participant, len(rank)))  # stable: unranked keep their order
    chosen.update(v.track_id for v in rest[:max(0, n - len(pins))])
    return chosen


class SpeakerOrder:
    """Participants, the most recent speaker first."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def add(self, participant: str) -> None:
        """A participant published video: last, until it speaks."""
        if participant not in self.order:
            self.order.append(participant)

    def remove(self, participant: str) -> None:
        if participant in self.order:
            self.order.remove(participant)

    def spoke(self, speakers: Sequence[str]) -> bool:
        """The detector's current speakers, loudest first, go to the front; True if the order changed."""
        if not speakers:
            return False
        front = list(dict.fromkeys(speakers))
        order = front + [p for p in self.order if p not in front]
        if order == self.order:
            return False
        self.order = order
        return True
