"""Overload control for one process's event loop: measure how far the loop is behind, shed the least
important media work first, and refuse new joins while the process is at capacity.

One `LoadMonitor` runs per process that forwards media (the single-process server, or each media
worker). Everything here is per process and reads nothing but the loop's own clock and CPU time.

What keeps connections alive is never shed: STUN (answered in the datagram callback, before any queued
media), consent (see `aiortc_seam.harden_consent`), DTLS and RTCP. What is shed, in order:
  1. retransmissions for subscribers' NACKs;
  2. video to a growing share of the video legs, newest legs first (audio is never shed);
and while the loop is behind or the process is busier than `refuse_busy`, new joins are refused with
"this server is at capacity". Everything comes back by itself when the lag clears.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

logger = logging.getLogger(__name__)

AT_CAPACITY = "this server is at capacity"


@dataclass
class OverloadPolicy:
    interval: float = 0.05        # lag probe period (s)
    # Viewers' jitter buffers absorb ~100 ms; ICE consent (hardened) survives seconds; a loop that stays
    # 200 ms behind delays everything, so shed; 100 ms behind, take no one new.
    shed_lag: float = 0.20        # smoothed lag above which work is shed (s)
    refuse_lag: float = 0.10      # smoothed lag above which new joins are refused (s)
    clear_lag: float = 0.05       # smoothed lag below which shedding steps back (s)
    refuse_busy: float = 0.90     # loop-thread CPU s/s (one loop uses one core at most) above which joins are refused
    smoothing: float = 1.0        # time constant of the lag average (s): one slow callback is not overload
    step_up: float = 2.0          # seconds between two escalations while behind (shedding acts within ~1 s)
    step_down: float = 1.5        # seconds between two de-escalations once clear (each halves the level)
    video_share_step: float = 0.10  # share of video legs paused per level above 1
    max_video_share: float = 0.9
    max_legs: int = 0             # static capacity: forwarding legs of this process (0: none)
    react: bool = True            # False: measure and export only; no shedding, no lag-based refusal
    trim_interval: float = 10.0   # at most this often, give freed heap back to the kernel once connections closed


class LoadMonitor:
    """Lag probe, shedding level and admission for this process. `legs()` returns the live video legs
    (DownTracks), oldest first; the monitor pauses and resumes them."""

    def __init__(self, policy: OverloadPolicy | None = None, *, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.thread_time):
        self.policy = policy or OverloadPolicy()
        self.clock, self.cpu = clock, cpu
        self.legs: Callable[[], Iterable] = lambda: ()
        self.leg_count: Callable[[], int] = lambda: 0
        self.peer_count: Callable[[], int] = lambda: 0
        self._peers_peak = 0
        self._trimmed_at = 0.0
        self.memory_trims = 0
        self.lag = 0.0              # smoothed (EWMA over ~1 s)
        self.lag_max = 0.0          # worst single probe in the current or last episode
        self.busy = 0.0             # CPU s/s of the loop's thread over the last second
        self.level = 0              # 0 normal, 1 no retransmits, >= 2 video shed on a share of legs
        self.paused: list = []
        self._task: asyncio.Task | None = None
        self.background: set[asyncio.Task] = set()  # debug burns, held until done
        self._changed = 0.0
        self._episode: dict | None = None
        # counters (only grow)
        self.lag_seconds_total = 0.0
        self.episodes_total = 0
        self.shed_retransmits = 0
        self.shed_video_packets = 0
        self.joins_refused = 0
        self.refusing = False

    # -- hot-path questions ------------------------------------------------------------------

    @property
    def shedding_retransmits(self) -> bool:
        return self.level >= 1

    def admit(self) -> str | None:
        """None if a new participant may join this process, else the reason (a refusal is counted)."""
        reason = self.refusal()
        if reason is not None:
            self.refuse(reason)
        return reason

    def refuse(self, reason: str) -> None:
        """Count a refused join (this process's, or its media workers' when they all refuse)."""
        self.joins_refused += 1
        self._note_refusal(reason)

    def refusal(self) -> str | None:
        """Why a new participant would be refused now (None: it would be admitted); counts nothing."""
        p = self.policy
        reason = None
        if p.max_legs and self.leg_count() >= p.max_legs:
            reason = f"{AT_CAPACITY} ({self.leg_count()} forwarding legs, the configured capacity is {p.max_legs})"
        elif not p.react:
            pass
        elif self.level >= 1 or self.lag > p.refuse_lag:
            reason = f"{AT_CAPACITY} (media is {self.lag * 1000:.0f} ms behind)"
        elif self.busy > p.refuse_busy:
            reason = f"{AT_CAPACITY} (the media process is {self.busy * 100:.0f}% busy)"
        return reason

    # -- the probe ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for leg in self.paused:
            leg.resume()
        self.paused.clear()

    async def _run(self) -> None:
        p = self.policy
        cpu0, wall0 = self.cpu(), self.clock()
        while True:
            t = self.clock()
            await asyncio.sleep(p.interval)
            now = self.clock()
            self.observe(max(0.0, now - t - p.interval), now, now - t)
            if now - wall0 >= 1.0:
                cpu1 = self.cpu()
                self.busy = (cpu1 - cpu0) / (now - wall0)
                cpu0, wall0 = cpu1, now
                self._maybe_trim(now)

    def _maybe_trim(self, now: float) -> None:
        """After connections closed, hand glibc's freed pages back: without it, RSS after viewers churned
        stays ~12% above what the same room needed after its first cycle, all of it free heap."""
        peers = self.peer_count()
        self._peers_peak = max(self._peers_peak, peers)
        if peers < self._peers_peak and now - self._trimmed_at >= self.policy.trim_interval:
            self._peers_peak, self._trimmed_at = peers, now
            if peers == 0:
                # Nothing is forwarded (a media worker whose viewers all left): a full collection's pause
                # harms no one, and the closed connections' reference cycles hold most of the freed heap.
                gc.collect()
            if release_memory():
                self.memory_trims += 1

    def observe(self, lag: float, now: float, dt: float | None = None) -> None:
        """One probe: `lag` is how late the loop ran a timer (s), `dt` the time the probe covered."""
        p = self.policy
        self.lag_seconds_total += lag
        dt = p.interval + lag if dt is None else dt
        self.lag += (lag - self.lag) * (1 - math.exp(-dt / p.smoothing))
        self.lag_max = max(self.lag_max, lag)
        if not p.react:
            return
        if self.lag > p.shed_lag and now - self._changed >= p.step_up:
            self._set_level(self.level + 1, now)
        elif self.lag < p.clear_lag and self.level > 0 and now - self._changed >= p.step_down:
            self._set_level(self.level // 2, now)  # resuming is cheap: one keyframe serves every leg
        elif self.level == 0 and self._episode is not None and self.lag < p.clear_lag and not self._recent_refusal(now):
            self._end_episode(now)

    # -- shedding ----------------------------------------------------------------------------

    def _set_level(self, level: int, now: float) -> None:
        p = self.policy
        self._changed = now
        level = min(level, 1 + math.ceil(p.max_video_share / p.video_share_step))
        if level > self.level and self._episode is None:
            self._begin_episode(now, f"media is {self.lag * 1000:.0f} ms behind")
        self.level = max(0, level)
        share = min(p.max_video_share, max(0, self.level - 1) * p.video_share_step)
        legs = list(self.legs())
        want = math.ceil(share * len(legs)) if share else 0
        # Newest legs first: they are the last admitted and have the least playback to lose.
        chosen = set(map(id, legs[len(legs) - want:])) if want else set()
        keep = []
        for leg in self.paused:
            if id(leg) in chosen:
                keep.append(leg)
            else:
                leg.resume()
        have = set(map(id, keep))
        for leg in legs:
            if id(leg) in chosen and id(leg) not in have:
                leg.pause()
                keep.append(leg)
        self.paused = keep
        if self._episode is not None:
            ep = self._episode
            ep["level_max"] = max(ep["level_max"], self.level)
            ep["paused_max"] = max(ep["paused_max"], len(keep))
        if self.level == 0 and self._episode is not None and self.lag < p.clear_lag:
            self._end_episode(now)

    def count_shed_video(self, packets: int = 1) -> None:
        self.shed_video_packets += packets

    def count_shed_retransmits(self, packets: int) -> None:
        self.shed_retransmits += packets

    # -- episodes: logged once at the start and once at the end, with figures -----------------

    def _begin_episode(self, now: float, why: str) -> None:
        self.episodes_total += 1
        self.lag_max = self.lag
        self._episode = {"start": now, "level_max": 0, "paused_max": 0, "refused": self.joins_refused,
                         "retx": self.shed_retransmits, "video": self.shed_video_packets, "last_refusal": 0.0}
        logger.warning("overload: %s (loop busy %.0f%%, %d video legs); shedding retransmits, then video to the "
                       "newest legs; refusing new joins", why, self.busy * 100, sum(1 for _ in self.legs()))

    def _note_refusal(self, reason: str) -> None:
        now = self.clock()
        if self._episode is None:
            self._begin_episode(now, reason)
        self._episode["last_refusal"] = now

    def _recent_refusal(self, now: float) -> bool:
        return self._episode is not None and now - self._episode["last_refusal"] < 2.0

    def _end_episode(self, now: float) -> None:
        ep, self._episode = self._episode, None
        logger.warning("overload over after %.1f s: worst lag %.0f ms, shed level up to %d (%d video legs paused "
                       "at most), %d retransmits and %d video packets shed, %d joins refused",
                       now - ep["start"], self.lag_max * 1000, ep["level_max"], ep["paused_max"],
                       self.shed_retransmits - ep["retx"], self.shed_video_packets - ep["video"],
                       self.joins_refused - ep["refused"])

    @property
    def in_episode(self) -> bool:
        return self._episode is not None

    def stats(self) -> dict:
        return {"lag": self.lag, "lag_max": self.lag_max, "busy": self.busy, "level": self.level,
                "paused_legs": len(self.paused), "episodes": self.episodes_total,
                "lag_seconds_total": self.lag_seconds_total, "shed_retransmits": self.shed_retransmits,
                "shed_video_packets": self.shed_video_packets, "joins_refused": self.joins_refused}


def release_memory() -> bool:
    """glibc's malloc_trim(0): return free heap pages to the kernel (a few ms). False where unavailable."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) or True)
    except (OSError, AttributeError):
        return False


def burn_loop(seconds: float, *, duty: float = 0.9, slice_s: float = 0.6) -> asyncio.Task:
    """Debug/test hook: keep this process's loop busy for `seconds`, blocking it `duty` of the time in
    slices of `slice_s` (what an overloaded forwarding loop looks like from the inside)."""
    async def run() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            block_until = time.monotonic() + slice_s
            while time.monotonic() < block_until:
                pass
            await asyncio.sleep(slice_s * (1 - duty) / duty)

    return asyncio.ensure_future(run())
