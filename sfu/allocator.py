"""Which simulcast layer each of one viewer's legs forwards (LiveKit's StreamAllocator, much reduced).

Inputs, all per viewer:
- the downlink estimate: the viewer's REMB (Chromium computes it from the abs-send-time Stoa writes on
  every forwarded packet), shared by all the viewer's legs;
- loss: a leg whose viewer is judged poor or bad (sfu/quality.py, from receiver-report loss and NACKs)
  steps down one layer;
- the size the viewer's page renders each video at (the room protocol's `video_size`): a layer larger
  than that is never chosen, whatever the link;
- priority: the screen share gets its share of the estimate first, then the active speaker's camera
  (the first of sfu/speakers.py's ranking, `speakers`), then the other cameras.

REMB follows what arrives: it grows to at most 1.5 times the incoming rate while nothing queues, and
falls to about 0.85 times what the link delivered when delay builds up. So it is read as a congestion
signal, not as a capacity: a REMB that fell, to below 90% of what the viewer is being sent, means the
link is full,
and the estimate becomes the viewer's cap (for DRAIN_FOR seconds, 80% of it: the queue that filled
must drain, and the target layer's keyframe pass). The estimate first pays for the legs that are not simulcast
(audio, single-stream video), then each simulcast leg in priority order gets the highest layer that
fits what is left. The cap rises with later REMBs. A leg that the cap holds below the layer its size
allows is probed for (sfu/probe.py): padding on its RTX stream brings what the viewer receives to the
higher layer's rate, and a probe that holds raises the cap to that rate, so the leg steps up at once.
A viewer whose legs cannot carry padding (no RTX negotiated) gets the older probe by switching: the cap
is lifted PROBE_AFTER seconds after the last congestion signal, the legs step up one layer at a time,
and a step that brings congestion back doubles the wait before the next one.

With transport-cc feedback from the viewer (`expect_transport_cc` when its answer takes it,
`transport_cc` once its first feedback arrives; on_transport_feedback) the estimate is the allocator's own, as in libwebrtc's send-side estimator: it
starts at START_BITRATE, so a new leg starts on the layer that fits that, and the leg is probed for at
once, for the highest layer its size allows (libwebrtc probes 3 and 6 times its start at once). Probes
are judged from the per-packet feedback (sfu/probe.py): one that held raises the estimate to its target,
and one that overfilled the link sets the estimate to UTILIZATION of the rate the link delivered; either
way the leg goes to the layer that fits at once (no UP_HOLD, not one layer at a time). Every probe is
PROBE_OVER over what the layer needs, so that a link barely under the layer's rate shows its queue within
the probe. Congestion is read from the feedback between probes (on the media when it is numbered, else
on a trickle of padding the subscriber keeps up, MONITOR_RATE): a queueing delay over TCC_CONGESTED and
growing (or over TCC_FULL and not draining), or TCC_LOSS_CAP lost, and the estimate becomes BACKOFF times
what the link delivers (libwebrtc's AIMD decrease). With only padding numbered a REMB fall still caps the
viewer too (not for REMB_GRACE after a failed probe: that is the probe's queue). REMB never raises a
transport-cc estimate: it rises whatever arrives.

Liveness: a layer that stopped delivering (sfu/liveness.py: the publisher's encoder dropped it, without
a word) is never chosen; a leg on it or waiting for it moves to the nearest one that delivers, lower
first (`deliverable`).

Hysteresis: a leg goes down at once (at most once per DOWN_HOLD), up one layer at a time once the
higher layer has fitted for UP_HOLD. Pure: the caller passes `now`; tests/test_sfu_simulcast.py drives it.
"""

from __future__ import annotations

import math
from typing import Iterable, Protocol

from sfu.liveness import usable
from sfu.probe import (UTILIZATION, FeedbackHistory, Probe, ProbeController, arrival_rate, min_queue,
                       queue_slope)
from sfu.quality import GOOD

