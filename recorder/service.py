"""The server-side recording manager: records rooms of the running SFU, keeps the `recordings` table in step,
repairs what a crash left at start-up, and runs composite exports as background jobs in a subprocess.

See docs/recording.md ("Recording in the server").
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from recorder.export import LAYOUTS
from recorder.manifest import MANIFEST_NAME, ManifestError, read_manifest, track_label
from recorder.recovery import finalize_unfinished
from recorder.session import Recording
from shared.appkeys import SETTINGS
from storage.recordings import RecordingRepo, RecordingRow
from storage.store import STORE

if TYPE_CHECKING:
    from recorder.rooms import RecordedRoom, RoomDirectory, Unwatch
    from sfu.uptrack import UpTrack

log = logging.getLogger(__name__)

RECORDABLE = {"video/vp8", "video/h264", "audio/opus"}
COMPOSITE_NAME = "composite-{layout}.mp4"
_SAFE_ROOM = re.compile(r"[^A-Za-z0-9._-]+")


class RecordingError(Exception):
    """A recording request cannot be done: `status` is the HTTP status, `code` the problem code of the REST
    API (docs/recording.md, "HTTP API"), the message says why."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class ExportJob:
    id: str
    recording_id: str
    layout: str
    status: str = "queued"          # queued | running | done | failed
    progress: float = 0.0
    error: str | None = None
    result: dict | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    task: asyncio.Task | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "recording_id": self.recording_id, "layout": self.layout,
                "status": self.status, "progress": round(self.progress, 4), "error": self.error,
                "result": self.result, "created_at": self.created_at, "finished_at": self.finished_at}


class _Active:
    """One room being recorded."""

    def __init__(self, room: "RecordedRoom", recording: Recording, row: RecordingRow):
        self.room = room
        self.recording = recording
        self.row = row
        self.tracks: dict[str, tuple["UpTrack", Any]] = {}   # track_id -> (uptrack, TrackRecorder)
        self.unwatch: list["Unwatch"] = []  # the room's track and empty events
        self.pending: set[asyncio.Task] = set()
        self.stopping: asyncio.Task | None = None
        self.problems: dict[str, str] = {}   # file name (or manifest.json) -> what went wrong, as reported live


def summarize(directory: str, manifest: dict | None = None) -> dict:
    """Files, duration and size of a finished (or recovered) recording directory, from its manifest
    (`manifest`, when the one on disk is stale because it could not be written)."""
    manifest = manifest if manifest is not None else read_manifest(directory)
    tracks = [t for t in manifest["tracks"] if os.path.exists(os.path.join(directory, t["file"]))]
    starts = [t["start_time"] for t in tracks if t.get("start_time") is not None and t.get("frames", 0) > 0]
    t0 = min(starts) if starts else None
    names = {p["identity"]: p["name"] for p in manifest.get("participants", [])}
    files, duration, size, errors = [], 0.0, 0, []
    for t in tracks:
        path = os.path.join(directory, t["file"])
        nbytes = os.path.getsize(path)
        size += nbytes
        offset = (t["start_time"] - t0) if t0 is not None and t.get("start_time") is not None else 0.0
        usable = t.get("frames", 0) > 0 and t["status"] not in ("empty",)
        if usable:
            duration = max(duration, offset + (t.get("duration") or 0.0))
        if t.get("error"):
            errors.append(f"{t['file']}: {t['error']}")
        name = names.get(t["participant"]) or t["participant"]
        files.append({"name": t["file"], "kind": t["kind"], "participant": t["participant"],
                      "participant_name": name, "source": t.get("source"),
                      "label": track_label(name, t["kind"], t.get("source")),
                      "codec": t["codec"], "size": nbytes, "duration": t.get("duration") or 0.0,
                      "frames": t.get("frames", 0), "status": t["status"], "start_time": t.get("start_time"),
                      "offset": round(offset, 6)})
    return {"files": files, "duration": round(duration, 3), "size": size, "t0": t0,
            "manifest": manifest, "errors": errors,
            "usable": any(f["frames"] > 0 and f["status"] != "empty" for f in files)}


def composite_file_entry(path: str, layout: str, duration: float | None, t0: float | None) -> dict:
    return {"name": os.path.basename(path), "kind": "composite", "participant": None, "label": "composite",
            "codec": "video/mp4",
            "layout": layout, "size": os.path.getsize(path), "duration": duration, "frames": None,
            "status": "ready", "start_time": t0, "offset": 0.0}


