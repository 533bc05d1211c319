"""The per-viewer retransmission policy, quality judgement and pacer, on an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from sfu import pacer as pacing, quality as q, retransmit as rt
from sfu.pacer import Pacer
from sfu.quality import BAD, GOOD, POOR, ViewerQuality
from sfu.retransmit import SEND, RetransmitPolicy
from shared.ratelimit import TokenBucket

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)

T0 = 1_700_000_000.0
MEDIA_RATE = 187_500  # 1.5 Mbps in bytes/s


def policy_at(rate: float = MEDIA_RATE, rtt: float | None = 0.05) -> RetransmitPolicy:
    policy = RetransmitPolicy(T0)
    policy.rtt = rtt
    policy.observe_media(int(rate * rt.RATE_WINDOW), T0 + rt.RATE_WINDOW)
    return policy


def test_token_bucket_spends_refills_and_caps():
    bucket = TokenBucket(rate=1000, depth=500, now=T0)
    assert bucket.take(500, T0) and not bucket.take(1, T0)
    assert not bucket.take(300, T0 + 0.2)    # 200 tokens back
    assert bucket.take(290, T0 + 0.3)        # ~300
    assert bucket.tokens == pytest.approx(10, abs=0.01)
    bucket.refill(T0 + 100)
    assert bucket.tokens == 500              # never above the depth
    bucket.refill(T0 + 50)                   # a clock going back adds nothing
    assert bucket.tokens == 500


def test_try_limit_and_interval_between_tries():
    policy = policy_at(rtt=0.02)             # interval = 2 RTT = 40 ms
    now = T0 + 2
    assert policy.decide(7, 1200, now, now) == SEND
    assert policy.decide(7, 1200, now, now + 0.01) == "too_soon"
    assert policy.decide(7, 1200, now, now + 0.05) == SEND
    assert policy.decide(7, 1200, now, now + 0.10) == SEND
    assert policy.decide(7, 1200, now, now + 0.15) == "tries"   # MAX_TRIES = 3
    assert policy.sent == 3 and policy.refused["tries"] == 1 and policy.refused["too_soon"] == 1
    assert policy.new_losses == 1


def test_interval_follows_rtt_within_bounds():
    assert policy_at(rtt=None).interval() == rt.MAX_INTERVAL     # default RTT 100 ms -> capped 100 ms
    assert policy_at(rtt=0.0005).interval() == rt.MIN_INTERVAL
    assert policy_at(rtt=0.03).interval() == pytest.approx(0.06)


def test_age_limit_is_one_rtt_plus_margin():
    policy = policy_at(rtt=0.1)               # max age 0.1 + 0.3 = 0.4 s
    now = T0 + 5
    assert policy.max_age() == pytest.approx(0.4)
    assert policy.decide(1, 1200, now - 0.39, now) == SEND
    assert policy.decide(2, 1200, now - 0.41, now) == "too_old"
    policy.rtt = 2.0                           # a huge RTT is capped
    assert policy.max_age() == rt.MAX_AGE
    assert policy.decide(3, 1200, now - 1.01, now) == "too_old"


def test_budget_is_a_share_of_the_media_rate():
    policy = policy_at()
    budget = rt.BUDGET_SHARE * MEDIA_RATE     # bytes/s
    assert policy.bucket.rate == pytest.approx(budget)
    now = T0 + 1
    sent = 0
    # A NACK storm over 3 s: every packet NACKed every 10 ms, all of them young.
    for step in range(300):
        t = now + step * 0.01
        for seq in range(step * 20, step * 20 + 20):
            if policy.decide(seq, 1200, t, t) == SEND:
                sent += 1200
    elapsed = 3.0
    assert sent <= budget * elapsed + max(rt.MIN_BUDGET_DEPTH, budget * rt.BUDGET_DEPTH) + 1200
    assert sent >= budget * elapsed * 0.9, "the budget is used, not wasted"
    assert policy.refused["budget"] > 0


def test_budget_follows_a_changing_media_rate_and_keeps_a_floor():
    policy = policy_at(rate=MEDIA_RATE)
    policy.observe_media(int(MEDIA_RATE * rt.RATE_WINDOW) + 100, T0 + 2 * rt.RATE_WINDOW)  # media stopped
    assert policy.media_rate == pytest.approx(100 / rt.RATE_WINDOW)
    assert policy.bucket.rate == rt.MIN_BUDGET_RATE
    policy.observe_media(10**9, T0 + 2.5 * rt.RATE_WINDOW)  # within the window: ignored
    assert policy.bucket.rate == rt.MIN_BUDGET_RATE


def test_suspended_viewer_gets_no_retransmission():
    policy = policy_at()
    policy.suspended = True
    assert policy.decide(5, 1200, T0 + 2, T0 + 2) == "suspended"
    assert policy.sent == 0


def test_try_table_stays_bounded():
    policy = policy_at()
    for seq in range(5000):
        t = T0 + 2 + seq * 0.01
        policy.decide(seq, 10, t, t)
    assert len(policy._tries) <= rt._PRUNE_ABOVE + 1 + int(2 * rt.MAX_AGE / 0.01) + 1


# -- viewer quality --------------------------------------------------------------------------

def windows(quality: ViewerQuality, n: int, *, sent_per_window: int, nacked_per_window: int,
            report_loss: float | None = None, rtt: float | None = 0.02, start: int = 1):
    changes = []
    for i in range(start, start + n):
        if report_loss is not None:
            quality.on_report(report_loss, rtt)
        change = quality.evaluate(sent_per_window * i, nacked_per_window * i, T0 + i * q.WINDOW)
        if change is not None:
            changes.append(change)
    return changes


def test_classify_thresholds():
    assert q.classify(0.0, 0.01) == GOOD
    assert q.classify(0.06, None) == POOR
    assert q.classify(0.0, 0.5) == POOR
    assert q.classify(0.3, 0.01) == BAD
    assert q.classify(0.0, 1.5) == BAD


def test_quality_worsens_after_two_windows_and_improves_after_three():
    quality = ViewerQuality(T0)
    assert windows(quality, 1, sent_per_window=200, nacked_per_window=0, report_loss=0.8) == []
    changes = windows(quality, 1, sent_per_window=200, nacked_per_window=0, report_loss=0.8, start=2)
    assert [(c.previous, c.quality) for c in changes] == [(GOOD, BAD)]
    assert changes[0].loss == pytest.approx(0.8)
    # Back to clean reports: three windows later it is good again.
    clean = windows(quality, 3, sent_per_window=200, nacked_per_window=0, report_loss=0.0, start=3)
    assert [(c.previous, c.quality) for c in clean] == [(BAD, GOOD)]


def test_nack_share_counts_as_loss_without_reports():
    quality = ViewerQuality(T0)
    changes = []
    sent = nacked = 0
    for i in range(1, 4):
        sent += 200
        nacked += 20  # 10% NACKed, repaired: the receiver reports no loss
        quality.on_report(0.0, 0.01)
        change = quality.evaluate(sent, nacked, T0 + i)
        if change:
            changes.append(change)
    assert [c.quality for c in changes] == [POOR]
    assert quality.loss == pytest.approx(0.1)


def test_one_bad_window_does_not_flap():
    quality = ViewerQuality(T0)
    windows(quality, 1, sent_per_window=200, nacked_per_window=0, report_loss=0.9)
    assert windows(quality, 3, sent_per_window=200, nacked_per_window=0, report_loss=0.0, start=2) == []
    assert quality.level == GOOD


def test_a_window_closes_only_after_its_length():
    quality = ViewerQuality(T0)
    quality.on_report(0.9, None)
    assert quality.evaluate(100, 0, T0 + q.WINDOW / 2) is None
    assert quality.loss == 0.0


def test_keyframes_for_a_bad_viewer_are_bounded():
    quality = ViewerQuality(T0)
    due = [quality.keyframe_due(T0 + t * 0.5) for t in range(20)]  # asked every 0.5 s for 10 s
    assert sum(due) == 4 and due[0]


# -- pacer -----------------------------------------------------------------------------------

class FakeClock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_pacer_passes_ordinary_packets_and_paces_a_burst():
    clock = FakeClock(T0)
    sent: list[tuple[float, bytes]] = []
    pacer = Pacer(lambda data: sent.append((clock.t, data)) or True, clock=clock)
    pacer.set_media_rate(MEDIA_RATE)
    rate = pacing.PACING_FACTOR * MEDIA_RATE
    assert pacer.rate == rate and pacer.depth == max(pacing.MIN_BURST, rate * pacing.BURST)
    packet = bytes(1200)
    # A 60-packet keyframe arrives at once.
    for i in range(60):
        pacer.send(packet[:-1] + bytes([i]), clock.t)
    immediate = len(sent)
    assert immediate == int(pacer.depth // 1200)
    assert pacer.backlog == 60 - immediate and pacer.bursts == 1
    # A retransmission waits ahead of the queued media.
    pacer.send(b"rtx" + bytes(1197), clock.t, rtx=True)
    while pacer.backlog:
        clock.t += pacing.STEP
        pacer.drain()
    assert sent[immediate][1].startswith(b"rtx")
    assert [d[-1] for _, d in sent if not d.startswith(b"rtx")] == list(range(60)), "order kept"
    spread = sent[-1][0] - sent[immediate][0]
    queued_bytes = 1200 * (61 - immediate)
    # Paced at the pacing rate (within a step), not in one burst, and never beyond MAX_DELAY.
    assert queued_bytes / rate - 2 * pacing.STEP <= spread <= pacing.MAX_DELAY
    pacer.close()


async def test_pacer_never_delays_a_long_queue_beyond_max_delay():
    clock = FakeClock(T0)
    sent: list[float] = []
    pacer = Pacer(lambda data: sent.append(clock.t) or True, clock=clock)
    pacer.set_media_rate(10_000)  # the estimate is far below what arrives (a screen-share keyframe)
    for _ in range(400):
        pacer.send(bytes(1200), clock.t)
    while pacer.backlog:
        clock.t += pacing.STEP
        pacer.drain()
    assert len(sent) == 400
    assert sent[-1] - T0 <= pacing.MAX_DELAY + 2 * pacing.STEP
    pacer.close()


async def test_pacer_drains_on_its_own_timer():
    sent = []
    pacer = Pacer(lambda data: sent.append(data) or True)
    pacer.set_media_rate(MEDIA_RATE)
    for _ in range(40):
        pacer.send(bytes(1200), pacer._clock())
    assert pacer.backlog

    async def drained():
        while pacer.backlog:
            await asyncio.sleep(0.005)
    await asyncio.wait_for(drained(), 5)
    assert len(sent) == 40
    pacer.close()
