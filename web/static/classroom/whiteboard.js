// Whiteboard: pen, line, rectangle, text, eraser; colors and sizes; clear (moderators), undo own; mouse and
// touch through pointer events. Coordinates are normalized to [0, 1]; width is in pixels of a 1000-wide board.
import { $, h } from "../dom.js";
import { act, isMod, me, on } from "./core.js";

const W = 1000;
const H = 563;               // 16:9, like the server's PNG
const MAX_POINTS = 2000;
const COLORS = ["#111111", "#e53935", "#1e88e5", "#43a047", "#fb8c00", "#8e24aa"];
const SIZES = [2, 4, 8, 16];
const COLOR_NAMES = { "#111111": "black", "#e53935": "red", "#1e88e5": "blue", "#43a047": "green",
                      "#fb8c00": "orange", "#8e24aa": "purple" };

let strokes = [];
const pendingStrokes = [];   // drawn here, not yet echoed by the server
let current = null;
let mayDraw = false;
let tool = "pen";
let color = COLORS[0];
let size = SIZES[1];

export function mount(root) {
  const canvas = h("canvas", { id: "wb-canvas", width: String(W), height: String(H), class: "wb-canvas", role: "img",
                               "aria-label": "Whiteboard" });
  canvas.addEventListener("pointerdown", down);
  canvas.addEventListener("pointermove", move);
  canvas.addEventListener("pointerup", up);
  canvas.addEventListener("pointercancel", up);
  const tools = h("div", { id: "wb-tools", class: "cr-row wrap wb-tools" },
    ["pen", "line", "rectangle", "text", "eraser"].map((t) =>
      h("button", { type: "button", class: `tool${t === tool ? " active" : ""}`, dataset: { tool: t },
                    "aria-pressed": String(t === tool), onclick: () => pickTool(t) }, t)),
    COLORS.map((c) => h("button", { type: "button", class: `swatch${c === color ? " active" : ""}`, dataset: { color: c },
                                    style: `background:${c}`, title: c, "aria-label": `Color ${COLOR_NAMES[c]}`,
                                    "aria-pressed": String(c === color), onclick: () => pickColor(c) })),
    h("select", { id: "wb-size", "aria-label": "Pen size", onchange: (e) => { size = Number(e.target.value); } },
      SIZES.map((s) => h("option", { value: String(s), selected: s === size }, `${s}px`))),
    h("button", { type: "button", id: "wb-undo", onclick: () => act("whiteboard.undo", {}) }, "Undo"),
    isMod() ? h("button", { type: "button", id: "wb-clear", onclick: () => act("whiteboard.clear", {}) }, "Clear") : null);
  const permit = isMod() ? h("form", { id: "wb-permit", class: "cr-row wrap", onsubmit: permitSome },
    h("span", { class: "hint" }, "Who may draw:"),
    h("button", { type: "button", onclick: () => act("whiteboard.permit", { identities: [] }) }, "Moderators only"),
    h("button", { type: "button", id: "wb-permit-all", onclick: () => act("whiteboard.permit", { identities: "all" }) }, "Everyone"),
    h("input", { id: "wb-permit-ids", placeholder: "identities, comma separated", "aria-label": "Who may draw (identities, comma separated)" }),
    h("button", { type: "submit" }, "Allow"),
    h("span", { id: "wb-permitted", class: "hint" })) : null;
  const textBox = h("input", { id: "wb-text", class: "wb-text", hidden: true, maxlength: "500", "aria-label":
    "Text for the whiteboard (Enter places it, Escape cancels)", onkeydown: textKey, onblur: () => placeText(false) });
  root.append(tools, h("div", { id: "wb-status", class: "hint" }),
    h("div", { class: "wb-surface" }, canvas, textBox), permit || "");
}

// The text tool: a box where the board was clicked; Enter draws its text there (no window.prompt).
let textAt = null;
function openText(p, e) {
  const box = $("wb-text");
  const r = e.currentTarget.getBoundingClientRect();
  const surface = box.parentElement.getBoundingClientRect();   // the box is placed in the canvas's wrapper
  textAt = p;
  box.value = "";
  box.hidden = false;
  box.style.left = `${r.left - surface.left + p[0] * r.width}px`;
  box.style.top = `${r.top - surface.top + p[1] * r.height}px`;
  box.style.color = color;
  box.style.fontSize = `${textWidth() * 4 * (r.width / W)}px`;
  setTimeout(() => box.focus(), 0);
}
function textKey(e) {
  if (e.key === "Enter") { e.preventDefault(); placeText(true); }
  if (e.key === "Escape") { e.preventDefault(); placeText(false); }
}
function placeText(keep) {
  const box = $("wb-text");
  if (box.hidden) return;
  const text = box.value.trim();
  box.hidden = true;
  if (keep && text && textAt) submit({ tool: "text", points: [textAt], color, width: textWidth(), text: text.slice(0, 500) });
  textAt = null;
}
// Text is 4x its width in board pixels (the server's PNG agrees): at least 28 px on the 1000-wide board.
const textWidth = () => Math.max(7, size * 2);

