"""Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01,
section 3.1), both halves.

Receiver half (toward publishers): a browser numbers every RTP packet of a transport with the
transport-wide sequence number extension; the receiver reports when each arrived, and the browser's own
estimator (GCC) turns delay and loss into its send rate. `FeedbackRecorder` keeps (sequence number,
arrival) pairs and turns them into feedback packets; `build_feedback` is the wire format.

Sender half (toward viewers): Stoa numbers the packets it sends a viewer (`SendHistory`, one per viewer
transport), the viewer's browser reports their arrivals, `parse_feedback` reads the report and
`SendHistory.results` pairs it with what was sent (`PacketResult`, for sfu/allocator.py).

Pure: bytes and ints, tested byte for byte (tests/test_sfu_twcc.py).
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
REFERENCE_WRAP = 1 << 24       # the reference time is 24 bits


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


# --- the sender half ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TransportFeedback:
    """One parsed feedback packet. `deltas[i]` is the receive delta (250 µs ticks, from the previous
    received packet, the first from the reference time) of packet `base_seq + i`, None if not received."""
    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    reference_time: int            # signed, 64 ms ticks
    fb_count: int
    deltas: tuple[int | None, ...]

    def arrivals_us(self) -> list[int | None]:
        """Arrival of each packet in µs on the receiver's clock (reference time + cumulative deltas)."""
        clock = self.reference_time * REFERENCE_TICK_US
        out: list[int | None] = []
        for d in self.deltas:
            if d is None:
                out.append(None)
            else:
                clock += d * DELTA_TICK_US
                out.append(clock)
        return out


def parse_feedback(data: bytes) -> TransportFeedback:
    """Read one transport-cc feedback packet (RTPFB, FMT 15, the whole RTCP packet from its first byte);
    the inverse of build_feedback. ValueError names what is wrong."""
    if len(data) < _HEAD.size:
        raise ValueError(f"transport-cc feedback of {len(data)} bytes is shorter than its {_HEAD.size}-byte header")
    b0, pt, length_words, sender_ssrc, media_ssrc, base_seq, count, ref_fb = _HEAD.unpack_from(data)
    if b0 >> 6 != 2:
        raise ValueError("transport-cc feedback: RTCP version is not 2")
    if pt != RTCP_RTPFB or b0 & 0x1F != FMT_TRANSPORT_CC:
        raise ValueError(f"not transport-cc feedback: packet type {pt}, FMT {b0 & 0x1F}")
    end = (length_words + 1) * 4
    if end != len(data):
        raise ValueError(f"transport-cc feedback: length field says {end} bytes, packet has {len(data)}")
    if b0 & 0x20:
        pad = data[-1]
        if pad == 0 or end - pad < _HEAD.size:
            raise ValueError(f"transport-cc feedback: padding count {pad} is invalid")
        end -= pad
    if count == 0:
        raise ValueError("transport-cc feedback: packet status count is 0")
    reference = ref_fb >> 8
    if reference & 0x800000:
        reference -= REFERENCE_WRAP
    pos = _HEAD.size
    symbols: list[int] = []
    while len(symbols) < count:
        if pos + 2 > end:
            raise ValueError(f"transport-cc feedback: status chunks end after {len(symbols)} of {count} statuses")
        chunk = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if not chunk & 0x8000:                      # run length: T=0, symbol, 13-bit run
            symbols += [(chunk >> 13) & 3] * min(chunk & MAX_RUN_LENGTH, count - len(symbols))
        elif not chunk & 0x4000:                    # status vector of 14 one-bit symbols
            symbols += [(chunk >> (13 - k)) & 1 for k in range(14)]
        else:                                       # status vector of 7 two-bit symbols
            symbols += [(chunk >> (12 - 2 * k)) & 3 for k in range(7)]
    del symbols[count:]
    deltas: list[int | None] = []
    for i, symbol in enumerate(symbols):
        if symbol == NOT_RECEIVED:
            deltas.append(None)
        elif symbol == SMALL_DELTA:
            if pos + 1 > end:
                raise ValueError(f"transport-cc feedback: receive deltas end at status {i} of {count}")
            deltas.append(data[pos])
            pos += 1
        elif symbol == LARGE_DELTA:
            if pos + 2 > end:
                raise ValueError(f"transport-cc feedback: receive deltas end at status {i} of {count}")
            deltas.append(int.from_bytes(data[pos:pos + 2], "big", signed=True))
            pos += 2
        else:
            raise ValueError(f"transport-cc feedback: reserved status symbol 3 at status {i}")
    return TransportFeedback(sender_ssrc, media_ssrc, base_seq, reference, ref_fb & 0xFF, tuple(deltas))


