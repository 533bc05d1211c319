"""Whether each layer of a simulcast track delivers (LiveKit's StreamTracker, reduced to a clock).

A publisher stops sending a layer without saying so: libwebrtc's simulcast rate allocator switches a
layer off while its bandwidth estimate is short of the layer's minimum, and an encoder can stall on one
layer (seen with a screen share's top layer while the camera ran its layers: framesEncoded stuck,
`active` still true). The layer's packets just stop, and a leg waiting for its keyframe waits forever.
So the allocator (sfu/allocator.py) only chooses layers that can deliver. A layer is
- live: a packet came within LIVE_WINDOW;
- paused: dynacast stopped it on purpose (sfu/dynacast.py). Choosing it is how it is resumed;
- starting: resumed (or published) less than START_GRACE ago, its first keyframe may be on its way;
- stopped: none of these; it is not chosen until packets come again.
On a media worker, which receives only the layers its legs forward, the main process reports each
layer's state (the relay's `layer_states`) and the worker uses that instead of its own packets.
"""

from __future__ import annotations

import math

LIVE_WINDOW = 2.0   # s: a static screen share sends a frame a second (libwebrtc's zero-hertz repeats)
START_GRACE = 2.5   # s from a resume to the layer's first packets (a keyframe request is repeated every 0.5 s)

LIVE, PAUSED, STARTING, STOPPED = "live", "paused", "starting", "stopped"
STATES = (LIVE, PAUSED, STARTING, STOPPED)


class LayerLiveness:
    __slots__ = ("last_packet", "paused", "started_at", "reported")

    def __init__(self, now: float) -> None:
        self.last_packet = -math.inf  # monotonic time of the layer's last media packet (UpTrack.on_rtp)
        self.paused = False
        self.started_at = now  # published, or last resumed by dynacast
        self.reported: str | None = None  # a media worker: the main process's view, used as is

    def state(self, now: float) -> str:
        if self.reported is not None:
            return self.reported
        if self.paused:
            return PAUSED
        if now - self.last_packet < LIVE_WINDOW:
            return LIVE
        if now - self.started_at < START_GRACE:
            return STARTING
        return STOPPED

    def usable(self, now: float) -> bool:
        """A leg may be sent to this layer: it delivers, will soon, or resumes when chosen."""
        return self.state(now) != STOPPED

    def set_paused(self, paused: bool, now: float) -> None:
        if self.paused and not paused:
            self.started_at = now
        self.paused = paused


def usable(layer, now: float) -> bool:
    """A leg may be sent to `layer` (an UpTrack): it has no liveness (not simulcast), or it is usable."""
    liveness = getattr(layer, "liveness", None)
    return liveness is None or liveness.usable(now)
