"""One subscriber leg of a simulcast track: which layer it forwards, and the switch to another.

The leg is fed by one layer's UpTrack at a time, through a `_LayerTap` in that layer's fan-out list, so a
leg costs one call per packet of its own layer only. To switch, a second tap goes into the target layer's
list; it drops packets until the first packet of a keyframe of that layer, and there the leg changes
over in one step: the old tap leaves the old layer, the forwarder restarts (sequence number last + 1,
timestamp last + the wall-clock gap: the layers have their own bases), and the VP8 picture id and
TL0PICIDX continue by one (they have their own bases too, and a decoder that sees them jump treats the
frames in between as lost). Nothing is decoded; the payload descriptor is rewritten in place, keeping
its length (LiveKit's VP8 munger does the same).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sfu.buffer import CachedPacket
from sfu.rtp import vp8_picture_ids, vp8_rewrite_picture_ids

if TYPE_CHECKING:
    from sfu.downtrack import DownTrack
    from sfu.uptrack import UpTrack

logger = logging.getLogger(__name__)

HOLD_AFTER_FRAME, HOLDING = 1, 2  # LayerSwitcher.holding: stop after this frame; stopped
BURST_PACING = 0.5  # s a leg's media is paced after a switch up: the target layer's keyframe


class _LayerTap:
    """The leg's entry in one layer's fan-out list."""

    __slots__ = ("switcher", "index", "subscriber_id")

    def __init__(self, switcher: "LayerSwitcher", index: int):
        self.switcher = switcher
        self.index = index
        self.subscriber_id = switcher.leg.subscriber_id

    def forward(self, packet: CachedPacket, ntp: int, send_time: bytes, tails: dict) -> None:
        switcher = self.switcher
        if self.index != switcher.current:
            if not packet.keyframe:
                return
            switcher.switched(self.index)
        elif switcher.holding:
            if switcher.holding == HOLDING:
                return
            if packet.marker:
                switcher.holding = HOLDING  # the frame is complete: the next ones wait for the target
        switcher.send(packet, ntp, send_time, tails)

    @property
    def leg(self):
        return self.switcher.leg

    def detach(self, uptrack=None) -> None:
        self.switcher.leg.detach()


class LayerSwitcher:
    __slots__ = ("leg", "track", "current", "target", "_taps", "_vp8", "_pid", "_tl0", "_offsets",
                 "switches", "holding", "probing")

    def __init__(self, leg: "DownTrack", track: "UpTrack", layer: int):
        self.leg = leg
        self.track = track
        self.current: int | None = None
        self.target = layer
        self._taps: dict[int, _LayerTap] = {}
        self._vp8 = track.mime_type.lower() == "video/vp8"
        self._pid: int | None = None  # last picture id and TL0PICIDX sent on the leg
        self._tl0 = 0
        self._offsets: tuple[int, int] | None = None  # (picture id, TL0PICIDX) added to the layer's; None: as is
        self.switches = 0
        self.holding = 0  # HOLD_AFTER_FRAME / HOLDING: the current layer is not forwarded until the switch
        self.probing: int | None = None  # the layer a probe is for (the allocator sets it): dynacast runs it
        self._add_tap(layer)
        leg.source = track.layers[layer]

    @property
    def layers(self) -> list["UpTrack"]:
        return self.track.layers

    def _add_tap(self, index: int) -> None:
        tap = self._taps.get(index)
        if tap is None:
            tap = self._taps[index] = _LayerTap(self, index)
            self.layers[index].add_downtrack(tap)
        else:
            self.layers[index].request_keyframe()

    def _remove_tap(self, index: int) -> None:
        tap = self._taps.pop(index, None)
        if tap is not None:
            self.layers[index].remove_downtrack(tap)

    def select(self, index: int, hold: bool = False) -> None:
        """Forward layer `index` from its next keyframe on (at once if the leg has not started). `hold`:
        stop forwarding the current layer after its current frame (the viewer's link is full, and the
        current layer would delay the target's keyframe)."""
        index = max(0, min(index, len(self.layers) - 1))
        if index == self.target:
            return
        self.holding = HOLD_AFTER_FRAME if hold and index != self.current and self.current is not None else 0
        previous, self.target = self.target, index
        if previous != self.current:
            self._remove_tap(previous)  # a switch that had not happened yet
        if index != self.current:
            self._add_tap(index)  # asks that layer for a keyframe

    def switched(self, index: int) -> None:
        """The target layer's keyframe is here: the leg continues on it."""
        old = self.current
        self.current = index
        self.holding = 0
        if old is not None:
            self._remove_tap(old)
            self.switches += 1
            leg = self.leg
            if index > old:  # a keyframe larger than the link's burst: through the leg's pacer
                leg.pacer.pace_burst(BURST_PACING, self.layers[index].bitrate() / 8)
            if leg.forwarder is not None:
                leg.forwarder.switch_source()
            if self._pid is not None:
                self._offsets = None  # recomputed on this layer's first packet
        self.leg.source = self.layers[index]
        if self.target != index:  # retargeted meanwhile to a layer without a tap yet
            self._add_tap(self.target)

    def send(self, packet: CachedPacket, ntp: int, send_time: bytes, tails: dict) -> None:
        if self._vp8:
            rewritten = self.rewrite(packet)
            if rewritten is not packet:
                packet, tails = rewritten, {}  # this leg's own bytes: not shared with the layer's other legs
        self.leg.forward(packet, ntp, send_time, tails)

    def rewrite(self, packet: CachedPacket) -> CachedPacket:
        """The packet with the leg's picture id and TL0PICIDX (the same packet when they are the layer's)."""
        ids = vp8_picture_ids(packet.payload)
        if ids is None:
            return packet
        pid, bits, at, tl0_at = ids
        mask = (1 << bits) - 1
        tl0 = packet.payload[tl0_at] if tl0_at else 0
        offsets = self._offsets
        if offsets is None:
            if self._pid is None:
                offsets = (0, 0)  # the leg's first layer: its own numbering
            else:
                offsets = ((self._pid + 1 - pid) & 0x7FFF, (self._tl0 + 1 - tl0) & 0xFF)
            self._offsets = offsets
        out_pid, out_tl0 = (pid + offsets[0]) & mask, (tl0 + offsets[1]) & 0xFF
        self._pid, self._tl0 = out_pid, out_tl0
        if offsets == (0, 0):
            return packet
        payload = vp8_rewrite_picture_ids(packet.payload, out_pid, bits, at, tl0_at, out_tl0)
        return CachedPacket(packet.seq, packet.timestamp, packet.marker, payload, packet.audio_level,
                            packet.arrival, packet.keyframe)

    def rewrite_payload(self, payload: bytes) -> bytes:
        """A cached payload of the current layer as it went out (for retransmissions)."""
        if not self._vp8 or not self._offsets or self._offsets == (0, 0):
            return payload
        ids = vp8_picture_ids(payload)
        if ids is None:
            return payload
        pid, bits, at, tl0_at = ids
        tl0 = payload[tl0_at] if tl0_at else 0
        return vp8_rewrite_picture_ids(payload, (pid + self._offsets[0]) & ((1 << bits) - 1), bits, at,
                                       tl0_at, (tl0 + self._offsets[1]) & 0xFF)

    def close(self) -> None:
        for index in list(self._taps):
            self._remove_tap(index)

    def describe(self) -> dict:
        rids = self.track.rids or []
        name = lambda i: rids[i] if i is not None and i < len(rids) else None  # noqa: E731
        return {"layer": name(self.current), "target": name(self.target), "switches": self.switches}
