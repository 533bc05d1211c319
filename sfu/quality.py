"""Whether one viewer keeps up with a leg, from what it reports: receiver-report loss, NACKs, RTT.

GOOD, POOR or BAD per window of at least WINDOW seconds. BAD means the viewer's link cannot carry the
stream: the leg stops retransmitting to it and asks for a keyframe now and then instead (LiveKit does
the same on a PLI; its connection-quality scorer uses the same three inputs). A level gets worse after
WORSEN_AFTER windows and better after IMPROVE_AFTER, so one lost report or a keyframe burst does not
flap it. Pure: the caller passes `now`.
"""

from __future__ import annotations

from dataclasses import dataclass

GOOD, POOR, BAD = "good", "poor", "bad"
LEVELS = (GOOD, POOR, BAD)
WINDOW = 1.0
# Loss here is the larger of what the receiver reports lost after repair (RR fraction lost) and the
# share of packets it NACKed; RTT comes from the RR's LSR/DLSR.
POOR_LOSS, BAD_LOSS = 0.05, 0.25
POOR_RTT, BAD_RTT = 0.3, 1.0
WORSEN_AFTER, IMPROVE_AFTER = 2, 3
BAD_KEYFRAME_INTERVAL = 3.0  # a BAD viewer asks the publisher for a keyframe at most this often


@dataclass(frozen=True, slots=True)
class QualityChange:
    """The signal a leg gives when its viewer's quality level changes (for the room and /metrics)."""

    quality: str
    previous: str
    loss: float
    rtt: float | None


def classify(loss: float, rtt: float | None) -> str:
    if loss >= BAD_LOSS or (rtt is not None and rtt >= BAD_RTT):
        return BAD
    if loss >= POOR_LOSS or (rtt is not None and rtt >= POOR_RTT):
        return POOR
    return GOOD


class ViewerQuality:
    __slots__ = ("level", "loss", "rtt", "_report_loss", "_mark", "_candidate", "_streak", "_keyframe_at")

    def __init__(self, now: float):
        self.level = GOOD
        self.loss = 0.0
        self.rtt: float | None = None
        self._report_loss: float | None = None  # worst RR fraction lost since the last window
        self._mark = (now, 0, 0)  # (time, packets sent, packets NACKed) at the window's start
        self._candidate = GOOD
        self._streak = 0
        self._keyframe_at = float("-inf")

    def on_report(self, fraction_lost: float, rtt: float | None) -> None:
        if self._report_loss is None or fraction_lost > self._report_loss:
            self._report_loss = fraction_lost
        if rtt is not None:
            self.rtt = rtt

    def evaluate(self, sent_total: int, nacked_total: int, now: float) -> QualityChange | None:
        """Close the window if it is old enough; a QualityChange if the level moved."""
        at, sent, nacked = self._mark
        if now - at < WINDOW:
            return None
        sent = sent_total - sent
        nack_share = min(1.0, (nacked_total - nacked) / sent) if sent > 0 else 0.0
        self.loss = max(nack_share, self._report_loss or 0.0)
        self._report_loss = None
        self._mark = (now, sent_total, nacked_total)
        target = classify(self.loss, self.rtt)
        if target == self.level:
            self._streak = 0
            return None
        if target != self._candidate:
            self._candidate, self._streak = target, 0
        self._streak += 1
        worse = LEVELS.index(target) > LEVELS.index(self.level)
        if self._streak < (WORSEN_AFTER if worse else IMPROVE_AFTER):
            return None
        previous, self.level, self._streak = self.level, target, 0
        return QualityChange(target, previous, round(self.loss, 3),
                             None if self.rtt is None else round(self.rtt, 4))

    def keyframe_due(self, now: float) -> bool:
        """For a BAD viewer: may it have a keyframe now? (at most one per BAD_KEYFRAME_INTERVAL)"""
        if now - self._keyframe_at < BAD_KEYFRAME_INTERVAL:
            return False
        self._keyframe_at = now
        return True