# What SendHistory keeps: enough for the feedback a browser sends every 50-250 ms, with margin.
HISTORY_PACKETS = 4096
HISTORY_SECONDS = 5.0
_UNREPORTED, _LOST, _RECEIVED = 0, 1, 2


class SendHistory:
    """The packets sent to one viewer transport (all its legs: BUNDLE), numbered with the transport-wide
    sequence number, and what the viewer's feedback says of them.

    `sent` is the per-packet part: it assigns the next number (unwrapped here, 16 bits on the wire) and
    stores (send time, size, probe) in a ring of HISTORY_PACKETS. `results` turns a parsed feedback into
    PacketResults: numbers no longer (or never) in the ring, or sent over HISTORY_SECONDS before the
    feedback, are ignored, as are repeated reports; a packet reported lost and later received gets a
    second result, with its arrival. Arrivals are in seconds on the viewer's clock: the reference time
    (unwrapped across feedback packets) plus the cumulative deltas."""

    __slots__ = ("_next", "_sent", "_size", "_probe", "_state", "_seq", "_reference", "_reference_base",
                 "capacity", "max_age", "unknown", "feedbacks")

    def __init__(self, capacity: int = HISTORY_PACKETS, max_age: float = HISTORY_SECONDS):
        self.capacity = capacity
        self.max_age = max_age
        self._next = 0                       # the next unwrapped number
        self._sent = [0.0] * capacity
        self._size = [0] * capacity
        self._probe = [False] * capacity
        self._state = [_UNREPORTED] * capacity
        self._seq = [-1] * capacity          # which unwrapped number a slot holds
        self._reference: int | None = None   # the last feedback's reference time (24-bit signed)
        self._reference_base = 0             # its unwrapped value
        self.unknown = 0                     # statuses ignored: not in the ring
        self.feedbacks = 0

    def sent(self, size: int, probe: bool, now: float) -> int:
        """Record a packet sent at `now` (time.monotonic()); returns its 16-bit wire number."""
        seq = self._next
        self._next = seq + 1
        i = seq % self.capacity
        self._seq[i] = seq
        self._sent[i] = now
        self._size[i] = size
        self._probe[i] = probe
        self._state[i] = _UNREPORTED
        return seq & 0xFFFF

    @property
    def packets_sent(self) -> int:
        return self._next

    def _unwrap_reference(self, reference: int) -> int:
        last = self._reference
        if last is None:
            self._reference_base = reference
        else:
            step = ((reference - last + (REFERENCE_WRAP >> 1)) % REFERENCE_WRAP) - (REFERENCE_WRAP >> 1)
            self._reference_base += step
        self._reference = reference
        return self._reference_base

    def results(self, feedback: TransportFeedback, now: float) -> list[PacketResult]:
        highest = self._next - 1
        if highest < 0:
            self.unknown += len(feedback.deltas)
            return []
        self.feedbacks += 1
        # The base number closest to the highest sent (a report is never far ahead of what was sent).
        seq = highest + ((feedback.base_seq - highest + 0x8000) & 0xFFFF) - 0x8000
        clock = self._unwrap_reference(feedback.reference_time) * REFERENCE_TICK_US
        oldest = now - self.max_age
        capacity = self.capacity
        out: list[PacketResult] = []
        for delta in feedback.deltas:
            if delta is not None:
                clock += delta * DELTA_TICK_US
            i = seq % capacity
            if seq < 0 or seq > highest or self._seq[i] != seq or self._sent[i] < oldest:
                self.unknown += 1
            else:
                state = self._state[i]
                if delta is not None and state != _RECEIVED:
                    self._state[i] = _RECEIVED
                    out.append(PacketResult(seq, self._sent[i], self._size[i], clock / 1e6, self._probe[i]))
                elif delta is None and state == _UNREPORTED:
                    self._state[i] = _LOST
                    out.append(PacketResult(seq, self._sent[i], self._size[i], None, self._probe[i]))
            seq += 1
        return out


def split_transport_feedback(data: bytes) -> tuple[list[bytes], bytes]:
    """The transport-cc feedback packets of a compound RTCP packet, and the compound without them (what
    aiortc gets: it reads FMT 15 as a NACK, and one whose padding is stripped fails its length check,
    which drops the whole compound). A malformed compound comes back whole, with no feedback."""
    found: list[bytes] = []
    rest: list[bytes] = []
    pos, n = 0, len(data)
    while pos < n:
        if pos + 4 > n or data[pos] >> 6 != 2:
            return [], data
        end = pos + ((data[pos + 2] << 8 | data[pos + 3]) + 1) * 4
        if end > n:
            return [], data
        packet = data[pos:end]
        if data[pos + 1] == RTCP_RTPFB and data[pos] & 0x1F == FMT_TRANSPORT_CC:
            found.append(packet)
        else:
            rest.append(packet)
        pos = end
    return found, (data if not found else b"".join(rest))
