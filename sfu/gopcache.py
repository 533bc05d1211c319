"""GOP cache: the packets of one video track since its last keyframe, so a subscriber who joins late
starts from that keyframe at once instead of waiting for the encoder's next one (OBS ignores PLI).

Bounded in time and bytes: a GOP longer than GOP_MAX_SECONDS or larger than GOP_MAX_BYTES is given
up (the cache stays empty until the next keyframe), and a late subscriber then waits for a keyframe
as before. The packets are the ones the PacketCache holds too; nothing is copied.
"""

from __future__ import annotations

import logging

from sfu.buffer import CachedPacket

logger = logging.getLogger(__name__)

# OBS's default keyframe interval is 250 frames (8.3 s at 30 fps); 10 s covers it at 25 fps.
GOP_MAX_SECONDS = 10.0
# 10 s at 6 Mbps: far above a classroom camera or screen share.
GOP_MAX_BYTES = 8 * 1024 * 1024
# A late subscriber gets the cached GOP this many times faster than real time (its timestamps are
# compressed to match), so it catches up with live after a third of the GOP's age.
GOP_REPLAY_SPEEDUP = 4.0


class GopCache:
    __slots__ = ("packets", "bytes", "max_seconds", "max_bytes", "overflows", "_start_ts", "_logged")

    def __init__(self, max_seconds: float = GOP_MAX_SECONDS, max_bytes: int = GOP_MAX_BYTES):
        # The packets since the first packet of the last keyframe, in arrival order; None while no
        # complete GOP is held. A new keyframe starts a new list (a replay holding the old one
        # finishes it, then continues with the new one).
        self.packets: list[CachedPacket] | None = None
        self.bytes = 0
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.overflows = 0
        self._start_ts: int | None = None
        self._logged = False

    def add(self, packet: CachedPacket) -> None:
        packets = self.packets
        if packet.keyframe and (packets is None or packet.timestamp != self._start_ts):
            # The first packet of a new keyframe (an SPS, then the IDR's first fragment, share one timestamp).
            self.packets = [packet]
            self.bytes = len(packet.payload)
            self._start_ts = packet.timestamp
            self._logged = False
            return
        if packets is None:
            return
        packets.append(packet)
        self.bytes += len(packet.payload)
        if self.bytes > self.max_bytes or packet.arrival - packets[0].arrival > self.max_seconds:
            self.overflows += 1
            if not self._logged:
                self._logged = True
                logger.warning("GOP over %.0f s or %d bytes (%d bytes in %.1f s): late subscribers wait for "
                               "the next keyframe; set the encoder's keyframe interval to 1-2 s",
                               self.max_seconds, self.max_bytes, self.bytes, packet.arrival - packets[0].arrival)
            self.packets = None
            self.bytes = 0
            self._start_ts = None

    def clear(self) -> None:
        self.packets = None
        self.bytes = 0
        self._start_ts = None
