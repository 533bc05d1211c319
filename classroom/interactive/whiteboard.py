"""Whiteboard: strokes, clear, undo of your own last stroke, drawing permissions, server-side PNG rendering.

Coordinates are normalized: x and y in [0, 1] of the board. `width` is in pixels of a 1000-pixel-wide board
and scales with the rendered size.
"""

from __future__ import annotations

import functools
import io
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from classroom.interactive.base import Context, Feature, handles, is_moderator
from classroom.interactive.envelope import ProtocolError
from classroom.interactive.schemas import MAX_POINTS_PER_STROKE

DEFAULT_COLOR = "#000000"
DEFAULT_WIDTH = 3.0
BACKGROUND = (255, 255, 255)
REFERENCE_WIDTH = 1000.0


def stroke_out(row: dict) -> dict:
    return {k: row.get(k) for k in ("id", "identity", "tool", "points", "color", "width", "text", "created_at")}


class Whiteboard(Feature):
    def __init__(self, room):
        super().__init__(room)
        self.strokes: list[dict] = []  # the board: strokes since the last clear, minus undone ones
        self.permitted: str | set[str] = set()  # "all" or identities allowed to draw besides moderators

    async def load(self) -> None:
        self.strokes = list(await self.repo.board(self.session_id))
        last = await self.repo.last_event(self.session_id, "whiteboard.permitted")
        identities = (last or {}).get("data", {}).get("identities", [])
        self.permitted = "all" if identities == "all" else set(identities)

    def may_draw(self, member: Any) -> bool:
        return is_moderator(member) or self.permitted == "all" or member.identity in self.permitted

    def _permitted_out(self) -> str | list[str]:
        return "all" if self.permitted == "all" else sorted(self.permitted)

    def state(self, member: Any) -> dict:
        if not self.room.features.get("whiteboard"):
            return {"whiteboard": None}
        return {"whiteboard": {"strokes": [stroke_out(s) for s in self.strokes],
                               "permitted": self._permitted_out(), "may_draw": self.may_draw(member)}}

    @handles("whiteboard.stroke", feature="whiteboard", bucket="whiteboard")
    async def stroke(self, ctx: Context) -> dict:
        if not self.may_draw(ctx.member):
            raise ProtocolError("forbidden", "the instructor has not allowed you to draw on the whiteboard")
        d = ctx.data
        if len(d["points"]) > MAX_POINTS_PER_STROKE:
            raise ProtocolError("too_large", f"stroke has {len(d['points'])} points; the limit is "
                                             f"{MAX_POINTS_PER_STROKE}")
        if d["tool"] in ("line", "rectangle") and len(d["points"]) < 2:
            raise ProtocolError("invalid", f"a {d['tool']} needs 2 points (start and end)")
        stroke = {"tool": d["tool"], "points": [[float(x), float(y)] for x, y in d["points"]],
                  "color": d.get("color", DEFAULT_COLOR).lower(), "width": float(d.get("width", DEFAULT_WIDTH)),
                  "text": d.get("text") if d["tool"] == "text" else None}
        stroke_id = await self.repo.add_stroke(self.session_id, identity=ctx.identity, stroke=stroke, at=ctx.now)
        row = dict(stroke, id=stroke_id, identity=ctx.identity, created_at=ctx.now)
        self.strokes.append(row)
        await self.room.record(ctx, None, {}, {"strokes": 1})
        ctx.fanout({"type": "whiteboard.stroke", "data": stroke_out(row)})
        return {"stroke_id": stroke_id}

    @handles("whiteboard.clear", feature="whiteboard", bucket="moderation", moderator_only=True)
    async def clear(self, ctx: Context) -> dict:
        clear_id = await self.repo.clear_board(self.session_id, identity=ctx.identity, at=ctx.now)
        self.strokes = []
        await self.room.record(ctx, "whiteboard.cleared", {"clear_id": clear_id})
        ctx.fanout({"type": "whiteboard.cleared", "data": {"by": ctx.identity, "at": ctx.now}})
        return {"clear_id": clear_id}

    @handles("whiteboard.undo", feature="whiteboard", bucket="whiteboard")
    async def undo(self, ctx: Context) -> dict:
        if not self.may_draw(ctx.member):
            raise ProtocolError("forbidden", "the instructor has not allowed you to draw on the whiteboard")
        for index in range(len(self.strokes) - 1, -1, -1):
            if self.strokes[index]["identity"] == ctx.identity:
                break
        else:
            raise ProtocolError("not_found", "you have no stroke on the board to undo")
        row = self.strokes.pop(index)
        await self.repo.undo_stroke(row["id"], ctx.now)
        ctx.fanout({"type": "whiteboard.undone", "data": {"stroke_id": row["id"], "identity": ctx.identity}})
        return {"stroke_id": row["id"]}

    @handles("whiteboard.permit", feature="whiteboard", bucket="moderation", moderator_only=True)
    async def permit(self, ctx: Context) -> dict:
        identities = ctx.data["identities"]
        self.permitted = "all" if identities == "all" else set(identities)
        await self.room.record(ctx, "whiteboard.permitted", {"identities": self._permitted_out()})
        permitted = self._permitted_out()
        ctx.fanout(lambda m: {"type": "whiteboard.permissions",
                              "data": {"permitted": permitted, "may_draw": self.may_draw(m)}})
        return {"permitted": permitted}