UP_MARGIN = 1.15     # a higher layer must fit 15% over its rate
UP_HOLD = 3.0        # s the higher layer must have fitted before the leg goes up
DOWN_HOLD = 1.0      # s between two steps down of one leg
LOSS_HOLD = 2.0      # s between two loss-driven steps down
CONGESTED = 0.9      # a REMB under 90% of what the viewer is sent ...
FELL = 0.97          # ... and 3% under the previous one: its link is full
PROBE_AFTER = 10.0   # s after the last congestion signal, the cap is lifted
PROBE_MAX = 60.0     # s, the longest wait after failed probes
PROBE_FAILS = 5.0    # s: congestion within this of lifting the cap means the probe failed
SIZE_SLACK = 0.9     # a layer at 90% of the rendered size counts as big enough
PROBE_SLACK = 1.1    # a probe that held lifts the cap 10% over its target
DRAIN = 0.8          # for DRAIN_FOR s after a congestion signal, layers must fit 80% of the estimate ...
DRAIN_FOR = 3.0      # ... so the queue built at the viewer's bottleneck drains (and the keyframe passes)
# transport-cc (the viewer's per-packet feedback)
START_BITRATE = 300_000  # bits/s, the estimate before any probe (libwebrtc's start bitrate)
START_PROBE = 1_200_000  # bits/s, the first probe at least (4 times the start; libwebrtc probes 3 and 6 times)
LAYER_STEP = 2.5     # with transport-cc, a layer counts as costing at least 2.5 times the one below
PROBE_OVER = 1.25    # a feedback probe sends this much over what the layer needs
TCC_CONGESTED = 0.05  # s of queueing delay (and growing) on media: the link is full
TCC_GROWING = 0.01   # s the queueing delay must have grown over TCC_TREND (or be over TCC_FULL)
TCC_FULL = 0.15
TCC_TREND = 0.3      # s
TCC_LOSS_CAP = 0.1   # lost share of the last TCC_LOSS_WINDOW s of packets: the link is full
TCC_LOSS_WINDOW = 1.0
TCC_HOLD = 1.0       # s between two congestion signals from feedback (the queue drains meanwhile)
HISTORY_WINDOW = 0.5  # s of arrivals whose rate a congestion signal backs off from
MIN_FILTER = 0.1     # s, the minimum filter over media's queueing delays
BACKOFF = 0.85       # the estimate after congestion, of the rate that arrived (libwebrtc's AIMD)
REMB_GRACE = 2.5     # s after a failed feedback probe, REMB's fall is that probe's queue (REMB lags it)
JUMP_FOR = 2.0       # s after a probe's verdict during which the leg may go to any layer that fits


class Leg(Protocol):
    """What the allocator reads and sets on a leg (sfu.downtrack.DownTrack with a LayerSwitcher)."""

    kind: str
    uptrack: object
    switcher: object
    quality: object
    retransmit: object

    def can_pad(self) -> bool: ...


