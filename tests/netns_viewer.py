"""A subscriber peer for a process in another network namespace, driven by JSON lines on stdin:

    ip netns exec NS python -m tests.netns_viewer 10.213.7.2

  {"offer": SDP}    -> {"answer": SDP}   (ICE gathers only on the given address)
  {"cmd": "stats"}  -> {"video_frames": n, "audio_frames": n, "state": connectionState}
  {"cmd": "quit"}   (or end of input) -> closes the peer and exits

The parent does the room protocol (its WebSocket stays on 127.0.0.1) and relays the SDP, so only
media crosses the namespace's link. Video is decoded: frames count only when they decode.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from sfu.aiortc_seam import restrict_ice_gathering
from tests.peers import FrameCollector


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, None)


def _reply(message: dict) -> None:
    print(json.dumps(message), flush=True)


async def main(address: str) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    collectors: list[FrameCollector] = []
    pc.on("track", lambda track: collectors.append(FrameCollector(track)))
    lines: asyncio.Queue = asyncio.Queue()
    threading.Thread(target=_stdin_lines, args=(asyncio.get_running_loop(), lines), daemon=True).start()
    try:
        while (line := await lines.get()) is not None:
            message = json.loads(line)
            if "offer" in message:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=message["offer"], type="offer"))
                restrict_ice_gathering(pc, [address])
                await pc.setLocalDescription(await pc.createAnswer())
                _reply({"answer": pc.localDescription.sdp})
            elif message.get("cmd") == "stats":
                _reply({
                    "video_frames": sum(c.frames for c in collectors if c.kind == "video"),
                    "audio_frames": sum(c.frames for c in collectors if c.kind == "audio"),
                    "state": pc.connectionState,
                })
            elif message.get("cmd") == "quit":
                break
    finally:
        for c in collectors:
            c.stop()
        await pc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
