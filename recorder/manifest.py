"""The per-recording manifest (``manifest.json``): what was recorded, by whom, and when each
track starts in wall-clock time, so that players and the composite export can line tracks up.

Written atomically (temporary file, fsync, rename) each time a track starts, learns its start
time, or stops. Read back with ``read_manifest``, which validates it against ``SCHEMA``.
"""

from __future__ import annotations

import json
import os
import threading

import jsonschema

MANIFEST_NAME = "manifest.json"
FORMAT = "stoa-recording"
VERSION = 1

RECORDING_STATUSES = ["recording", "finished", "recovered"]
TRACK_STATUSES = ["waiting", "recording", "finished", "empty", "failed", "recovered"]

_number_or_null = {"type": ["number", "null"]}
_int_or_null = {"type": ["integer", "null"]}
_string_or_null = {"type": ["string", "null"]}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["format", "version", "recording_id", "room", "status", "started_at",
                 "participants", "tracks"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "recording_id": {"type": "string", "minLength": 1},
        "room": {"type": "string"},
        "status": {"enum": RECORDING_STATUSES},
        "started_at": {"type": "number"},
        "stopped_at": _number_or_null,
        "participants": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["identity", "name"],
                "properties": {"identity": {"type": "string"}, "name": {"type": "string"}},
            },
        },
        "tracks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["track_id", "participant", "kind", "codec", "clock_rate", "file",
                             "status", "start_time", "start_time_source"],
                "properties": {
                    "track_id": {"type": "string", "minLength": 1},
                    "participant": {"type": "string"},
                    "kind": {"enum": ["audio", "video"]},
                    "source": {"enum": ["camera", "microphone", "screen", "screen_audio", None]},
                    "codec": {"enum": ["video/VP8", "video/H264", "audio/opus"]},
                    "clock_rate": {"type": "integer", "minimum": 1},
                    "file": {"type": "string", "minLength": 1, "pattern": "^[^/\\\\]+$"},
                    "container": {"enum": ["webm", "matroska"]},
                    "status": {"enum": TRACK_STATUSES},
                    "error": _string_or_null,
                    "start_time": _number_or_null,
                    "start_time_source": {"enum": ["rtcp_sr", "arrival", None]},
                    "first_rtp_timestamp": _int_or_null,
                    "duration": {"type": "number", "minimum": 0},
                    "frames": {"type": "integer", "minimum": 0},
                    "width": _int_or_null,
                    "height": _int_or_null,
                    "channels": _int_or_null,
                    "added_at": _number_or_null,
                    "stopped_at": _number_or_null,
                },
            },
        },
    },
}


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or does not match the schema."""


def validate_manifest(data: dict) -> None:
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.path) or "(top level)"
        raise ManifestError(f"manifest invalid at {where}: {e.message}")


def manifest_path(directory: str) -> str:
    return os.path.join(directory, MANIFEST_NAME)


def read_manifest(directory: str) -> dict:
    path = manifest_path(directory)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ManifestError(f"no manifest at {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    validate_manifest(data)
    return data


def write_manifest(directory: str, data: dict) -> None:
    """Validate and atomically replace ``directory/manifest.json``."""
    validate_manifest(data)
    path = manifest_path(directory)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory


SOURCE_LABELS = {"camera": "camera", "microphone": "microphone", "screen": "screen", "screen_audio": "screen audio"}


def track_label(name: str, kind: str, source: str | None) -> str:
    """What a player shows for a track file: "Ada Lovelace · screen" (older manifests have no source)."""
    return f"{name} · {SOURCE_LABELS.get(source or '', kind)}"
