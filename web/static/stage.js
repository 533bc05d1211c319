// The stage of the room page (docs/room-page.md, "Layout"): video tiles, the grid and presenter layouts, pinning,
// fullscreen, what each tile shows (name, mic, camera, speaking, connection quality, an avatar while the server
// does not forward the video: Last-N, docs/simulcast.md), the participant count and
// the keyboard shortcuts. room.js hands it video tiles through tileFor(); it follows the room given to
// startStage() (room-page.js).
//
// Per-participant controls (other modules): onTile(fn) calls fn(tile, controls, info) for every tile, present and
// future; `controls` is the tile's empty `.tile-controls` element, info is {key, participant, source}. The
// same is dispatched as a "stoa:tile" DOM event on document (detail {tile, controls, participant, source}).

import { h } from "./dom.js";
import { prejoinDone } from "./devices.js";

const stage = document.getElementById("stage");
const main = document.getElementById("stage-main");
const strip = document.getElementById("tiles");
const tracks = new Map();      // track_id -> {participant, source, kind, muted}
const tileHooks = [];
let pinned = null;             // key of the pinned tile
let pinnedWho = null;          // the participant the server was asked to pin (Last-N sends their camera)
let forwarded = null;          // Set of video track ids the server forwards (`forwarded`); null: all
let boardOpen = false;
let room = null;               // startStage()

const SOURCE_WORDS = { camera: "", screen: " (screen)" };

const button = (cls, label, onclick) =>
  h("button", { type: "button", class: `tile-btn ${cls}`, onclick: (e) => { e.stopPropagation(); onclick(); } }, label);

export function onTile(fn) {
  tileHooks.push(fn);
  for (const el of stage.querySelectorAll(".tile")) fn(el, el.querySelector(".tile-controls"), info(el));
}

const info = (el) => ({ key: el.dataset.key, participant: el.dataset.participant, source: el.dataset.source });

// The tile of one video (key: "self", "self-screen" or "<identity>-<source>"), created on first use.
export function tileFor(key, { participant = "", source = "camera", name = "" } = {}) {
  let el = document.getElementById(`tile-${key}`);
  const label = `${name}${SOURCE_WORDS[source] ?? ` (${source})`}`;
  if (!el) {
    el = document.createElement("figure");
    el.id = `tile-${key}`;
    el.className = "tile";
    el.tabIndex = 0;
    el.dataset.key = key;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true;      // sound plays from the <audio> elements
    const off = document.createElement("div");
    off.className = "tile-off";
    off.setAttribute("aria-hidden", "true");
    const cap = document.createElement("figcaption");
    const nameEl = document.createElement("span");
    nameEl.className = "tile-name";
    const status = document.createElement("span");
    status.className = "tile-status";
    cap.append(status, nameEl);
    const actions = document.createElement("div");
    actions.className = "tile-actions";
    actions.append(button("pin", "Pin", () => pin(key)), button("full", "Fullscreen", () => fullscreen(el)));
    const controls = document.createElement("div");
    controls.className = "tile-controls";
    el.append(video, off, cap, actions, controls);
    el.addEventListener("keydown", (e) => {
      if (e.target !== el) return;
      if (e.key === "p" || e.key === "Enter") { e.preventDefault(); pin(key); }
      if (e.key === "f") { e.preventDefault(); fullscreen(el); }
    });
    el.addEventListener("dblclick", () => fullscreen(el));
    strip.append(el);
    el.dataset.participant = participant;
    el.dataset.source = source;
    // Someone's video arrives: the device check steps aside (the Devices button still has it).
    if (!key.startsWith("self")) prejoinDone();
    for (const fn of tileHooks) fn(el, controls, info(el));
    document.dispatchEvent(new CustomEvent("stoa:tile", { detail: { tile: el, controls, participant, source } }));
  }
  el.dataset.participant = participant;
  el.dataset.source = source;
  el.querySelector(".tile-name").textContent = label;
  el.setAttribute("aria-label", `${label}: video. P pins it, F makes it fullscreen.`);
  renderStatus(el);
  layout();
  return el;
}