class LayerAllocator:
    def __init__(self) -> None:
        self.estimate: float | None = None  # bits/s, the viewer's last REMB
        self.cap = math.inf  # bits/s the viewer's link carries, since the last congestion signal
        self._cap_at = -math.inf
        self._probe_after = PROBE_AFTER
        self._lifted_at = -math.inf
        self.congestion_events = 0
        self.sizes: dict[str, tuple[int, int]] = {}  # track id -> rendered (width, height), device pixels
        self._fits_since: dict[int, float] = {}  # id(leg) -> since when a higher layer has fitted
        self._last_down: dict[int, float] = {}
        self._last_loss_step: dict[int, float] = {}
        self.prober = ProbeController()
        self.probe_request: tuple[Leg, float, float] | None = None  # (leg, target, sent): start this probe
        self.speakers: list[str] = []  # participants, the active speaker first (sfu/speakers.py)
        self.remb: float | None = None  # the viewer's last REMB
        self._transport_cc = False
        self.history = FeedbackHistory()
        self._tcc_congested_at = -math.inf
        self._probe_over_at = -math.inf  # when the last probe ended (inf: one runs)
        self._remb_grace_until = -math.inf  # REMB's congestion signals are the last failed probe's queue until then
        self._feedback_seen = False
        self._sent = 0.0  # bits/s the last allocation sends the viewer
        self._jump: dict[int, float] = {}  # id(leg) -> when a probe's verdict let it go to any layer that fits
        self._start_probe = False  # the first feedback probe goes for the top layer the size allows
        self._probing: object | None = None  # the switcher whose `probing` layer is marked

    @property
    def transport_cc(self) -> bool:
        """The viewer sends transport-cc feedback (set on its first one, sfu/subscriber.py)."""
        return self._feedback_seen

    @transport_cc.setter
    def transport_cc(self, on: bool) -> None:
        self._feedback_seen = bool(on)
        self._feedback_mode(bool(on))

    @property
    def feedback_mode(self) -> bool:
        """The estimate is the allocator's own, from feedback (the viewer sends it, or its answer says it will)."""
        return self._transport_cc

    def expect_transport_cc(self) -> None:
        """The viewer's answer takes transport-cc: start low now, before any feedback (it only comes for
        numbered packets, a probe's padding); two probes without any go back to REMB."""
        self._feedback_mode(True)

    def _feedback_mode(self, on: bool) -> None:
        if on and not self._transport_cc:
            if self.cap == math.inf:
                self.cap = START_BITRATE  # start low; the first probe goes at once
                self._start_probe = True
            self.estimate = self.cap
            self.prober.feedback = True
        elif not on and self._transport_cc:
            self.prober.feedback = False
            self.estimate = self.remb
        self._transport_cc = on

    def on_estimate(self, bitrate: float, sent: float, now: float) -> bool:
        """A REMB of `bitrate` while the viewer is sent `sent` bits/s; True if it signals congestion."""
        previous, self.remb = self.remb, float(bitrate)
        bitrate = self.remb
        if self._transport_cc:
            if self.history.media:
                return False  # the media's own feedback tells congestion (on_transport_feedback)
            running = self.prober.probe
            if (running is not None and running.feedback) or now < self._remb_grace_until:
                return False  # the queue a feedback probe built (the probe's verdict says what it means)
            # Only padding is numbered: REMB still says when the link is full, but never raises the cap.
            if previous is not None and bitrate < FELL * previous and sent > 0 and bitrate < CONGESTED * sent:
                self._congested(min(self.cap, bitrate), now)
                return True
            return False
        self.estimate = bitrate
        # A REMB that fell, and fell below what is sent: the viewer's estimator saw delay build up. (One
        # below what is sent but still rising only lags a rate that just went up: a share started.)
        if previous is not None and bitrate < FELL * previous and sent > 0 and bitrate < CONGESTED * sent:
            self.congestion_events += 1
            if now - self._lifted_at < PROBE_FAILS:
                self._probe_after = min(PROBE_MAX, self._probe_after * 2)
            self.cap, self._cap_at = bitrate, now
            self.prober.on_congestion(now)
            return True
        if bitrate > self.cap:
            self.cap = bitrate
        return False

    def _congested(self, cap: float, now: float) -> None:
        """Transport-cc mode: the link is full; the estimate becomes `cap`."""
        self.congestion_events += 1
        self.cap, self._cap_at = cap, now
        self.estimate = self.cap
        self.prober.on_congestion(now)

    def on_transport_feedback(self, results: list, now: float) -> None:
        """PacketResults (sfu/twcc.py) of one transport-cc feedback from the viewer: judge a running
        probe, and on numbered media, congestion. The caller reallocates (`allocate`) after it."""
        if not results:
            return
        if not self._feedback_seen:
            self.transport_cc = True
        history = self.history
        history.add(results, now)
        prober = self.prober
        probe = prober.probe
        if probe is not None:
            self._probe_over_at = math.inf
            if probe.feedback:
                verdict = prober.on_feedback(history, now)
                if verdict is not None:
                    self.probe_verdict(probe, verdict == "held", now)
            return
        if self._probe_over_at == math.inf:
            self._probe_over_at = now  # (about when its padding stopped)
        if now - self._tcc_congested_at < TCC_HOLD:
            return
        # packets sent while a probe ran queued behind its padding: that queue is the probe's verdict
        since = max(now - HISTORY_WINDOW, self._probe_over_at)
        got = history.received(since)
        base = history.base
        count, lost = history.lost_share(max(now - TCC_LOSS_WINDOW, self._probe_over_at))
        full = None
        if count >= 10 and lost > TCC_LOSS_CAP:
            full = f"{lost:.0%} lost"
        elif base is not None and len(got) >= 5:
            queued = [(r.arrival, r.arrival - r.sent - base) for r in got]
            last = queued[-1][0]
            q_now = min_queue(queued, last - MIN_FILTER, last)
            q_before = min_queue(queued, last - TCC_TREND - MIN_FILTER, last - TCC_TREND)
            # growing, or long and not draining (a queue at its limit stops growing: it drops)
            if q_now > TCC_CONGESTED and q_before is not None and (
                    q_now - q_before > TCC_GROWING or (q_now > TCC_FULL and q_now >= q_before - 0.005)):
                full = f"queueing delay {q_now * 1000:.0f} ms"
        if full is None:
            return
        if history.media:
            rate = arrival_rate(got)
        else:
            # Only the padding's trickle is numbered: what the link delivers is what is sent (the last
            # allocation's layers) over 1 + the queue's growth.
            slope = queue_slope(got, base) if base is not None else None
            rate = self._sent / (1 + max(0.0, slope or 0.0)) if self._sent else None
        if rate is None or BACKOFF * rate >= self.cap:
            return
        self._tcc_congested_at = now
        self._congested(BACKOFF * rate, now)
        self.last_congestion = f"{full}, {rate / 1000:.0f} kbps arrived"

    def probe_verdict(self, probe: Probe, held: bool, now: float) -> None:
        """A feedback probe ended: held, the estimate rises to its target; failed with the rate the
        overfilled link delivered, the estimate is that (less UTILIZATION's margin). Either way the leg
        may go to the layer that fits at once."""
        self._start_probe = False
        if not held:
            self._remb_grace_until = now + REMB_GRACE
        if held:
            self.cap = max(self.cap, probe.target)
        elif probe.capacity is not None:
            # (no DRAIN: the probe's padding built the queue, and it stopped.) What was sent before the
            # probe went through without a queue: the estimate is never under it.
            self.cap = max(UTILIZATION * probe.capacity, probe.target - probe.padding)
        else:
            return
        self.estimate = self.cap
        self._jump[id(probe.key)] = now
        self._fits_since[id(probe.key)] = -math.inf

    def probe_held(self, leg: Leg, target: float) -> None:
        """The probe for `leg` held: the link carries `target`, and the leg steps up without UP_HOLD.
        (PROBE_SLACK: the layers' rates, sampled each second, moved since the target was set.)"""
        if self._transport_cc:
            return  # the feedback verdict raised the cap already (probe_verdict)
        self.cap = max(self.cap, target * PROBE_SLACK)
        self._fits_since[id(leg)] = -math.inf

    def budget(self, now: float, probing: bool = False) -> float:
        if probing or self._transport_cc:
            pass  # padding probes raise the cap; it is never lifted blind
        elif self.cap != math.inf and now - self._cap_at >= self._probe_after:
            self.cap, self._lifted_at = math.inf, now  # probe: let the legs step up
        elif self.cap == math.inf and now - self._lifted_at >= PROBE_FAILS + PROBE_AFTER:
            self._probe_after = PROBE_AFTER  # the last probe held
        return self.cap * DRAIN if now - self._cap_at < DRAIN_FOR else self.cap

    def set_size(self, track_id: str, width: int, height: int) -> None:
        self.sizes[track_id] = (max(0, int(width)), max(0, int(height)))

    def size_cap(self, leg: Leg) -> int:
        """The highest layer worth sending at the size the viewer renders the track."""
        layers = leg.uptrack.layers
        top = len(layers) - 1
        size = self.sizes.get(leg.uptrack.track_id)
        if size is None:
            return top
        width, height = size
        if width == 0 or height == 0:
            return 0  # not shown at all
        full = layers[-1].frame_size
        for i, layer in enumerate(layers):
            dims = layer.frame_size
            if dims is None and full is not None:
                dims = (full[0] >> (top - i), full[1] >> (top - i))
            if dims is None:
                return top
            if dims[0] >= width * SIZE_SLACK or dims[1] >= height * SIZE_SLACK:
                return i
        return top

    def allocate(self, legs: Iterable[Leg], now: float) -> dict[Leg, int]:
        """Choose each simulcast leg's layer; returns the legs whose target changed, with the new one."""
        legs = list(legs)
        if self._transport_cc and not self._feedback_seen and self.prober.failed >= 2:
            self._feedback_mode(False)  # two feedback probes and no feedback: the viewer sends none (REMB then)
        simulcast = sorted((leg for leg in legs if leg.switcher is not None), key=self.priority)
        probing = any(leg.can_pad() for leg in simulcast)
        budget = self.budget(now, probing)
        estimated = budget != math.inf
        spent = sum(8 * leg.retransmit.media_rate for leg in legs if leg.switcher is None)
        if estimated:
            budget -= spent
        changed: dict[Leg, int] = {}
        wants: tuple[Leg, float, int] | None = None  # the first leg the budget holds down, what it lacks, the layer
        running = self.prober.probe
        if self._probing is not None and (running is None or running.key.switcher is not self._probing):
            self._probing.probing = None  # dynacast: the probe for that layer is over
            self._probing = None
        for leg in simulcast:
            key = id(leg)
            layers = leg.uptrack.layers
            current = leg.switcher.target
            cap = self.size_cap(leg)
            # a layer paused by dynacast counts at the rate it had when it ran
            rates = [layer.bitrate() or getattr(layer, "known_bitrate", 0.0) for layer in layers]
            if self._transport_cc:
                # the publisher's layers ramp up for seconds from its start: a higher layer costs at least
                # LAYER_STEP times the one below, whatever it sends yet (else a ramping `h` fits anything)
                # (and one never measured here, as on a media worker the relay has not carried it to yet)
                for i in range(1, len(rates)):
                    if rates[i - 1] > 0:
                        rates[i] = max(rates[i], LAYER_STEP * rates[i - 1])
            choice = 0
            for i in range(cap + 1):
                rate = rates[i]
                if i <= current and (rate > 0 or i == 0 or not self._transport_cc):
                    need = rate  # unknown yet (no packets): a layer the leg has counts as fitting
                else:
                    need = rate * UP_MARGIN if rate > 0 else math.inf
                if need <= budget:
                    choice = i
            choice = self.deliverable(leg, choice, now)
            if leg.quality.level != GOOD and choice >= current > 0:
                if now - self._last_loss_step.get(key, -math.inf) >= LOSS_HOLD:
                    self._last_loss_step[key] = now
                    choice = current - 1
                else:
                    choice = min(choice, current)
            if choice > current and now - self._jump.get(key, -math.inf) < JUMP_FOR:
                self._jump.pop(key, None)  # a feedback probe measured the link: to the layer that fits
                self._fits_since.pop(key, None)
            elif choice > current and self._transport_cc and leg.can_pad():
                choice = current  # up only on a probe's verdict (the start estimate is no measurement)
            elif choice > current:
                since = self._fits_since.setdefault(key, now)
                if now - since < UP_HOLD:
                    choice = current
                else:
                    choice = current + 1  # one layer at a time
                    self._fits_since.pop(key, None)
            else:
                self._fits_since.pop(key, None)
            congested = False
            if choice < current:
                flowing = self.deliverable(leg, current, now) == current  # else not a step for the link
                if now - self._last_down.get(key, -math.inf) < DOWN_HOLD and choice < cap and flowing:
                    choice = current  # the estimate still lags the last step down
                else:
                    self._last_down[key] = now
                    congested = choice < cap and leg.quality.level == GOOD and flowing
            choice = self.deliverable(leg, choice, now)  # a hold above kept a layer that stopped
            if choice != current:
                # Down for the link: the current layer stops at its next frame, so that the target's
                # keyframe is not queued behind it.
                leg.switcher.select(choice, hold=congested)
                changed[leg] = choice
            elif (wants is None and estimated and probing and choice < cap and leg.quality.level == GOOD
                  and leg.switcher.current == current and rates[current + 1] > 0 and leg.can_pad()
                  and self.deliverable(leg, current + 1, now) == current + 1):
                up = current + 1
                if self._start_probe:  # the first feedback probe: the top layer the size allows
                    up = max(i for i in range(current + 1, cap + 1)
                             if rates[i] > 0 and self.deliverable(leg, i, now) == i)
                wants = (leg, rates[up] * UP_MARGIN - rates[current], up)
            if estimated:
                budget -= rates[choice]
            spent += rates[choice]
        self.probe_request = None
        self._sent = spent
        if wants is not None and self.prober.ready(now):
            lacks = wants[1] * PROBE_OVER + spent * (PROBE_OVER - 1) if self._transport_cc else wants[1]
            if self._start_probe:
                lacks = max(lacks, START_PROBE - spent)  # the link is unknown: enough to see its capacity
            self.probe_request = (wants[0], spent + lacks, spent)
            if self._probing is None:
                self._probing = wants[0].switcher
                self._probing.probing = wants[2]  # dynacast keeps the layer running
        return changed

    @staticmethod
    def deliverable(leg: Leg, choice: int, now: float) -> int:
        """`choice`, or when that layer stopped delivering, the nearest one that does (lower first). A
        layer without liveness counts as delivering; when none delivers (the publisher stopped sending
        altogether), `choice` stands."""
        layers = leg.uptrack.layers
        if usable(layers[choice], now):
            return choice
        for i in (*range(choice - 1, -1, -1), *range(choice + 1, len(layers))):
            if usable(layers[i], now):
                return i
        return choice

    def priority(self, leg: Leg) -> int:
        """The screen share first, then the active speaker's camera, then the other cameras."""
        if leg.uptrack.source == "screen":
            return 0
        return 1 if self.speakers and leg.uptrack.publisher_id == self.speakers[0] else 2

    def forget(self, leg: Leg) -> None:
        for table in (self._fits_since, self._last_down, self._last_loss_step, self._jump):
            table.pop(id(leg), None)
