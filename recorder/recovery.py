"""Finalize recordings left unfinished by a crash (``kill -9``, power loss, OOM).

A TrackRecorder keeps ``<file>.recording`` next to its file until it closes cleanly. A file with
a marker was written live (Matroska/WebM clusters of at most 1 s, flushed each second) but has
no cues and no duration. ``finalize_unfinished`` remuxes each such file with PyAV (stream copy,
no re-encode) into a proper file, and marks the manifest of its recording "recovered".
"""

from __future__ import annotations

import logging
import os

import av

from .manifest import MANIFEST_NAME, ManifestError, read_manifest, write_manifest
from .track_recorder import MARKER_SUFFIX

log = logging.getLogger(__name__)

_FORMAT_BY_EXT = {".webm": "webm", ".mkv": "matroska"}


def remux(src: str, dst: str) -> dict:
    """Copy every readable packet of ``src`` into a new ``dst``; stops at the first unreadable
    byte (the torn end of a crashed file). Returns {"frames": {stream index: count},
    "duration": seconds}."""
    fmt = _FORMAT_BY_EXT.get(os.path.splitext(dst)[1].lower(), "matroska")
    frames: dict[int, int] = {}
    end = 0.0
    with av.open(src, "r") as inp:
        with av.open(dst, "w", format=fmt) as out:
            mapping = {}
            for stream in inp.streams:
                if stream.type in ("audio", "video"):
                    mapping[stream.index] = out.add_stream_from_template(stream)
                    frames[stream.index] = 0
            if not mapping:
                raise ValueError(f"{src}: no audio or video stream")
            last_dts: dict[int, int] = {}
            try:
                for packet in inp.demux(*[inp.streams[i] for i in mapping]):
                    if packet.dts is None or packet.size == 0:
                        continue
                    index = packet.stream.index
                    if index in last_dts and packet.dts <= last_dts[index]:
                        continue
                    last_dts[index] = packet.dts
                    tb = packet.time_base
                    stop = packet.pts + (packet.duration or 0)
                    end = max(end, float(stop * tb))
                    packet.stream = mapping[index]
                    out.mux(packet)
                    frames[index] += 1
            except (av.error.FFmpegError, EOFError) as exc:
                log.info("%s: stopped reading at a damaged point: %s", src, exc)
    return {"frames": frames, "duration": end}


def finalize_file(path: str) -> dict:
    """Remux one unfinished file in place and remove its marker. Returns a result dict with
    ``status`` "recovered", "empty" (nothing usable was written) or "failed" (and ``error``)."""
    marker = path + MARKER_SUFFIX
    result = {"path": path, "status": "failed", "error": None, "duration": 0.0, "frames": 0}
    try:
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            result["status"] = "empty"
        else:
            root, ext = os.path.splitext(path)
            tmp = f"{root}.recovering{ext}"
            try:
                info = remux(path, tmp)
            except Exception:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            total = sum(info["frames"].values())
            if total == 0:
                os.unlink(tmp)
                result["status"] = "empty"
            else:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                result.update(status="recovered", duration=info["duration"], frames=total)
        try:
            os.unlink(marker)
        except FileNotFoundError:
            pass
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        log.error("cannot recover %s: %s", path, result["error"])
    return result


def finalize_unfinished(directory: str) -> list[dict]:
    """Find every unfinished recording under ``directory`` (a recording directory or a root of
    many), finalize its files, and update the manifests. Returns one result per file. Safe to run
    at every server start: finished recordings are left alone."""
    results: list[dict] = []
    manifest_dirs: set[str] = set()
    for root, _dirs, files in os.walk(directory):
        if MANIFEST_NAME in files:
            manifest_dirs.add(root)
        for name in sorted(files):
            if name.endswith(MARKER_SUFFIX):
                results.append(finalize_file(os.path.join(root, name[: -len(MARKER_SUFFIX)])))
    by_path = {os.path.abspath(r["path"]): r for r in results}
    for root in sorted(manifest_dirs):
        try:
            manifest = read_manifest(root)
        except ManifestError as exc:
            log.error("skipping %s: %s", root, exc)
            continue
        crashed = manifest["status"] == "recording"
        changed = crashed
        stopped = manifest["started_at"]
        for track in manifest["tracks"]:
            path = os.path.abspath(os.path.join(root, track["file"]))
            exists = os.path.exists(path)
            result = by_path.get(path)
            if result is not None:
                changed = True
                track["status"] = result["status"]
                # Keep the reason a track failed live (e.g. disk full) when it is repaired now.
                track["error"] = result["error"] or track.get("error")
                if result["status"] == "recovered":
                    track["duration"] = round(result["duration"], 6)
                    track["frames"] = result["frames"]
            elif crashed and track["status"] in ("waiting", "recording"):
                track["status"] = "recovered" if exists else "empty"
            mtime = os.path.getmtime(path) if exists else None
            if crashed and not track.get("stopped_at"):
                track["stopped_at"] = mtime or manifest["started_at"]
            stopped = max(stopped, mtime or 0.0)
        if crashed:
            manifest["status"] = "recovered"
            manifest["stopped_at"] = stopped
        if changed:
            write_manifest(root, manifest)
    return results


def main(argv=None) -> int:
    """``python -m recorder.recovery DIRECTORY``: finalize and print one JSON line per file."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=finalize_unfinished.__doc__)
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    results = finalize_unfinished(args.directory)
    for r in results:
        print(json.dumps(r))
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