export function removeTile(key) {
  const el = document.getElementById(`tile-${key}`);
  if (el) el.remove();
  if (pinned === key) pinned = null;
  layout();
}

function pin(key) {
  pinned = pinned === key ? null : key;
  // A remote camera pinned on the page is pinned at the server too: Last-N always forwards it.
  const el = pinned && document.getElementById(`tile-${pinned}`);
  const who = el && !pinned.startsWith("self") ? el.dataset.participant || null : null;
  if (who !== pinnedWho) {
    if (pinnedWho) room.send({ type: "unpin", participant: pinnedWho });
    if (who) room.send({ type: "pin", participant: who });
    pinnedWho = who;
  }
  layout();
}

function fullscreen(el) {
  if (document.fullscreenElement === el) document.exitFullscreen();
  else if (el.requestFullscreen) el.requestFullscreen().catch((err) => console.warn("fullscreen refused", err));
}

// The whiteboard on the stage (the Board tab toggles it); it takes the stage like a screen share.
export function setBoard(open) {
  boardOpen = open;
  if (open) prejoinDone();   // the device check would cover the board: opening it means "not now"
  const board = document.getElementById("cr-board");
  if (board && board.parentElement !== main) main.append(board);
  if (board) board.hidden = !open;
  layout();
}
export const boardIsOpen = () => boardOpen;

// Presenter layout when something takes the stage (a pinned tile, the whiteboard, someone else's screen share),
// cameras as a filmstrip; otherwise a grid sized so every tile fits without scrolling.
function layout() {
  const tiles = [...stage.querySelectorAll(".tile")];
  const pinnedEl = pinned && document.getElementById(`tile-${pinned}`);
  const screen = tiles.filter((t) => t.dataset.source === "screen" && t.dataset.key !== "self-screen").pop();
  const lead = pinnedEl || (boardOpen ? null : screen);
  for (const t of tiles) {
    const isLead = t === lead;
    if (isLead && t.parentElement !== main) main.append(t);
    if (!isLead && t.parentElement !== strip) strip.append(t);
    t.classList.toggle("lead", isLead);
    const pinBtn = t.querySelector(".tile-btn.pin");
    pinBtn.setAttribute("aria-pressed", String(t.dataset.key === pinned));
    pinBtn.textContent = t.dataset.key === pinned ? "Unpin" : "Pin";
  }
  const presenter = Boolean(lead) || boardOpen;
  stage.dataset.layout = presenter ? "presenter" : "grid";
  stage.classList.toggle("empty", tiles.length === 0 && !boardOpen);
  if (!presenter) fitGrid(tiles.length);
}

function fitGrid(n) {
  const W = strip.clientWidth || stage.clientWidth;
  const H = strip.clientHeight || stage.clientHeight;
  let best = { cols: 1, size: 0 };
  for (let cols = 1; cols <= Math.max(1, n); cols++) {
    const rows = Math.ceil(n / cols);
    const w = Math.min(W / cols, (H / rows) * 16 / 9);
    if (w > best.size) best = { cols, size: w };
  }
  strip.style.setProperty("--cols", best.cols);
  strip.style.setProperty("--rows", Math.max(1, Math.ceil(n / best.cols)));
}
new ResizeObserver(() => { if (stage.dataset.layout === "grid") fitGrid(stage.querySelectorAll(".tile").length); })
  .observe(stage);

// ---- what a tile shows -------------------------------------------------------------------------

function trackOf(participant, source) {
  for (const t of tracks.values()) if (t.participant === participant && t.source === source) return t;
  return null;
}

function micWords(participant) {
  const mic = trackOf(participant, "microphone");
  return !mic ? ["mic off", "off"] : mic.muted ? ["muted", "muted"] : ["mic on", "on"];
}

const initials = (name) => name.split(/\s+/).filter(Boolean).slice(0, 2).map((w) => [...w][0].toUpperCase()).join("");