# ---- rendering ---------------------------------------------------------------------------------------------
def _rgb(color: str | None) -> tuple[int, int, int]:
    color = color or DEFAULT_COLOR
    try:
        return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)
    except (ValueError, IndexError, TypeError):
        return 0, 0, 0


def _segment(img: np.ndarray, p0: np.ndarray, p1: np.ndarray, radius: float, rgb: tuple[int, int, int]) -> None:
    """Paint pixels within `radius` of the segment p0-p1 (a capsule): round caps and joins for free."""
    h, w = img.shape[:2]
    x0 = int(max(0, np.floor(min(p0[0], p1[0]) - radius)))
    x1 = int(min(w - 1, np.ceil(max(p0[0], p1[0]) + radius)))
    y0 = int(max(0, np.floor(min(p0[1], p1[1]) - radius)))
    y1 = int(min(h - 1, np.ceil(max(p0[1], p1[1]) + radius)))
    if x0 > x1 or y0 > y1:
        return
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    px, py = xs + 0.5, ys + 0.5
    d = p1 - p0
    length2 = float(d @ d)
    if length2 == 0.0:
        dist2 = (px - p0[0]) ** 2 + (py - p0[1]) ** 2
    else:
        t = np.clip(((px - p0[0]) * d[0] + (py - p0[1]) * d[1]) / length2, 0.0, 1.0)
        dist2 = (px - (p0[0] + t * d[0])) ** 2 + (py - (p0[1] + t * d[1])) ** 2
    mask = dist2 <= radius * radius
    img[y0:y1 + 1, x0:x1 + 1][mask] = rgb


def _polyline(img: np.ndarray, pts: np.ndarray, radius: float, rgb: tuple[int, int, int]) -> None:
    if len(pts) == 1:
        _segment(img, pts[0], pts[0], radius, rgb)
    for a, b in zip(pts[:-1], pts[1:]):
        _segment(img, a, b, radius, rgb)


def rasterize(strokes: Iterable[dict], width: int, height: int) -> np.ndarray:
    """Draw strokes in order onto a white RGB array of shape (height, width, 3)."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    scale = np.array([width, height], dtype=np.float64)
    for s in strokes:
        pts = np.asarray(s.get("points") or [], dtype=np.float64).reshape(-1, 2) * scale
        if len(pts) == 0:
            continue
        radius = max(0.5, float(s.get("width") or DEFAULT_WIDTH) * width / REFERENCE_WIDTH / 2.0)
        tool = s.get("tool", "pen")
        rgb = BACKGROUND if tool == "eraser" else _rgb(s.get("color"))
        if tool in ("pen", "eraser"):
            _polyline(img, pts, radius, rgb)
        elif tool == "line":
            _polyline(img, pts[[0, -1]], radius, rgb)
        elif tool == "rectangle":
            (ax, ay), (bx, by) = pts[0], pts[-1]
            corners = np.array([[ax, ay], [bx, ay], [bx, by], [ax, by], [ax, ay]])
            _polyline(img, corners, radius, rgb)
        elif tool == "text":
            _text(img, s.get("text") or "", pts[0], float(s.get("width") or DEFAULT_WIDTH) * width / REFERENCE_WIDTH,
                  rgb)
    return img


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font
    except (TypeError, OSError, ImportError):  # Pillow built without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def _text(img: np.ndarray, text: str, at: np.ndarray, scaled_width: float, rgb: tuple[int, int, int]) -> None:
    """Text with its top-left corner at `at`, sized like the room page's canvas (4x the stroke width,
    at least 12 px on a 1000-pixel board)."""
    if not text.strip():
        return
    size = max(6, int(round(max(12.0 * img.shape[1] / REFERENCE_WIDTH, scaled_width * 4))))
    mask = Image.new("L", (img.shape[1], img.shape[0]), 0)
    ImageDraw.Draw(mask).text((float(at[0]), float(at[1])), text, fill=255, font=_font(size))
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    if alpha.any():
        img[:] = (img * (1.0 - alpha) + np.asarray(rgb, dtype=np.float32) * alpha + 0.5).astype(np.uint8)


def encode_png(img: np.ndarray) -> bytes:
    """Encode an (h, w, 3) uint8 array as a PNG."""
    out = io.BytesIO()
    Image.fromarray(img, "RGB").save(out, format="PNG")
    return out.getvalue()


def render_png(strokes: Iterable[dict], width: int = 1280, height: int = 720) -> bytes:
    """The board as a PNG (`GET` of a board). Sizes are clamped to 1..4096 pixels."""
    width = int(min(max(width, 1), 4096))
    height = int(min(max(height, 1), 4096))
    return encode_png(rasterize(strokes, width, height))
