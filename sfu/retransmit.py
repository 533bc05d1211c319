"""Which NACKed packets one viewer gets again: a few tries, while still useful, within a budget.

How the others bound retransmission (read before choosing):
- libwebrtc resends a packet only if an RTT has passed since it was last sent (RtpPacketHistory) and
  puts every retransmission through a RateLimiter capped at the target send rate over 1 s.
- LiveKit (sequencer.go) resends a packet at most 3 times, at least min(100 ms, 2 RTT) apart, RTT
  70 ms until receiver reports give one; it stops RTX to a leg that asked for a keyframe.
- mediasoup (RtpStreamSend) keeps packets MaxRetransmissionDelay (2 s video, 1 s audio) and resends
  one at most once per RTT (100 ms by default).

Stoa: at most MAX_TRIES per packet, min(100 ms, 2 RTT) apart, only while the packet is younger than
RTT + AGE_MARGIN (the viewer's jitter buffer will not wait longer), and retransmitted bytes capped at
BUDGET_SHARE of the media bytes the viewer gets (a token bucket). Pure: the caller passes `now`.
"""

from __future__ import annotations

from shared.ratelimit import TokenBucket

MAX_TRIES = 3
DEFAULT_RTT = 0.1          # seconds, until a receiver report gives one
MIN_INTERVAL = 0.01        # between two sends of one packet, whatever the RTT
MAX_INTERVAL = 0.1
AGE_MARGIN = 0.3           # on top of one RTT
MAX_AGE = 1.0
BUDGET_SHARE = 0.15        # of the viewer's media bitrate
BUDGET_DEPTH = 0.5         # seconds of budget that may go in one burst,
MIN_BUDGET_DEPTH = 12_000  # but at least ten full packets: losses come in bursts
MIN_BUDGET_RATE = 8000.0   # bytes/s (64 kbit/s): a low-rate stream can still be repaired
RATE_WINDOW = 1.0          # the media rate is measured over at least this
_PRUNE_ABOVE = 512

SEND = "send"
REASONS = ("too_old", "tries", "too_soon", "budget", "suspended")


class RetransmitPolicy:
    """One viewer leg's retransmission decisions, keyed by the leg's outgoing sequence number."""

    __slots__ = ("rtt", "suspended", "bucket", "media_rate", "_mark", "_tries", "new_losses", "sent",
                 "refused")

    def __init__(self, now: float):
        self.rtt: float | None = None
        self.suspended = False  # the viewer cannot keep up: repairing its gaps only adds to them
        self.bucket = TokenBucket(MIN_BUDGET_RATE, MIN_BUDGET_DEPTH, now)
        self.media_rate = 0.0  # bytes/s forwarded to the viewer, last window
        self._mark = (now, 0)
        self._tries: dict[int, tuple[int, float]] = {}  # out_seq -> (sends so far, last send)
        self.new_losses = 0  # distinct packets NACKed
        self.sent = 0
        self.refused = dict.fromkeys(REASONS, 0)

    def interval(self) -> float:
        rtt = DEFAULT_RTT if self.rtt is None else self.rtt
        return min(MAX_INTERVAL, max(MIN_INTERVAL, 2 * rtt))

    def max_age(self) -> float:
        return min(MAX_AGE, (DEFAULT_RTT if self.rtt is None else self.rtt) + AGE_MARGIN)

    def observe_media(self, octets_total: int, now: float) -> None:
        """Feed the leg's running count of media bytes; the budget follows the measured rate."""
        at, octets = self._mark
        if now - at < RATE_WINDOW:
            return
        self.media_rate = max(0, octets_total - octets) / (now - at)
        self._mark = (now, octets_total)
        budget = max(MIN_BUDGET_RATE, BUDGET_SHARE * self.media_rate)
        self.bucket.set_rate(budget, max(MIN_BUDGET_DEPTH, budget * BUDGET_DEPTH), now)

    def decide(self, out_seq: int, size: int, sent_at: float, now: float) -> str:
        """SEND (and count it) or the reason not to. `sent_at` is when the packet first went out."""
        tries = self._tries
        entry = tries.get(out_seq)
        if entry is None:
            self.new_losses += 1
            if len(tries) > _PRUNE_ABOVE:
                horizon = now - 2 * MAX_AGE
                self._tries = tries = {s: e for s, e in tries.items() if e[1] > horizon}
            count, last = 0, None
        else:
            count, last = entry
        if self.suspended:
            reason = "suspended"
        elif now - sent_at > self.max_age():
            reason = "too_old"
        elif count >= MAX_TRIES:
            reason = "tries"
        elif last is not None and now - last < self.interval():
            reason = "too_soon"
        elif not self.bucket.take(size, now):
            reason = "budget"
        else:
            tries[out_seq] = (count + 1, now)
            self.sent += 1
            return SEND
        if entry is None:
            tries[out_seq] = (0, sent_at)
        self.refused[reason] += 1
        return reason
