"""Transport-wide congestion control feedback, the receiver's half
(draft-holmer-rmcat-transport-wide-cc-extensions-01, section 3.1).

A browser numbers every RTP packet of a transport with the transport-wide sequence number extension;
the receiver reports when each arrived, and the browser's own estimator (GCC) turns delay and loss into
its send rate. `FeedbackRecorder` keeps (sequence number, arrival) pairs and turns them into feedback
packets; `build_feedback` is the wire format. Pure: bytes and ints, tested byte for byte
(tests/test_sfu_twcc.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Sequence

URI_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

RTCP_RTPFB = 205
FMT_TRANSPORT_CC = 15
DELTA_TICK_US = 250            # receive deltas count 250 µs
REFERENCE_TICK_US = 64_000     # the reference time counts 64 ms
NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA = 0, 1, 2
MAX_RUN_LENGTH = 0x1FFF
# Statuses per feedback packet: at worst 2 bytes of delta and 2/7 bytes of chunk each, ~1.2 kB.
MAX_STATUSES = 500
# A gap between two arrivals that a signed 16-bit delta of 250 µs (8.19 s) still holds, with margin.
MAX_GAP_US = 8_000_000
# A jump in sequence numbers larger than this is a restart, not 16k lost packets.
MAX_SEQ_JUMP = 0x4000

_HEAD = struct.Struct("!BBHIIHHI")


@dataclass(frozen=True, slots=True)
class PacketResult:
    """What one viewer's feedback says about one packet Stoa sent it (the sender half's output)."""
    seq: int                 # unwrapped transport-wide sequence number (monotonic, no 16-bit wrap)
    sent: float              # s, the server's time.monotonic() when the packet was sent
    size: int                # bytes of the RTP packet before SRTP
    arrival: float | None    # s, on the viewer's clock (feedback reference time + deltas); None: reported lost
    probe: bool              # True for probe padding


def encode_chunks(symbols: Sequence[int]) -> bytes:
    """Packet status chunks for `symbols`: a run-length chunk for runs of 14 or more (and for a uniform
    tail), else a one-bit vector of 14 when they are all received-small or not-received, else a
    two-bit vector of 7. Vector slots past the end are zero; the status count bounds them."""
    out = bytearray()
    n = len(symbols)
    i = 0
    while i < n:
        s = symbols[i]
        run = 1
        while i + run < n and symbols[i + run] == s and run < MAX_RUN_LENGTH:
            run += 1
        if run >= 14 or i + run == n:
            out += (s << 13 | run).to_bytes(2, "big")
            i += run
            continue
        window = symbols[i:i + 14]
        if max(window) <= SMALL_DELTA:
            word = 0x8000
            for k, sym in enumerate(window):
                word |= sym << (13 - k)
            i += len(window)
        else:
            word = 0xC000
            for k, sym in enumerate(symbols[i:i + 7]):
                word |= sym << (12 - 2 * k)
            i += min(7, n - i)
        out += word.to_bytes(2, "big")
    return bytes(out)


def build_feedback(sender_ssrc: int, media_ssrc: int, fb_count: int, base_seq: int,
                   arrivals: Sequence[int | None]) -> bytes:
    """One transport-cc feedback packet (RTPFB, FMT 15).

    `arrivals[i]` is the arrival time in µs of packet `base_seq + i`, or None if it has not arrived. At
    least one must have arrived, and consecutive arrivals must lie within ±8.19 s of each other
    (ValueError otherwise). The reference time is the first arrival, floored to 64 ms; each delta is
    measured from the previous arrival as the sender will reconstruct it, so rounding never adds up."""
    first = next((a for a in arrivals if a is not None), None)
    if first is None:
        raise ValueError("a feedback packet needs at least one received packet")
    if not 0 < len(arrivals) <= 0xFFFF:
        raise ValueError("packet status count out of range")
    reference = first // REFERENCE_TICK_US
    clock = reference * REFERENCE_TICK_US
    symbols = []
    deltas = bytearray()
    for arrival in arrivals:
        if arrival is None:
            symbols.append(NOT_RECEIVED)
            continue
        ticks = (arrival - clock) // DELTA_TICK_US
        clock += ticks * DELTA_TICK_US
        if 0 <= ticks <= 0xFF:
            symbols.append(SMALL_DELTA)
            deltas.append(ticks)
        elif -0x8000 <= ticks <= 0x7FFF:
            symbols.append(LARGE_DELTA)
            deltas += ticks.to_bytes(2, "big", signed=True)
        else:
            raise ValueError(f"arrival gap of {ticks * DELTA_TICK_US} µs does not fit a receive delta")
    body = encode_chunks(symbols) + bytes(deltas)
    padding = -len(body) % 4
    if padding:
        body += b"\x00" * (padding - 1) + bytes((padding,))
    length_words = (_HEAD.size + len(body)) // 4 - 1
    head = _HEAD.pack(0x80 | (0x20 if padding else 0) | FMT_TRANSPORT_CC, RTCP_RTPFB, length_words,
                      sender_ssrc, media_ssrc, base_seq & 0xFFFF, len(arrivals),
                      ((reference & 0xFFFFFF) << 8) | (fb_count & 0xFF))
    return head + body


class FeedbackRecorder:
    """Arrivals on one transport, reported once each, in sequence order.

    `add` is the per-packet part (two list appends); `feedback` runs on a timer. Sequence numbers are
    unwrapped to 64 bits; a packet that arrives after its number was reported is dropped, as are
    duplicates. Numbers between the last reported and the highest received that never came are
    reported lost."""

    __slots__ = ("sender_ssrc", "media_ssrc", "_seqs", "_times", "_next", "_highest", "_count")

    def __init__(self, sender_ssrc: int, media_ssrc: int = 0):
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = media_ssrc
        self._seqs: list[int] = []
        self._times: list[int] = []
        self._next: int | None = None      # first extended number not yet reported
        self._highest: int | None = None   # highest extended number seen
        self._count = 0                    # feedback packet count (8 bits on the wire)

    def add(self, seq: int, arrival_us: int) -> None:
        self._seqs.append(seq)
        self._times.append(arrival_us)

    def _unwrap(self, seq: int) -> int:
        highest = self._highest
        if highest is None:
            ext = seq
        else:
            ext = highest + (((seq - highest) + 0x8000) & 0xFFFF) - 0x8000
        if highest is None or ext > highest:
            self._highest = ext
        return ext

    def feedback(self) -> list[bytes]:
        """The feedback packets for everything added since the last call (none if nothing arrived)."""
        seqs, times = self._seqs, self._times
        if not seqs:
            return []
        self._seqs, self._times = [], []
        received: dict[int, int] = {}
        for seq, t in zip(seqs, times):
            received.setdefault(self._unwrap(seq), t)
        start = self._next
        if start is not None:
            fresh = {k: v for k, v in received.items() if k >= start}
            if not fresh and start - max(received) > MAX_SEQ_JUMP:
                start = None  # far behind what was reported: the sender started counting again
                self._highest = max(received)
            elif not fresh:
                return []
            else:
                received = fresh
        end = max(received)
        if start is None or end - start > MAX_SEQ_JUMP:
            start = min(received)
        packets = []
        while start <= end:
            arrivals: list[int | None] = []
            previous = None
            seq = start
            while seq <= end and len(arrivals) < MAX_STATUSES:
                t = received.get(seq)
                if t is not None:
                    if previous is not None and abs(t - previous) > MAX_GAP_US:
                        break
                    previous = t
                arrivals.append(t)
                seq += 1
            while arrivals and arrivals[-1] is None:  # never end a packet on "lost": the next may have it
                arrivals.pop()
                seq -= 1
            if arrivals:
                packets.append(build_feedback(self.sender_ssrc, self.media_ssrc, self._count, start, arrivals))
                self._count = (self._count + 1) & 0xFF
            if seq == start:  # only lost statuses before a long gap: skip them
                seq = min(k for k in received if k > start)
            start = seq
        self._next = end + 1
        return packets
