"""One recording of a room: a directory with one file per track and a manifest."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import threading
import time
from typing import Callable, Optional

from .depacketizer import codec_from_mime
from .manifest import FORMAT, MANIFEST_NAME, VERSION, write_manifest
from .track_recorder import CONTAINER_FORMAT, FAILED, FILE_EXTENSION, TrackRecorder, short_error

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CANONICAL_MIME = {"vp8": "video/VP8", "h264": "video/H264", "opus": "audio/opus"}


def _safe(name: str, limit: int = 48) -> str:
    cleaned = _UNSAFE.sub("_", name).strip("._")[:limit]
    return cleaned or "track"


class Recording:
    """Manage the TrackRecorders of one room recording and its manifest.

    ``add_track`` and the properties are for the event loop thread; ``await stop_track()`` and
    ``await stop()`` close files in threads. Manifest writes run on a private single-thread
    executor, so they never block the caller and always land in order.

    ``on_problem(problem)`` is called (on a worker or the manifest thread) once when a track fails
    and when a manifest write fails after one that worked: ``{"track_id", "participant", "kind",
    "file", "error"}``, ``error`` like "video track of ada: No space left on device" or
    "manifest.json could not be written: No space left on device" (then ``track_id``,
    ``participant`` and ``kind`` are None). The other tracks keep recording.
    """

    def __init__(
        self,
        directory: str,
        recording_id: str,
        room: str,
        *,
        clock: Callable[[], float] = time.time,
        recorder_options: Optional[dict] = None,
        on_problem: Optional[Callable[[dict], None]] = None,
    ) -> None:
        if not isinstance(recording_id, str) or not recording_id:
            raise ValueError("recording_id must be a non-empty string")
        if not isinstance(room, str):
            raise ValueError("room must be a string")
        self.directory = os.fspath(directory)
        self.recording_id = recording_id
        self.room = room
        self._clock = clock
        self._recorder_options = dict(recorder_options or {})
        self._lock = threading.Lock()
        self._entries: list[dict] = []  # static manifest fields + "recorder"
        self._participants: dict[str, str] = {}
        self._status = "recording"
        self._started_at = clock()
        self._stopped_at: Optional[float] = None
        self._writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"manifest:{recording_id}"
        )
        self.on_problem = on_problem
        self._reported: set[int] = set()  # id() of failed recorders already reported
        # Set while the manifest on disk is stale (the last write failed), worded as on_problem says it.
        self.manifest_problem: Optional[str] = None
        os.makedirs(self.directory, exist_ok=True)
        write_manifest(self.directory, self.manifest())  # fail early (permissions, bad path)

    # -- tracks

    def add_track(
        self,
        track_id: str,
        identity: str,
        name: str,
        kind: str,
        codec_mime: str,
        clock_rate: int,
        *,
        width: Optional[int] = None,
        height: Optional[int] = None,
        channels: int = 2,
        source: Optional[str] = None,
        on_keyframe_needed: Optional[Callable[[], None]] = None,
    ) -> TrackRecorder:
        if self._status != "recording":
            raise RuntimeError("recording is stopped")
        if not isinstance(track_id, str) or not track_id:
            raise ValueError("track_id must be a non-empty string")
        codec = codec_from_mime(codec_mime)
        with self._lock:
            if any(e["track_id"] == track_id and not e["recorder"].closed for e in self._entries):
                raise ValueError(f"track {track_id!r} is already being recorded")
            base = f"{_safe(identity)}-{_safe(track_id)}"
            taken = {e["file"] for e in self._entries}
            filename = base + FILE_EXTENSION[codec]
            n = 2
            while filename in taken or os.path.exists(os.path.join(self.directory, filename)):
                filename = f"{base}-{n}{FILE_EXTENSION[codec]}"
                n += 1
            recorder = TrackRecorder(
                os.path.join(self.directory, filename),
                kind,
                codec_mime,
                clock_rate,
                width=width,
                height=height,
                channels=channels,
                on_keyframe_needed=on_keyframe_needed,
                on_update=self._on_recorder_update,
                **self._recorder_options,
            )
            self._participants.setdefault(identity, name)
            self._entries.append(
                {
                    "track_id": track_id,
                    "participant": identity,
                    "kind": kind,
                    # camera | microphone | screen | screen_audio (the publisher's `tracks`), for labels
                    "source": source,
                    "codec": _CANONICAL_MIME[codec],
                    "clock_rate": clock_rate,
                    "file": filename,
                    "container": CONTAINER_FORMAT[codec],
                    "channels": channels if kind == "audio" else None,
                    "added_at": self._clock(),
                    "stopped_at": None,
                    "recorder": recorder,
                }
            )
        self._schedule_write()
        return recorder

    def recorder(self, track_id: str) -> Optional[TrackRecorder]:
        """The active recorder of ``track_id``, if any."""
        with self._lock:
            for e in reversed(self._entries):
                if e["track_id"] == track_id:
                    return e["recorder"]
        return None

    async def stop_track(self, track_id: str) -> None:
        """Close one track (participant unpublished or left)."""
        with self._lock:
            entries = [e for e in self._entries if e["track_id"] == track_id and e["stopped_at"] is None]
        for e in entries:
            await e["recorder"].close()
            e["stopped_at"] = self._clock()
        self._schedule_write()

    async def stop(self) -> dict:
        """Close every track, write the final manifest, and return it."""
        with self._lock:
            entries = [e for e in self._entries if e["stopped_at"] is None]
        await asyncio.gather(*(e["recorder"].close() for e in entries))
        now = self._clock()
        for e in entries:
            e["stopped_at"] = now
        self._status = "finished"
        self._stopped_at = now
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._write_now)
        self._writer.shutdown(wait=True)
        return self.manifest()

    def stop_sync(self) -> dict:
        """Blocking ``stop()`` for code without an event loop."""
        with self._lock:
            entries = [e for e in self._entries if e["stopped_at"] is None]
        for e in entries:
            e["recorder"].close_sync()
            e["stopped_at"] = self._clock()
        self._status = "finished"
        self._stopped_at = self._clock()
        self._writer.submit(self._write_now).result()
        self._writer.shutdown(wait=True)
        return self.manifest()

    # -- manifest

    def manifest(self) -> dict:
        """The manifest as it stands now."""
        with self._lock:
            tracks = []
            for e in self._entries:
                r: TrackRecorder = e["recorder"]
                entry = {k: v for k, v in e.items() if k != "recorder"}
                entry.update(
                    status=r.status,
                    error=r.error,
                    start_time=r.start_time,
                    start_time_source=r.start_time_source,
                    first_rtp_timestamp=r.first_timestamp,
                    duration=round(r.duration, 6),
                    frames=r.frames_written,
                    width=r.width if r.kind == "video" else None,
                    height=r.height if r.kind == "video" else None,
                )
                tracks.append(entry)
            return {
                "format": FORMAT,
                "version": VERSION,
                "recording_id": self.recording_id,
                "room": self.room,
                "status": self._status,
                "started_at": self._started_at,
                "stopped_at": self._stopped_at,
                "participants": [
                    {"identity": i, "name": n} for i, n in self._participants.items()
                ],
                "tracks": tracks,
            }

    def _write_now(self) -> None:
        try:
            write_manifest(self.directory, self.manifest())
            self.manifest_problem = None
        except Exception as exc:  # keep recording media even if the manifest cannot be written
            first = self.manifest_problem is None
            self.manifest_problem = f"{MANIFEST_NAME} could not be written: {short_error(exc)}"
            log.error("manifest write failed for %s: %s: %s", self.directory, type(exc).__name__, exc)
            if first:
                self._report({"track_id": None, "participant": None, "kind": None, "file": MANIFEST_NAME,
                              "error": self.manifest_problem})

    def _report(self, problem: dict) -> None:
        if self.on_problem is not None:
            try:
                self.on_problem(problem)
            except Exception:
                log.exception("recording %s: on_problem failed", self.recording_id)

    def _schedule_write(self) -> None:
        try:
            self._writer.submit(self._write_now)
        except RuntimeError:
            pass  # executor shut down: stop() already wrote the final manifest

    def _on_recorder_update(self, recorder: TrackRecorder) -> None:
        if recorder.status == FAILED and id(recorder) not in self._reported:
            with self._lock:
                entry = next((e for e in self._entries if e["recorder"] is recorder), None)
                self._reported.add(id(recorder))
            if entry is not None:
                self._report({"track_id": entry["track_id"], "participant": entry["participant"],
                              "kind": entry["kind"], "file": entry["file"],
                              "error": f"{entry['kind']} track of {entry['participant']}: "
                                       f"{recorder.error_reason or recorder.error}"})
        self._schedule_write()
