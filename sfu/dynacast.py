"""Dynacast: the layers of a simulcast track that no viewer needs are paused at the publisher.

A layer is needed while a leg forwards it, is switching to it or is probing for it (a leg Last-N paused
needs none), the
layers the legs on media workers need (the relay's `wanted_layers`, from the workers' `wants`), and the
top layer while another sink (the recorder, a relay to another node) takes the track. The lowest layer always
runs, so a new viewer starts at once. A layer no longer needed is paused after PAUSE_AFTER seconds (a
viewer that steps down and back up does not make the encoder stop and start); a needed one resumes at
once. Each layer's liveness (sfu/liveness.py) records the pause, and a resume starts its grace for the
first packets. The room tells the publishing page (`layers`, docs/protocol.md), which sets that encoding's
`active` with RTCRtpSender.setParameters. Pure: the caller passes `now`.
"""

from __future__ import annotations

from sfu.layers import LayerSwitcher

PAUSE_AFTER = 5.0


def needed_layers(track) -> set[int]:
    wanted = {0}
    for sink in track.sinks:
        # The relay to media workers says which layers their legs need; other sinks take the top one.
        wants = getattr(sink, "wanted_layers", None)
        wanted |= wants() if wants is not None else {len(track.layers) - 1}
    for layer in track.layers:
        for leg in layer.downtracks:
            switcher = getattr(leg, "switcher", None)
            if isinstance(switcher, LayerSwitcher) and not switcher.leg.unselected:
                wanted.add(switcher.target)
                if switcher.probing is not None:
                    wanted.add(switcher.probing)  # a probe for it is running: its rate is the probe's target
    return wanted


class Dynacast:
    __slots__ = ("track", "active", "_unneeded_since", "_states")

    def __init__(self, track):
        self.track = track
        self.active = [True] * len(track.layers)  # what the publisher was last told (all run at first)
        self._unneeded_since: dict[int, float] = {}
        self._states: list[str] | None = None

    def states(self, now: float) -> list[str] | None:
        """Each layer's liveness state (sfu/liveness.py), low to high, when that changed; else None."""
        states = [liveness.state(now) if liveness is not None else "live"
                  for liveness in (getattr(layer, "liveness", None) for layer in self.track.layers)]
        if states == self._states:
            return None
        self._states = states
        return states

    def update(self, now: float) -> list[str] | None:
        """The rids to run, when that changes; else None."""
        wanted = needed_layers(self.track)
        active = list(self.active)
        for i in range(len(active)):
            if i in wanted:
                self._unneeded_since.pop(i, None)
                active[i] = True
            elif active[i] and now - self._unneeded_since.setdefault(i, now) >= PAUSE_AFTER:
                active[i] = False
        if active == self.active:
            return None
        self.active = active
        for layer, on in zip(self.track.layers, active):
            liveness = getattr(layer, "liveness", None)
            if liveness is not None:
                liveness.set_paused(not on, now)
        return [rid for rid, on in zip(self.track.rids, active) if on]