function pickTool(t) {
  tool = t;
  for (const b of document.querySelectorAll("#wb-tools .tool")) {
    b.classList.toggle("active", b.dataset.tool === t);
    b.setAttribute("aria-pressed", String(b.dataset.tool === t));
  }
}
function pickColor(c) {
  color = c;
  for (const b of document.querySelectorAll("#wb-tools .swatch")) {
    b.classList.toggle("active", b.dataset.color === c);
    b.setAttribute("aria-pressed", String(b.dataset.color === c));
  }
}

function permitSome(e) {
  e.preventDefault();
  const ids = $("wb-permit-ids").value.split(",").map((s) => s.trim()).filter(Boolean);
  act("whiteboard.permit", { identities: ids });
}

function setMayDraw(may, permitted) {
  mayDraw = may || isMod();
  $("wb-status").textContent = mayDraw ? "You may draw." : "Only those the instructor allows may draw.";
  $("wb-canvas").classList.toggle("locked", !mayDraw);
  $("wb-tools").hidden = !mayDraw;
  if ($("wb-permitted") && permitted !== undefined) {
    $("wb-permitted").textContent = permitted === "all" ? "everyone" : (permitted.length ? permitted.join(", ") : "moderators only");
  }
}

function point(e) {
  const r = e.currentTarget.getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return [clamp((e.clientX - r.left) / r.width), clamp((e.clientY - r.top) / r.height)];
}

function down(e) {
  if (!mayDraw || e.button > 0) return;
  e.currentTarget.setPointerCapture(e.pointerId);
  const p = point(e);
  if (tool === "text") {
    e.preventDefault();   // keep the focus for the text box
    openText(p, e);
    return;
  }
  current = { tool, points: [p], color, width: size, identity: me.identity };
}

function move(e) {
  if (!current) return;
  const p = point(e);
  const last = current.points[current.points.length - 1];
  if (Math.hypot(p[0] - last[0], p[1] - last[1]) < 0.002) return;
  if (current.tool === "line" || current.tool === "rectangle") current.points = [current.points[0], p];
  else current.points.push(p);
  redraw();
}

function up(e) {
  if (!current) return;
  const s = current;
  current = null;
  if (s.points.length === 1) s.points.push(point(e));
  submit(s);
}

function thin(points) {
  if (points.length <= MAX_POINTS) return points;
  const step = points.length / (MAX_POINTS - 1);
  const out = [];
  for (let i = 0; i < MAX_POINTS - 1; i++) out.push(points[Math.floor(i * step)]);
  out.push(points[points.length - 1]);
  return out;
}

async function submit(s) {
  const data = { tool: s.tool, points: thin(s.points).map(([x, y]) => [+x.toFixed(4), +y.toFixed(4)]),
                 color: s.color, width: s.width };
  if (s.text) data.text = s.text;
  const local = { ...data, identity: me.identity };
  pendingStrokes.push(local);
  redraw();
  const ack = await act("whiteboard.stroke", data);
  if (!ack) {
    pendingStrokes.splice(pendingStrokes.indexOf(local), 1);
    redraw();
  }
}

function draw(ctx, s) {
  const pts = s.points.map(([x, y]) => [x * W, y * H]);
  if (!pts.length) return;
  ctx.save();
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = s.width * (W / 1000);
  ctx.strokeStyle = ctx.fillStyle = s.tool === "eraser" ? "#ffffff" : s.color;
  ctx.beginPath();
  if (s.tool === "text") {
    ctx.font = `${Math.max(12, s.width * 4)}px sans-serif`;
    ctx.textBaseline = "top";
    ctx.fillText(s.text || "", pts[0][0], pts[0][1]);
  } else if (s.tool === "rectangle") {
    const [a, b] = [pts[0], pts[pts.length - 1]];
    ctx.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
  } else if (s.tool === "line") {
    const [a, b] = [pts[0], pts[pts.length - 1]];
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0], b[1]);
    ctx.stroke();
  } else {
    ctx.moveTo(pts[0][0], pts[0][1]);
    for (const p of pts.slice(1)) ctx.lineTo(p[0], p[1]);
    if (pts.length === 1) ctx.lineTo(pts[0][0] + 0.01, pts[0][1]);
    ctx.stroke();
  }
  ctx.restore();
}

function redraw() {
  const ctx = $("wb-canvas").getContext("2d");
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, W, H);
  for (const s of strokes) draw(ctx, s);
  for (const s of pendingStrokes) draw(ctx, s);
  if (current) draw(ctx, current);
}

on("state", (s) => {
  const wb = s.whiteboard;
  strokes = wb ? [...wb.strokes] : [];
  pendingStrokes.length = 0;
  if (wb) setMayDraw(Boolean(wb.may_draw), wb.permitted);
  redraw();
});
on("whiteboard.stroke", (s) => {
  strokes.push(s);
  if (s.identity === me.identity && pendingStrokes.length) pendingStrokes.shift();
  redraw();
});
on("whiteboard.undone", (d) => { strokes = strokes.filter((s) => s.id !== d.stroke_id); redraw(); });
on("whiteboard.cleared", () => { strokes = []; redraw(); });
on("whiteboard.permissions", (d) => setMayDraw(Boolean(d.may_draw), d.permitted));
