"""Sequence-number and timestamp munging for one subscriber leg.

Offsets stay constant while the source stays the same, so gaps survive and NACKs map back to the
source. When the source switches, the offsets are recomputed on the new source's first keyframe so
that the subscriber sees one contiguous stream.
"""

from __future__ import annotations

import random

from sfu.seqnum import seq_diff, ts_diff


class Forwarder:
    __slots__ = (
        "clock_rate", "needs_keyframe", "started", "seq_offset", "ts_offset",
        "start_seq", "last_out_seq", "last_out_ts", "last_arrival", "_resync",
        "epoch", "_replay", "_replayed",
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
        # While a late leg replays the GOP cache: [keyframe ts, its out ts, speedup, last seq, last ts];
        # after it, the same for the replayed range.
        self._replay: list | None = None
        self._replayed: list | None = None

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
            self._replay = self._replayed = None
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

    def munge_replay(self, seq: int, ts: int, keyframe: bool, arrival: float,
                     speedup: float) -> tuple[int, int] | None:
        """Like munge, for packets replayed from the GOP cache `speedup` times faster than real time:
        sequence numbers keep the leg's offset, timestamps advance `speedup` times slower than the
        source's, so the subscriber's playout sees frames arriving at the rate they are stamped."""
        if not self.started:
            munged = self.munge(seq, ts, keyframe, arrival)
            if munged is not None:
                self._replay = [ts, munged[1], speedup, seq, ts]
            return munged
        replay = self._replay
        if replay is None:
            return self.munge(seq, ts, keyframe, arrival)
        if (seq - self.start_seq) & 0xFFFF >= 0x8000:
            return None
        out_seq = (seq + self.seq_offset) & 0xFFFF
        out_ts = _compressed(replay, ts)
        if 0 < (out_seq - self.last_out_seq) & 0xFFFF < 0x8000:
            self.last_out_seq, self.last_out_ts, self.last_arrival = out_seq, out_ts, arrival
            replay[3], replay[4] = seq, ts
        return out_seq, out_ts

    def end_replay(self) -> None:
        """Live from here: the next source frame follows the last replayed one at its real spacing."""
        replay = self._replay
        if replay is None:
            return
        self.ts_offset = (_compressed(replay, replay[4]) - replay[4]) & 0xFFFFFFFF
        self._replay = None
        self._replayed = replay  # retransmissions of replayed packets keep their timestamps

    def out_timestamp(self, seq: int, ts: int) -> int:
        """The timestamp a source packet was sent with on this leg (for retransmissions)."""
        for replay in (self._replay, self._replayed):
            if replay is not None and seq_diff(seq, replay[3]) <= 0 and seq_diff(seq, self.start_seq) >= 0:
                return _compressed(replay, ts)
        return (ts + self.ts_offset) & 0xFFFFFFFF

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


def _compressed(replay: list, ts: int) -> int:
    return (replay[1] + int(ts_diff(ts, replay[0]) / replay[2])) & 0xFFFFFFFF
