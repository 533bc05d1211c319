"""Feedback that lets a browser publisher find its send rate: transport-cc (TWCC) arrival reports.

Chromium runs its congestion controller (GCC) on the send side when transport-cc is negotiated: it
probes, and from the arrival times we report it measures delay growth and loss, and sets the encoders'
rate. Without it, only aiortc's REMB steers it, and that estimate follows what already arrives, so the
rate creeps up by a few percent a second (about 700 kbps after 20 s). mediasoup
(TransportCongestionControlServer), LiveKit (twcc.Responder) and Janus all answer transport-cc the same
way: record every packet's transport-wide sequence number and arrival, and report every 50-100 ms.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from aiortc.rtcdtlstransport import RTCDtlsTransport

from sfu.aiortc_seam import send_raw_rtcp, transport_connected, watch_transport_rtp
from sfu.twcc import FeedbackRecorder

logger = logging.getLogger(__name__)

FEEDBACK_INTERVAL = 0.05  # s; mediasoup uses 50 ms, LiveKit 50-100 ms
IDLE_INTERVAL = 0.4       # s, at most, between looks while nothing arrives
# Where the publisher's estimator starts (Chromium's default is 300 kbps). At 300 kbps the encoders
# start at a quarter of the camera's size and climb back over tens of seconds; from here transport-cc
# feedback moves the estimate either way within a second or two.
START_BITRATE_KBPS = 2500
_NOT_VIDEO_CODECS = ("rtx", "red", "ulpfec", "flexfec-03")


def with_start_bitrate(sdp: str, kbps: int = START_BITRATE_KBPS) -> str:
    """The answer to a publisher with `x-google-start-bitrate` on every video codec's fmtp (a line is
    added after the rtpmap when the codec has none). Chromium reads it from the remote description of
    its sending side; other browsers ignore it. Existing values are kept."""
    lines = sdp.split("\r\n")
    video = False
    codecs: list[str] = []
    for line in lines:
        if line.startswith("m="):
            video = line.startswith("m=video")
        elif video and line.startswith("a=rtpmap:"):
            pt, _, encoding = line[len("a=rtpmap:"):].partition(" ")
            if encoding.split("/")[0].lower() not in _NOT_VIDEO_CODECS:
                codecs.append(pt)
    out = []
    video = False
    param = f"x-google-start-bitrate={kbps}"
    have_fmtp = {line[len("a=fmtp:"):].split(" ")[0] for line in lines if line.startswith("a=fmtp:")}
    for line in lines:
        if line.startswith("m="):
            video = line.startswith("m=video")
        if video and line.startswith("a=fmtp:"):
            pt, _, params = line[len("a=fmtp:"):].partition(" ")
            if pt in codecs and "x-google-start-bitrate" not in params:
                line = f"a=fmtp:{pt} {params};{param}" if params else f"a=fmtp:{pt} {param}"
        out.append(line)
        if video and line.startswith("a=rtpmap:"):
            pt = line[len("a=rtpmap:"):].partition(" ")[0]
            if pt in codecs and pt not in have_fmtp:
                out.append(f"a=fmtp:{pt} {param}")
    return "\r\n".join(out)


class TransportCcResponder:
    """Answers one publisher transport's transport-wide sequence numbers with feedback packets."""

    def __init__(self, dtls: RTCDtlsTransport, *, interval: float = FEEDBACK_INTERVAL):
        self.dtls = dtls
        self.interval = interval
        self.recorder = FeedbackRecorder(sender_ssrc=random.getrandbits(32))
        self.packets_seen = 0
        self.feedback_sent = 0
        self._task: asyncio.Task | None = None
        recorder = self.recorder
        add = recorder.add
        now_us = time.monotonic_ns

        def on_packet(seq: int, ssrc: int) -> None:
            add(seq, now_us() // 1000)
            recorder.media_ssrc = ssrc
            self.packets_seen += 1

        self.attached = watch_transport_rtp(dtls, on_packet)
        if self.attached:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        failures = 0
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            try:
                packets = self.recorder.feedback()
            except Exception:  # never reached in tests; the publisher must keep its media
                logger.exception("building transport-cc feedback failed; it stops for this transport")
                return
            # Idle (no media yet, or a client without transport-cc such as aiortc): look less often.
            delay = self.interval if packets else min(IDLE_INTERVAL, delay * 2)
            if not packets or not transport_connected(self.dtls):
                continue
            for data in packets:
                if await send_raw_rtcp(self.dtls, data):
                    self.feedback_sent += 1
                    failures = 0
                else:
                    failures += 1
                    if failures == 1:
                        logger.info("transport-cc feedback could not be sent (transport not connected)")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
