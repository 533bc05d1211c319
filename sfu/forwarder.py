"""Sequence-number and timestamp munging for one subscriber leg.

Offsets stay constant while the source stays the same, so gaps survive and NACKs map back to the
source. When the source switches, the offsets are recomputed on the new source's first keyframe so
that the subscriber sees one contiguous stream.
"""

from __future__ import annotations

import random

from sfu.rtp import seq_diff


class Forwarder:
    __slots__ = (
        "clock_rate", "needs_keyframe", "started", "seq_offset", "ts_offset",
        "start_seq", "last_out_seq", "last_out_ts", "last_arrival", "_resync",
        "epoch",
    )

    def __init__(self, clock_rate: int, *, video: bool, initial_seq: int | None = None,
                 initial_ts: int | None = None):
        self.clock_rate = clock_rate
        self.needs_keyframe = video
        self.started = False
        self.seq_offset = 0
        self.ts_offset = 0
        self.start_seq = 0
        self.last_out_seq = (random.getrandbits(16) if initial_seq is None else initial_seq) - 1 & 0xFFFF
        self.last_out_ts = random.getrandbits(32) if initial_ts is None else initial_ts
        self.last_arrival = 0.0
        self._resync = False
        self.epoch = 0  # bumps on every (re)start; NACKs only map within the current epoch

    def switch_source(self) -> None:
        """The next packets come from another source: wait for its keyframe, then continue."""
        self.started = False
        self._resync = True

    def munge(self, seq: int, ts: int, keyframe: bool, arrival: float) -> tuple[int, int] | None:
        """Map a source (seq, ts) to the leg's (seq, ts); None drops the packet."""
        if not self.started:
            if self.needs_keyframe and not keyframe:
                return None
            if self._resync or self.last_arrival:
                gap = max(1, int((arrival - self.last_arrival) * self.clock_rate)) if self.last_arrival else 1
                out_ts = (self.last_out_ts + gap) & 0xFFFFFFFF
            else:
                out_ts = self.last_out_ts
            out_seq = (self.last_out_seq + 1) & 0xFFFF
            self.seq_offset = (out_seq - seq) & 0xFFFF
            self.ts_offset = (out_ts - ts) & 0xFFFFFFFF
            self.start_seq = seq
            self.started = True
            self._resync = False
            self.epoch += 1
        elif (seq - self.start_seq) & 0xFFFF >= 0x8000:
            return None  # older than where this leg started
        out_seq = (seq + self.seq_offset) & 0xFFFF
        out_ts = (ts + self.ts_offset) & 0xFFFFFFFF
        if 0 < (out_seq - self.last_out_seq) & 0xFFFF < 0x8000:
            self.last_out_seq = out_seq
            self.last_out_ts = out_ts
            self.last_arrival = arrival
        return out_seq, out_ts

    def source_seq(self, out_seq: int) -> int | None:
        """The source sequence number behind an outgoing one (for NACK), if it belongs to this epoch."""
        if not self.started:
            return None
        seq = (out_seq - self.seq_offset) & 0xFFFF
        if seq_diff(seq, self.start_seq) < 0 or seq_diff(out_seq, self.last_out_seq) > 0:
            return None
        return seq

    def source_ts(self, out_ts: int) -> int:
        return (out_ts - self.ts_offset) & 0xFFFFFFFF
