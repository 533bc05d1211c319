"""Simulcast: a browser sends one track as several encodings (rid layers); each viewer gets the one
that fits its downlink and the size its page renders the video at.

- SDP (`simulcast_offer`, `with_simulcast`): the offer's `a=rid:<rid> send` / `a=simulcast:send` lines
  are answered with `a=rid:<rid> recv` / `a=simulcast:recv` (aiortc drops them from its own answer).
- `SimulcastUpTrack`: the track the room sees. Its own packets are the top layer's; `layers` holds
  one UpTrack per rid, lowest first. Packets reach the layers from the seam's demux (by the RID
  header extension of each SSRC's first packets); RTX is unwrapped there, probing padding and
  duplicate retransmissions are dropped here.
- `LayerChoice.decide` (pure, clock passed in): which layer one viewer should get.
- Switching (LiveKit's forwarder and mediasoup's SimulcastConsumer do the same): the leg keeps its
  current layer until a keyframe of the target layer arrives (asked for on that layer's SSRC), then
  moves; the Forwarder continues sequence numbers and timestamps, and `Vp8Munger` PictureID and
  TL0PICIDX, so the viewer sees one stream.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

from aiortc.rtp import RtpPacket, unwrap_rtx

from sfu.forwarder import Vp8Munger
from sfu.rtp import vp8_keyframe_size
from sfu.uptrack import UpTrack

logger = logging.getLogger(__name__)

TICK = 0.5               # s between two layer decisions for every leg of a track
BASE_HOLD = 1.5          # s a leg stays on a layer before it tries the next one up
MAX_HOLD = 8.0           # the hold doubles after each failed try, up to this
PROBE_WINDOW = 4.0       # s after a step up within which a step down counts as a failed try
SETTLE = 1.5             # s after a switch before the next step down (loss is measured per window)
DOWN_LOSS = 0.10         # a window with this much loss steps the leg down
UP_LOSS = 0.02           # more than this and it does not try to go up
PROBE_TIME = 1.5         # s of padding at the next layer's rate before a step up
PROBE_EXTRA = 1.2        # the probe sends next x this - current
PROBE_STEP = 0.02        # s between two probe bursts
PROBE_GRACE = 1.5        # s added to SETTLE after a failed probe
SWITCH_TIMEOUT = 2.0     # s to wait for the target layer's keyframe before asking again
STALE = 2.0              # s without packets: the layer is not sent (paused, or the publisher's BWE)
_KNOWN_ORDER = ("q", "h", "f")  # the room page's names, lowest first


# --- SDP ------------------------------------------------------------------------------------

def simulcast_offer(offer_sdp: str) -> dict[str, list[str]]:
    """mid -> the rids of its `a=simulcast:send` line, lowest layer first (q/h/f by name; other names
    in the offer's order, which is the order of the browser's sendEncodings)."""
    out: dict[str, list[str]] = {}
    for section in offer_sdp.split("\r\nm=")[1:]:
        mid = re.search(r"\r\na=mid:(\S+)", section)
        sim = re.search(r"\r\na=simulcast:send (\S+)", section)
        if mid is None or sim is None:
            continue
        # ";" separates streams, "," alternatives of one stream; "~" marks a paused one.
        rids = [alt.split(",")[0].lstrip("~") for alt in sim.group(1).split(";")]
        rids = [r for r in rids if r]
        if len(rids) < 2:
            continue
        if set(rids) <= set(_KNOWN_ORDER):
            rids.sort(key=_KNOWN_ORDER.index)
        out[mid.group(1)] = rids
    return out


def with_simulcast(answer_sdp: str, sections: dict[str, list[str]]) -> str:
    """The answer with `a=rid:<rid> recv` and `a=simulcast:recv` in each simulcast section (sections
    the answer rejected, port 0, are left alone)."""
    if not sections:
        return answer_sdp
    head, *parts = answer_sdp.split("\r\nm=")
    out = [head]
    for part in parts:
        mid = re.search(r"\r\na=mid:(\S+)", part)
        rids = sections.get(mid.group(1)) if mid else None
        if rids and not re.match(r"\S+ 0 ", part) and "a=simulcast:" not in part:
            body = part.rstrip("\r\n")
            tail = part[len(body):]
            lines = "".join(f"\r\na=rid:{rid} recv" for rid in rids)
            part = body + lines + "\r\na=simulcast:recv " + ";".join(rids) + tail
        out.append(part)
    return "\r\nm=".join(out)


# --- the layer selector ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Layer:
    """What the server measures of one layer: its bitrate over the last second, its frame height
    (VP8 keyframes carry it; 0 if unknown), and whether packets are arriving."""

    bitrate: float
    height: int = 0
    live: bool = True


def ceiling(layers: list[Layer], render_height: int | None) -> int:
    """The lowest live layer at least as tall as the viewer renders the video (the top when no size
    is known or none is tall enough); 0 for a hidden video."""
    live = [i for i, layer in enumerate(layers) if layer.live]
    if not live:
        return 0
    if render_height is None:
        return live[-1]
    if render_height <= 0:
        return live[0]
    for i in live:
        if layers[i].height and layers[i].height >= render_height * 0.9:
            return i
    return live[-1]


class LayerChoice:
    """One leg's layer, with hysteresis: down one layer on loss (then SETTLE before the next step), up
    one layer after a hold with no loss. A viewer's REMB follows what it receives, so it cannot say
    whether a higher layer would fit: before a step up the leg is probed (`probe`: padding at the
    difference in rate for PROBE_TIME), and it moves up only if that passed without loss and without
    its REMB falling (a queue growing on the way); a leg that cannot be probed (no RTX) just tries.
    A failed probe, or a step up undone within PROBE_WINDOW, doubles the hold (up to MAX_HOLD); one
    that holds resets it."""

    __slots__ = ("current", "target", "changed_at", "up_at", "hold", "switches", "failed_tries", "probe",
                 "probes")

    def __init__(self, current: int, now: float):
        self.current = current
        self.target = current
        self.changed_at = now
        self.up_at: float | None = None
        self.hold = BASE_HOLD
        self.switches = 0
        self.failed_tries = 0
        # While probing: (layer, until, bit/s of padding, packets sent and NACKed by then, the estimate then)
        self.probe: tuple | None = None
        self.probes = 0

    def _fail(self, now: float) -> None:
        self.failed_tries += 1
        self.hold = min(self.hold * 2, MAX_HOLD)
        self.up_at = None
        # The loss the probe caused is still in the next loss windows: it must not take the leg down.
        self.changed_at = now + PROBE_GRACE

    def decide(self, layers: list[Layer], *, now: float, loss: float = 0.0, estimate: float | None = None,
               render_height: int | None = None, can_probe: bool = False,
               counts: tuple[int, int] = (0, 0)) -> int:
        """The layer this leg should be on now (may equal `current`); may start or end a probe.
        `counts`: the leg's packets sent and NACKed so far (a probe is judged on the NACKs during it,
        which come at once, not on the loss windows, which close a second or more later)."""
        probe = self.probe
        if probe is not None:
            self.probe = None
            sent, nacked = counts[0] - probe[3][0], counts[1] - probe[3][1]
            lossy = loss >= DOWN_LOSS or (sent > 0 and nacked / sent > UP_LOSS)
            # A REMB that falls while the probe runs: the viewer's estimator saw the queue grow.
            falling = estimate is not None and probe[4] is not None and estimate < probe[4] * 0.97
            if lossy or falling:
                self._fail(now)  # the link did not carry it
                return self.current
            if now < probe[1]:
                self.probe = probe
                return self.current
            return probe[0]
        n = len(layers)
        cur = min(self.current, n - 1)
        top = ceiling(layers, render_height)
        live = [i for i in range(n) if layers[i].live]
        if not live:
            return cur
        if not layers[cur].live:  # its layer stopped: the nearest live one below, else above
            below = [i for i in live if i < cur]
            return below[-1] if below else live[0]
        if self.up_at is not None and now - self.up_at >= PROBE_WINDOW:
            self.up_at, self.hold = None, BASE_HOLD  # the last step up held
        rate = layers[cur].bitrate
        # Loss only: a viewer's REMB starts low and follows what it receives, so it lags behind every
        # step up (aiortc's: 120k three seconds in, growing ~8%/s); it counts only while probing.
        if loss >= DOWN_LOSS and cur > live[0]:
            if now - self.changed_at < SETTLE:
                return cur
            return min([i for i in live if i < cur][-1], top)
        if cur > top:
            return top
        # Until a viewer's first REMB (aiortc and WHEP tools send one), or when it sends none (browsers
        # send transport-cc), the first probe waits twice as long.
        hold = self.hold if estimate is not None else 2 * self.hold
        if loss >= DOWN_LOSS or cur >= top or loss > UP_LOSS or now - self.changed_at < hold:
            return cur
        up = [i for i in live if cur < i <= top]
        if not up:
            return cur
        if not can_probe:
            return up[0]
        self.probes += 1
        self.probe = (up[0], now + PROBE_TIME, max(0.0, layers[up[0]].bitrate * PROBE_EXTRA - rate), counts,
                      estimate)
        return cur

    def switched(self, layer: int, now: float) -> None:
        """The leg now forwards `layer` (its keyframe arrived)."""
        self.probe = None
        if layer < self.current and self.up_at is not None and now - self.up_at < PROBE_WINDOW:
            self._fail(now)
        elif layer > self.current:
            self.up_at = now
        self.current = self.target = layer
        self.changed_at = now
        self.switches += 1


# --- the track --------------------------------------------------------------------------------

class SimulcastUpTrack(UpTrack):
    """A published track sent as layers. The room, the recorder and relays see this object (the top
    layer); viewers' legs sit on any of `layers` and are moved between them."""

    _lower: list = []

    def __init__(self, *, rids: list[str], **kwargs):
        super().__init__(**kwargs)
        self.rid = rids[-1]
        self._lower = []
        for rid in rids[:-1]:
            layer = UpTrack(**kwargs)
            layer.group, layer.rid = self, rid
            self._lower.append(layer)
        self.layers: list[UpTrack] = [*self._lower, self]
        self.by_rid = {layer.rid: layer for layer in self.layers}
        self.sizes: dict[str, tuple[int, int]] = {}
        self.probes_dropped = 0      # RTX and padding-only packets the publisher's BWE sent
        self.duplicates_dropped = 0  # retransmissions of packets already here
        self._bytes = {rid: 0 for rid in rids}
        self._rates = {rid: 0.0 for rid in rids}
        self._last_packet = {rid: 0.0 for rid in rids}
        self._pending: dict = {}  # leg -> (target layer index, when asked)
        self._mark = self._monotonic()
        self._prober: asyncio.Task | None = None
        for layer in self.layers:
            layer.on_keyframe = self._on_keyframe
        self._ticker = asyncio.ensure_future(self._tick_forever())

    # muted is the group's: every layer stops and starts together
    @property
    def muted(self) -> bool:
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        self._muted = value
        for layer in self._lower:
            layer.muted = value

    def legs(self) -> list:
        return [leg for layer in self.layers for leg in layer.downtracks]

    # -- from the seam's demux ----------------------------------------------------------------

    async def on_layer_rtp(self, rid: str, packet: RtpPacket, repaired: bool) -> None:
        layer = self.by_rid.get(rid)
        if layer is None:
            return
        if repaired:
            if len(packet.payload) <= 2:  # padding-only probe
                self.probes_dropped += 1
                return
            media_ssrc = layer.media_ssrc
            if media_ssrc is None:
                return
            packet = unwrap_rtx(packet, self.payload_type, media_ssrc)
            if layer.cache.get(packet.sequence_number) is not None:
                self.duplicates_dropped += 1  # a probe made of an old packet, or a late repair
                return
        elif not packet.payload:
            self.probes_dropped += 1
            return
        now = time.time()
        self._bytes[rid] += len(packet.payload)
        self._last_packet[rid] = now
        await layer.on_rtp(packet, now)

    # -- keyframes and switching --------------------------------------------------------------

    def _on_keyframe(self, layer: UpTrack, packet) -> None:
        """A keyframe starts on `layer` (runs before its fan-out, so a leg moved here gets it)."""
        if self.mime_type.lower() == "video/vp8" and layer.rid not in self.sizes:
            size = vp8_keyframe_size(packet.payload)
            if size is not None:
                self.sizes[layer.rid] = size
        if not self._pending:
            return
        index = self.layers.index(layer)
        now = self._monotonic()
        for leg, (target, _) in list(self._pending.items()):
            if target == index:
                del self._pending[leg]
                self._move(leg, layer, now)

    def _move(self, leg, layer: UpTrack, now: float) -> None:
        old = leg.uptrack
        if old is None or old.group is not self or old is layer:
            return
        old.remove_downtrack(leg)
        leg.uptrack = layer
        if leg.forwarder is not None:
            leg.forwarder.switch_source()
            leg.forwarder.needs_keyframe = True
        layer.downtracks.append(leg)
        choice = leg.layer_choice
        if choice is not None:
            previous = choice.current
            choice.switched(self.layers.index(layer), now)
            logger.info("viewer %s on %s: layer %s -> %s", leg.subscriber_id, self.track_id,
                        self.layers[previous].rid, layer.rid)

    def add_downtrack(self, downtrack) -> None:
        """A new leg starts on the lowest layer (it decodes at once; the selector steps it up)."""
        layer = self.layers[0]
        downtrack.uptrack = layer
        if self.mime_type.lower() == "video/vp8" and downtrack.vp8 is None:
            downtrack.vp8 = Vp8Munger()
        downtrack.layer_choice = LayerChoice(0, self._monotonic())
        UpTrack.add_downtrack(layer, downtrack)

    def remove_downtrack(self, downtrack) -> None:
        self._pending.pop(downtrack, None)
        for layer in self.layers:
            UpTrack.remove_downtrack(layer, downtrack)

    # -- the selector's clock -----------------------------------------------------------------

    def layer_info(self, now: float) -> list[Layer]:
        wall = time.time()
        return [Layer(self._rates[layer.rid], self.sizes.get(layer.rid, (0, 0))[1],
                      wall - self._last_packet[layer.rid] < STALE) for layer in self.layers]

    def tick(self, now: float) -> None:
        """Measure the layers' rates, then decide for every leg (off the packet path)."""
        elapsed = now - self._mark
        if elapsed > 0:
            for rid, count in self._bytes.items():
                self._rates[rid] = 0.5 * self._rates[rid] + 0.5 * count * 8 / elapsed if self._rates[rid] \
                    else count * 8 / elapsed
                self._bytes[rid] = 0
            self._mark = now
        layers = self.layer_info(now)
        for leg in self.legs():
            choice = leg.layer_choice
            if choice is None:
                continue
            pending = self._pending.get(leg)
            if pending is not None and now - pending[1] < SWITCH_TIMEOUT:
                continue
            target = choice.decide(layers, now=now, loss=leg.quality.loss, estimate=leg.remb,
                                   render_height=leg.render_height, can_probe=leg.can_probe(),
                                   counts=(leg.packets_sent, leg.retransmit.new_losses))
            if choice.probe is not None and self._prober is None:
                self._prober = asyncio.ensure_future(self._probe_legs())
            if target == choice.current:
                self._pending.pop(leg, None)
                continue
            choice.target = target
            self._pending[leg] = (target, now)
            self.layers[target].request_keyframe()

    async def _probe_legs(self) -> None:
        """Padding for every leg that is being probed, in small steps (a burst would be lost in any
        queue on the way, and the probe would fail for that alone), by the time that really passed."""
        try:
            last = self._monotonic()
            while not self.closed:
                probing = [leg for leg in self.legs() if leg.layer_choice is not None
                           and leg.layer_choice.probe is not None]
                if not probing:
                    return
                now = self._monotonic()
                elapsed, last = min(now - last, 0.1), now
                for leg in probing:
                    leg.send_probe(int(leg.layer_choice.probe[2] * elapsed / 8))
                await asyncio.sleep(PROBE_STEP)
        except Exception:
            logger.exception("probing failed on %s", self.track_id)
        finally:
            self._prober = None

    async def _tick_forever(self) -> None:
        while not self.closed:
            await asyncio.sleep(TICK)
            try:
                self.tick(self._monotonic())
            except Exception:  # the selector never stops the track
                logger.exception("layer selection failed on %s", self.track_id)

    def stats(self) -> dict:
        return {"layers": {layer.rid: {"bitrate": round(self._rates[layer.rid]),
                                       "size": self.sizes.get(layer.rid), "legs": len(layer.downtracks),
                                       "packets": layer.packets_received} for layer in self.layers},
                "probes_dropped": self.probes_dropped, "duplicates_dropped": self.duplicates_dropped}

    def close(self) -> None:
        self._ticker.cancel()
        if self._prober is not None:
            self._prober.cancel()
        for layer in self._lower:
            layer.close()
        self._pending.clear()
        super().close()