function renderStatus(el) {
  const participant = el.dataset.participant;
  const video = trackOf(participant, el.dataset.source);
  const muted = Boolean(video && video.muted);
  // Not among the videos the server sends this page (Last-N): an avatar, not the last frame frozen.
  const away = Boolean(!muted && video && forwarded && !el.dataset.key.startsWith("self")
                       && !forwarded.has(video.track_id));
  el.classList.toggle("video-off", muted || away);
  el.classList.toggle("not-forwarded", away);
  const off = el.querySelector(".tile-off");
  if (away) {
    const name = room.state.participants.get(participant)?.name || participant;
    off.replaceChildren(h("span", { class: "avatar" }, initials(name) || "?"), h("span", { class: "avatar-name" }, name));
  } else off.textContent = muted ? "Camera off" : "";
  const status = el.querySelector(".tile-status");
  if (el.dataset.source !== "camera") { status.replaceChildren(); return; }
  const [words, state] = micWords(participant);
  const mic = document.createElement("span");
  mic.className = `mic mic-${state}`;
  mic.textContent = words;
  mic.title = `Microphone: ${words}`;
  status.replaceChildren(mic);
}

function renderPeople() {
  const n = room.state.participants.size;
  const count = document.getElementById("people-count");
  count.textContent = String(n);
  count.setAttribute("aria-label", `${n} ${n === 1 ? "participant" : "participants"}`);
  count.title = count.getAttribute("aria-label");
  for (const li of document.querySelectorAll("#participants li")) {
    const id = li.dataset.identity;
    li.querySelector(".who-status")?.remove();
    const span = document.createElement("span");
    span.className = "who-status hint";
    const cam = trackOf(id, "camera");
    span.textContent = ` · ${micWords(id)[0]} · ${cam && !cam.muted ? "camera on" : "camera off"}`
      + (trackOf(id, "screen") ? " · sharing" : "");
    li.firstChild.after(span);   // right after the name, before any controls (controls.js)
  }
}

function refresh() {
  for (const el of stage.querySelectorAll(".tile")) renderStatus(el);
  renderPeople();
  layout();
}

const remember = (t) => tracks.set(t.track_id, { track_id: t.track_id, participant: t.participant, source: t.source,
                                                 kind: t.kind, muted: Boolean(t.muted) });

// Started by room-page.js before the room connects.
export function startStage(stoa) {
  room = stoa;
  const board = document.getElementById("cr-board");
  if (board) main.append(board);   // the whiteboard is shown on the stage, never in the side panel
  stoa.on("joined", (msg) => {
    if (!msg.resumed) { tracks.clear(); forwarded = null; pinnedWho = null; pinned = null; }
    for (const t of msg.room.tracks || []) remember(t);
    refresh();
  });
  stoa.on("track_published", (msg) => { remember(msg.track); refresh(); });
  stoa.on("track_unpublished", (msg) => { tracks.delete(msg.track_id); refresh(); });
  stoa.on("track_muted", (msg) => {
    const t = tracks.get(msg.track_id);
    if (t) t.muted = Boolean(msg.muted);
    refresh();
  });
  stoa.on("participant_joined", refresh);
  stoa.on("forwarded", (msg) => { forwarded = new Set(msg.track_ids); refresh(); });
  stoa.on("participant_left", (msg) => {
    for (const [id, t] of tracks) if (t.participant === msg.identity) tracks.delete(id);
    refresh();
  });
  layout();
}

// ---- keyboard shortcuts (docs/room-page.md) ------------------------------------------------------

const SHORTCUTS = { m: "btn-mic", v: "btn-camera", s: "btn-screen" };
document.addEventListener("keydown", (e) => {
  if (!e.altKey || e.ctrlKey || e.metaKey) return;
  const key = e.key.toLowerCase();
  if (key === "c") { e.preventDefault(); document.getElementById("chat-input")?.focus(); return; }
  const btn = document.getElementById(SHORTCUTS[key]);
  if (btn && !btn.disabled) { e.preventDefault(); btn.click(); }
});