class RecordingManager:
    """Start/stop recordings of rooms, keep their rows, run exports. One per server (app[RECORDINGS])."""

    def __init__(self, rooms: "RoomDirectory", store, root: str, *, python: str = sys.executable):
        self.rooms = rooms
        self.store = store
        self.repo = RecordingRepo(store)
        self.root = os.path.abspath(root)
        self.python = python
        self.active: dict[str, _Active] = {}
        self.jobs: dict[str, ExportJob] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._stopping: set[asyncio.Task] = set()
        self._starting: set[asyncio.Task] = set()  # auto-record starts (record_from_first_track)
        self._closed = False

    # -- start-up / shutdown ----------------------------------------------------------------

    async def recover(self) -> list[RecordingRow]:
        """Finalize files a crash left unfinished, then settle rows stuck in recording/processing.

        Only this server's own recordings (their directory under its recordings root): with several nodes on
        one database, a row of another node's directory is that node's, recording right now or waiting for
        that node's next start, the only one that has its files (docs/scaling.md)."""
        os.makedirs(self.root, exist_ok=True)
        results = await asyncio.to_thread(finalize_unfinished, self.root)
        for r in results:
            log.info("recovery: %s %s %s", r["path"], r["status"], r.get("error") or "")
        settled = []
        for row in await self.repo.list(status=("recording", "processing"), limit=100000):
            if row.directory and os.path.dirname(os.path.abspath(row.directory)) != self.root:
                continue
            settled.append(await self._settle(row, crashed=True))
        return settled

    async def _settle(self, row: RecordingRow, *, crashed: bool = False, problems: dict[str, str] | None = None,
                      manifest: dict | None = None) -> RecordingRow:
        """processing → ready (something playable) or failed (error says why).

        `problems`: what was reported live (file -> text), kept in `error` in that wording. `manifest`: the
        recording's own manifest when the final manifest.json could not be written; the row then ends
        failed (exports and crash recovery read manifest.json), its files still listed."""
        directory = row.directory or os.path.join(self.root, row.id)
        problems = problems or {}
        stale = manifest is not None
        try:
            info = await asyncio.to_thread(summarize, directory, manifest)
        except (ManifestError, OSError) as exc:
            done = await self.repo.transition(row.id, ("recording", "processing"), "failed",
                                              ended_at=row.ended_at or time.time(),
                                              error=f"cannot read the recording: {exc}")
            return done or row
        ended = info["manifest"].get("stopped_at") or row.ended_at or time.time()
        values = dict(ended_at=ended, duration_s=info["duration"], size_bytes=info["size"], files=info["files"])
        notes = list(problems.values()) + [e for e in info["errors"] if e.split(": ", 1)[0] not in problems]
        note = "; ".join(notes) or None
        if crashed:
            note = "server stopped unexpectedly; recovered up to the crash" + (f" ({note})" if note else "")
        if info["usable"] and not stale:
            done = await self.repo.transition(row.id, ("recording", "processing"), "ready", error=note, **values)
        else:
            done = await self.repo.transition(row.id, ("recording", "processing"), "failed",
                                              error=note or "no media was recorded", **values)
        return done or row

    async def close(self) -> None:
        """Server shutdown: stop every recording (files finalized), cancel export jobs."""
        self._closed = True
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        await asyncio.gather(*(self._stop_quietly(name, "server shutdown") for name in list(self.active)),
                             *list(self._stopping), return_exceptions=True)
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
        tasks = [j.task for j in self.jobs.values() if j.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- recording --------------------------------------------------------------------------

    def _lock(self, room: str) -> asyncio.Lock:
        return self._locks.setdefault(room, asyncio.Lock())

    def status(self, room: str) -> dict | None:
        active = self.active.get(room)
        if active is None:
            return None
        return {"recording_id": active.row.id, "room": room, "started_at": active.row.started_at,
                "tracks": len(active.tracks), "error": "; ".join(active.problems.values()) or None}

    async def start(self, room_name: str, *, by: str | None = None) -> RecordingRow:
        if self._closed:
            raise RecordingError(503, "shutting_down", "the server is shutting down")
        async with self._lock(room_name):
            if room_name in self.active:
                raise RecordingError(409, "already_recording", f"room {room_name!r} is already being recorded "
                                          f"(recording {self.active[room_name].row.id})")
            room = self.rooms.find(room_name)
            if room is None or room.is_empty():
                raise RecordingError(409, "room_empty",
                                     f"room {room_name!r} has nobody in it; there is nothing to record")
            session = await self.store.sessions.get_by_room(room_name)
            rec_id = uuid.uuid4().hex
            directory = os.path.join(self.root, rec_id)
            try:
                recording = await asyncio.to_thread(Recording, directory, rec_id, room_name)
            except OSError as exc:  # permissions, full disk: say so, record nothing
                raise RecordingError(507 if exc.errno == errno.ENOSPC else 500, "storage_failed",
                                     f"cannot create the recording directory {directory}: {exc.strerror or exc}")
            row = await self.repo.create(id=rec_id, room=room_name, started_at=time.time(), directory=directory,
                                         manifest_path=os.path.join(directory, MANIFEST_NAME),
                                         session_id=session.id if session else None)
            active = self.active[room_name] = _Active(room, recording, row)
            loop = asyncio.get_running_loop()

            def on_problem(problem: dict, active=active) -> None:  # on a recorder or the manifest thread
                try:
                    loop.call_soon_threadsafe(self._on_problem, active, problem)
                except RuntimeError:
                    pass  # the loop is closed: the server is gone

            recording.on_problem = on_problem
            for track in room.tracks():
                self._attach(active, track)

            def listener(event: str, track: "UpTrack", active=active) -> None:
                if event == "published":
                    self._attach(active, track)
                else:
                    self._detach(active, track)

            active.unwatch = [room.watch_tracks(listener),
                              room.watch_empty(lambda: self._stop_soon(room_name, "room is empty"))]
            log.info("recording %s of room %s started by %s", rec_id, room_name, by or "?")
        await room.broadcast({"type": "recording", "state": "started", "recording_id": rec_id})
        return row

    def _attach(self, active: _Active, track: "UpTrack") -> None:
        if track.track_id in active.tracks or track.closed:
            return
        if track.mime_type.lower() not in RECORDABLE:
            log.warning("recording %s: %s is not recordable (%s)", active.row.id, track.track_id, track.mime_type)
            return
        try:
            recorder = active.recording.add_track(
                track.track_id, track.publisher_id,
                active.room.display_name(track.publisher_id) or track.publisher_id,
                track.kind, track.mime_type, track.clock_rate, channels=2, source=track.source,
                on_keyframe_needed=track.request_keyframe)
        except (ValueError, RuntimeError, OSError) as exc:
            log.error("recording %s: cannot record %s: %s", active.row.id, track.track_id, exc)
            return
        active.tracks[track.track_id] = (track, recorder)
        track.add_sink(recorder)
        track.request_keyframe()  # a file starts on a keyframe: don't wait for the next periodic one

    def record_from_first_track(self, room: "RecordedRoom") -> None:
        """`stoa serve --record` (settings.record_all): `room` starts recording when its first track is published."""
        unwatch = None

        def listener(event: str, track: "UpTrack") -> None:
            if event == "published" and self.status(room.name) is None and not self._closed:
                unwatch()
                task = asyncio.ensure_future(self._start_quietly(room.name))
                self._starting.add(task)
                task.add_done_callback(self._starting.discard)

        unwatch = room.watch_tracks(listener)

    async def session_joined(self, session) -> None:
        """Someone joined `session`'s room (a `sessions` row): a live session whose `recording` feature is on
        records from its first participant until it ends (`session_ended`). Never raises."""
        if (session.status != "live" or not (session.features or {}).get("recording")
                or self.status(session.room) is not None or self._closed):
            return
        await self._start_quietly(session.room, by="auto (session flag)")

    async def session_ended(self, room_name: str) -> None:
        """The session of `room_name` ended: whatever records the room stops. Never raises."""
        if self.status(room_name) is not None:
            await self._stop_quietly(room_name, "the session ended")

    async def _start_quietly(self, room_name: str, by: str = "stoa serve --record") -> None:
        try:
            await self.start(room_name, by=by)
        except Exception as exc:  # recording trouble never disturbs the class
            log.warning("recording %s did not start: %s", room_name, exc)

    def _detach(self, active: _Active, track: "UpTrack") -> None:
        entry = active.tracks.pop(track.track_id, None)
        if entry is None:
            return
        track.remove_sink(entry[1])
        task = asyncio.ensure_future(active.recording.stop_track(track.track_id))
        active.pending.add(task)
        task.add_done_callback(active.pending.discard)

    def _on_problem(self, active: _Active, problem: dict) -> None:
        """A track (or the manifest) failed while recording: say so at once, in the row and to the room.
        The failed track's file stops growing; the other tracks go on, and forwarding is not touched."""
        if self.active.get(active.room.name) is not active or problem["file"] in active.problems:
            return  # stopping: _settle puts it in the row from the manifest
        active.problems[problem["file"]] = problem["error"]
        log.error("recording %s of room %s: %s", active.row.id, active.room.name, problem["error"])
        entry = active.tracks.get(problem["track_id"]) if problem["track_id"] else None
        if entry is not None:
            entry[0].remove_sink(entry[1])  # it drops every packet now anyway
        task = asyncio.ensure_future(self._report_problem(active, problem))
        active.pending.add(task)
        task.add_done_callback(active.pending.discard)

    async def _report_problem(self, active: _Active, problem: dict) -> None:
        row = await self.repo.transition(active.row.id, ("recording",), "recording",
                                         error="; ".join(active.problems.values()))
        if row is not None:
            active.row = row
        await active.room.broadcast({"type": "recording", "state": "error", "recording_id": active.row.id,
                                     "error": problem["error"], "track_id": problem["track_id"]})
        recorders = [recorder for _, recorder in active.tracks.values()]
        if recorders and all(r.status == "failed" for r in recorders):
            self._stop_soon(active.room.name, "every recorded track failed")

    def _stop_soon(self, room_name: str, reason: str) -> None:
        active = self.active.get(room_name)
        if active is not None and active.stopping is None:
            active.stopping = asyncio.ensure_future(self._stop_quietly(room_name, reason))
            self._stopping.add(active.stopping)
            active.stopping.add_done_callback(self._stopping.discard)

    async def _stop_quietly(self, room_name: str, reason: str) -> None:
        try:
            await self.stop(room_name, reason=reason)
        except RecordingError:
            pass  # stopped meanwhile by someone else
        except Exception:
            log.exception("stopping the recording of room %s failed", room_name)

    async def stop(self, room_name: str, *, reason: str = "stopped") -> RecordingRow:
        async with self._lock(room_name):
            active = self.active.pop(room_name, None)
            if active is None:
                raise RecordingError(409, "not_recording", f"room {room_name!r} is not being recorded")
            for unwatch in active.unwatch:
                unwatch()
            for track, recorder in active.tracks.values():
                track.remove_sink(recorder)
            active.tracks.clear()
            await self.repo.transition(active.row.id, ("recording",), "processing", ended_at=time.time())
            if active.pending:
                await asyncio.gather(*active.pending, return_exceptions=True)
            try:
                manifest = await active.recording.stop()
            except Exception as exc:  # files stay; recovery at the next start-up can still repair them
                log.exception("recording %s: stop failed", active.row.id)
                row = await self.repo.transition(active.row.id, ("processing",), "failed",
                                                 error=f"stopping failed: {type(exc).__name__}: {exc}")
                return row or active.row
            stale = active.recording.manifest_problem  # the final manifest.json was not written
            if stale:
                active.problems.setdefault(MANIFEST_NAME, stale)
            row = await self._settle(await self.repo.get(active.row.id) or active.row, problems=active.problems,
                                     manifest=manifest if stale else None)
            log.info("recording %s of room %s stopped (%s): %s", row.id, room_name, reason, row.status)
        if not active.room.is_empty():
            note = {"type": "recording", "state": "stopped", "recording_id": row.id, "reason": reason}
            if row.error:
                note["error"] = row.error
            await active.room.broadcast(note)
        return row

    # -- composite export jobs --------------------------------------------------------------

    async def export(self, recording_id: str, layout: str = "grid") -> ExportJob:
        row = await exportable(self.repo, recording_id, layout)
        for job in self.jobs.values():
            if job.recording_id == recording_id and job.layout == layout and job.status in ("queued", "running"):
                return job
        job = ExportJob(id=uuid.uuid4().hex, recording_id=recording_id, layout=layout)
        self.jobs[job.id] = job
        job.task = asyncio.ensure_future(self._run_export(job, row))
        return job

    async def _run_export(self, job: ExportJob, row: RecordingRow) -> None:
        directory = row.directory or os.path.join(self.root, row.id)
        out = os.path.join(directory, COMPOSITE_NAME.format(layout=job.layout))
        job.status = "running"
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "recorder.service", "export", directory, out, job.layout,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            assert proc.stdout is not None
            async for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "progress" in msg:
                    job.progress = float(msg["progress"])
                elif "result" in msg:
                    job.result = msg["result"]
                elif "error" in msg:
                    job.error = msg["error"]
            stderr = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
            code = await proc.wait()
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            job.status, job.error, job.finished_at = "failed", "cancelled (server shutdown)", time.time()
            raise
        if code == 0 and job.result is not None:
            await record_composite(self.repo, row.id, out, job.layout, job.result)
            job.status, job.progress = "done", 1.0
        else:
            job.status = "failed"
            job.error = job.error or (stderr.strip().splitlines() or [f"exit code {code}"])[-1]
        job.finished_at = time.time()


RECORDINGS = web.AppKey("recordings", RecordingManager)


def recordings_ctx(rooms: "Callable[[web.Application], RoomDirectory]"):
    """The cleanup context that creates app[RECORDINGS] (after the rooms and the store) and repairs crashed
    recordings first. `rooms(app)` gives the rooms to record: stoa/app.py passes the RoomManager."""

    async def ctx(app: web.Application):
        settings = app[SETTINGS]
        directory = rooms(app)
        manager = RecordingManager(directory, app[STORE], os.path.join(settings.data_dir, "recordings"))
        await manager.recover()
        app[RECORDINGS] = manager
        if settings.record_all:
            directory.watch_rooms(manager.record_from_first_track)
        yield
        await manager.close()

    return ctx


async def exportable(repo: RecordingRepo, recording_id: str, layout: str) -> RecordingRow:
    """The row of a recording that can be exported in `layout`, else RecordingError saying why not."""
    if layout not in LAYOUTS:
        raise RecordingError(400, "invalid_input", f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    row = await repo.get(recording_id)
    if row is None:
        raise RecordingError(404, "not_found", f"there is no recording {recording_id!r}")
    if row.status != "ready":
        raise RecordingError(409, "not_ready",
                             f"recording {recording_id} is {row.status}; only a ready one can be exported")
    return row


async def record_composite(repo: RecordingRepo, recording_id: str, out: str, layout: str, result: dict) -> None:
    """List a finished composite among the recording's files (replacing an older one of that layout)."""
    entry = composite_file_entry(out, layout, result.get("duration"), None)
    row = await repo.get(recording_id)
    files = [f for f in ((row.files if row else None) or []) if f.get("name") != entry["name"]]
    entry["start_time"] = next((f.get("start_time") for f in files if f.get("offset") == 0 and f.get("start_time")),
                               None)
    await repo.update(recording_id, composite_path=out, files=files + [entry])


async def export_offline(store, recording_id: str, layout: str,
                         progress: Callable[[float], None] | None = None) -> dict:
    """What `stoa recording export` runs: the composite export in a worker thread of this process."""
    from recorder.export import export_composite

    repo = RecordingRepo(store)
    row = await exportable(repo, recording_id, layout)
    directory = row.directory or ""
    out = os.path.join(directory, COMPOSITE_NAME.format(layout=layout))
    result = await asyncio.to_thread(export_composite, directory, out, layout, progress)
    await record_composite(repo, recording_id, out, layout, result)
    return result


def _export_main(directory: str, out: str, layout: str) -> int:
    """Subprocess entry point: JSON lines {"progress": f} ..., then {"result": {...}} or {"error": "..."}."""
    from recorder.export import export_composite

    def progress(fraction: float) -> None:
        print(json.dumps({"progress": fraction}), flush=True)

    try:
        result = export_composite(directory, out, layout, progress)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"result": result}), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "export":
        raise SystemExit(_export_main(*sys.argv[2:5]))
    print("usage: python -m recorder.service export RECORDING_DIR OUT.mp4 grid|speaker", file=sys.stderr)
    raise SystemExit(2)
