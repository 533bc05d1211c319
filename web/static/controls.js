// Teacher controls and media states on the room page (docs/room-page.md, "Teacher controls"): per participant
// mute microphone, stop camera, remove, ban; lower all hands; start and stop recording; the recording
// indicator; "muted by the teacher" with a request to unmute; mic and camera states of everyone; "the host
// left". The server enforces every rule (docs/protocol.md, moderate); these are only its buttons.
// Started by room-page.js with the room.
import { cfg } from "./config.js";
import { $, h, notify } from "./dom.js";
import { send as classroomSend } from "./classroom/core.js";

let stoa = null;            // the room (startControls)
let state = null;           // its state
const staff = cfg.role === "instructor" || cfg.role === "moderator";
const tracks = new Map();   // track_id -> {track_id, participant, source, kind, muted, by}
const roles = new Map();    // identity -> role
const locked = new Map();   // identity -> Set of sources the staff muted (the server's muted_by_staff)
const lockedSet = (identity) => { if (!locked.has(identity)) locked.set(identity, new Set()); return locked.get(identity); };
const byStaff = (t) => Boolean(t && t.muted && (t.by || lockedSet(t.participant).has(t.source)));
const SOURCE_WORDS = { microphone: "microphone", camera: "camera", screen: "screen share", screen_audio: "screen audio" };

// Where a participant's controls and states go: their list entry and their tiles. Point these at the
// tiles' `.tile-controls` containers once the stage layout has them.
const entriesOf = (identity) => [...document.querySelectorAll(`#participants li[data-identity="${CSS.escape(identity)}"]`)];
const tilesOf = (identity) => [...document.querySelectorAll(`#stage .tile[data-participant="${CSS.escape(identity)}"]`)];
const nameOf = (identity) => (state.participants.get(identity) || {}).name || identity;
const trackOf = (identity, source) => [...tracks.values()].find((t) => t.participant === identity && t.source === source);

// -- the header: recording indicator and staff buttons -----------------------------------------------------

const indicator = h("span", { id: "rec-indicator", class: "rec-indicator", role: "status", hidden: true,
                              title: "Everything said, shown and written is being recorded" }, "Recording");
const notices = h("div", { id: "room-notices", class: "room-notices", "aria-live": "polite" });
const recordBtn = staff
  ? h("button", { type: "button", id: "btn-record", class: "secondary", onclick: toggleRecording }, "Start recording")
  : null;

function mount() {
  const bar = document.querySelector("header.bar .controls") || document.querySelector("header.bar");
  bar.prepend(indicator);
  document.querySelector("header.bar").after(notices);
  if (staff) {
    const lower = h("button", { type: "button", id: "btn-lower-hands", class: "secondary", onclick: lowerAll }, "Lower all hands");
    indicator.after(recordBtn, lower);
    document.body.append(h("div", { id: "unmute-requests", class: "unmute-requests", "aria-live": "polite" }));
  }
}

function setRecording(on) {
  indicator.hidden = !on;
  document.body.classList.toggle("recording", on);
  if (recordBtn) recordBtn.textContent = on ? "Stop recording" : "Start recording";
}

function toggleRecording() {
  stoa.send({ type: "recording", action: indicator.hidden ? "start" : "stop" });
}

async function lowerAll() {
  try {
    const out = await classroomSend("hand.lower_all", {});
    notify(out.lowered && out.lowered.length ? `Lowered ${out.lowered.length} hand(s)` : "No hands were raised");
  } catch (err) {
    notify(`Could not lower the hands: ${err.message}`, "bad");
  }
}

// A notice under the header (muted by the teacher, the host left); `key` replaces an earlier one.
function notice(key, text, ...actions) {
  let el = notices.querySelector(`[data-key="${key}"]`);
  if (!text) { if (el) el.remove(); return; }
  const body = [h("span", {}, text), ...actions];
  if (el) el.replaceChildren(...body);
  else notices.append(h("div", { class: "room-notice", dataset: { key } }, ...body));
}

// -- tracks and their states -------------------------------------------------------------------------------

function learn(t) {
  tracks.set(t.track_id, { ...tracks.get(t.track_id), ...t });
}

function render() {
  const seen = new Set([...state.participants.keys(), ...[...tracks.values()].map((t) => t.participant)]);
  for (const identity of seen) {
    const mic = trackOf(identity, "microphone");
    const cam = trackOf(identity, "camera");
    const micOff = !mic || mic.muted;
    const camOff = !cam || cam.muted;
    for (const li of entriesOf(identity)) {
      li.dataset.mic = micOff ? "off" : "on";
      li.dataset.camera = camOff ? "off" : "on";
      let badge = li.querySelector(".p-state");
      if (!badge) { badge = h("span", { class: "p-state" }); li.append(badge); }
      badge.textContent = [mic && mic.muted ? (byStaff(mic) ? "muted by the teacher" : "muted") : "",
                           cam && cam.muted ? "camera off" : ""].filter(Boolean).join(" · ");
      // The instructor cannot be muted or removed (the server refuses it): no buttons for them.
      if (staff && identity !== cfg.identity && roles.get(identity) !== "instructor") decorate(li, identity, mic, cam);
    }
    // Classmates see a muted state, not a frozen last frame.
    for (const tile of tilesOf(identity)) {
      const t = tracks.get(tile.dataset.trackId);
      const off = t && t.muted;
      tile.classList.toggle("video-muted", Boolean(off));
      tile.classList.toggle("mic-muted", Boolean(mic && mic.muted));
      let veil = tile.querySelector(".tile-veil");
      if (off && !veil) { veil = h("div", { class: "tile-veil" }); tile.append(veil); }
      if (veil) {
        veil.hidden = !off;
        veil.textContent = off ? `${nameOf(identity)}: ${byStaff(t) ? "camera stopped by the teacher" : "camera off"}` : "";
      }
    }
  }
}

// Per participant staff buttons, in a `.tile-controls` container (kept when the list is rendered again).
function decorate(li, identity, mic, cam) {
  let box = li.querySelector(".tile-controls");
  if (!box) {
    box = h("span", { class: "tile-controls", role: "group", "aria-label": `Controls for ${nameOf(identity)}` });
    li.append(box);
  }
  const name = nameOf(identity);
  // Accessible names start with the visible text (WCAG 2.5.3), then say whose.
  const micText = mic && mic.muted ? "Mic muted" : "Mute mic";
  const camText = cam && cam.muted ? "Camera stopped" : "Stop camera";
  const buttons = [
    h("button", { type: "button", class: "ctl", dataset: { action: "mute-mic" }, disabled: !mic || mic.muted,
                  "aria-label": `${micText}: ${name}`, onclick: () => moderate("mute", identity, { track_id: mic.track_id }) },
      micText),
    h("button", { type: "button", class: "ctl", dataset: { action: "stop-camera" }, disabled: !cam || cam.muted,
                  "aria-label": `${camText}: ${name}`, onclick: () => moderate("mute", identity, { track_id: cam.track_id }) },
      camText),
    h("button", { type: "button", class: "ctl", dataset: { action: "remove" }, "aria-label": `Remove: ${name}`,
                  onclick: () => confirmAction("remove", identity) }, "Remove"),
    h("button", { type: "button", class: "ctl danger", dataset: { action: "ban" }, "aria-label": `Ban: ${name}`,
                  onclick: () => confirmAction("ban", identity) }, "Ban"),
  ];
  if (state.leaving) for (const b of buttons) b.disabled = true;
  box.replaceChildren(...buttons);
}

function moderate(action, identity, extra = {}) {
  stoa.send({ type: "moderate", action, identity, ...extra });
}

// Remove and ban ask first, with an optional reason (the student is shown it).
function confirmAction(action, identity) {
  let dialog = $("mod-dialog");
  if (!dialog) {
    dialog = h("dialog", { id: "mod-dialog", class: "mod-dialog", "aria-labelledby": "mod-dialog-title" });
    document.body.append(dialog);
  }
  const reason = h("input", { type: "text", id: "mod-reason", maxlength: 500, placeholder: "Shown to them (optional)" });
  const name = nameOf(identity);
  dialog.replaceChildren(h("form", { method: "dialog", onsubmit: (e) => {
    e.preventDefault();
    moderate(action, identity, reason.value.trim() ? { reason: reason.value.trim() } : {});
    dialog.close();
  } },
    h("h2", { id: "mod-dialog-title" }, action === "ban" ? `Ban ${name}?` : `Remove ${name}?`),
    h("p", {}, action === "ban" ? "They leave now and cannot come back to this session."
      : "They leave now; they may join again."),
    h("label", {}, "Reason", reason),
    h("div", { class: "admission-actions" },
      h("button", { type: "submit", class: action === "ban" ? "danger" : "primary", id: "mod-confirm" },
        action === "ban" ? "Ban" : "Remove"),
      h("button", { type: "button", class: "secondary", onclick: () => dialog.close() }, "Cancel"))));
  dialog.showModal();
  reason.focus();
}

// -- muted by the teacher (this participant's own tracks) --------------------------------------------------

function ownMutedByStaff(t) {
  const what = SOURCE_WORDS[t.source] || t.source;
  const local = t.source === "microphone" ? state.camera?.getAudioTracks()[0]
    : t.source === "camera" ? state.camera?.getVideoTracks()[0] : null;
  if (local) local.enabled = false;  // nothing leaves this page either
  const mic = $("btn-mic");
  if (t.source === "microphone" && mic) {
    mic.textContent = "Muted by the teacher";
    mic.onclick = () => askUnmute(t);
  }
  notice(`own-${t.source}`, `The teacher ${t.source === "camera" ? "stopped your camera" : `muted your ${what}`}.`,
    h("button", { type: "button", class: "secondary", id: `ask-unmute-${t.source}`, onclick: () => askUnmute(t) }, "Ask to unmute"));
}

function askUnmute(t) {
  stoa.send({ type: "unmute_request", track_id: t.track_id });
  notice(`own-${t.source}`, "You asked the teacher to let you unmute. Wait for them to allow it.");
}

function ownAllowed(msg) {
  for (const source of msg.sources || []) lockedSet(cfg.identity).delete(source);
  for (const id of msg.track_ids || []) {
    const t = tracks.get(id);
    if (t) t.by = null;
  }
  for (const source of msg.sources || []) {
    if (source === "microphone" && $("btn-mic")) {
      $("btn-mic").textContent = "Unmute mic";
      $("btn-mic").onclick = stoa.toggleMic;
    }
    const t = trackOf(cfg.identity, source);
    const turnOn = source === "camera" && t
      ? h("button", { type: "button", class: "primary", onclick: () => {
          const v = state.camera?.getVideoTracks()[0];
          if (v) v.enabled = true;
          stoa.send({ type: "mute", track_id: t.track_id, muted: false });
          notice("own-camera", null);
        } }, "Turn camera on")
      : "";
    notice(`own-${source}`, source === "microphone" ? "The teacher allows you to unmute. Use “Unmute mic” when you want to speak."
      : `The teacher allows your ${SOURCE_WORDS[source] || source} again.`, turnOn);
  }
  render();
}

// Staff: a participant asks to unmute.
function unmuteRequest(msg) {
  const box = $("unmute-requests");
  if (!box) return;
  const key = `${msg.identity}-${msg.source}`;
  box.querySelector(`[data-key="${CSS.escape(key)}"]`)?.remove();
  const item = h("div", { class: "room-notice", dataset: { key, identity: msg.identity }, role: "status" },
    h("span", {}, `${msg.name || msg.identity} asks to unmute their ${SOURCE_WORDS[msg.source] || msg.source}.`),
    h("button", { type: "button", class: "primary", onclick: () => {
      moderate("allow_unmute", msg.identity, { track_id: msg.track_id });
      item.remove();
    } }, "Allow"),
    h("button", { type: "button", class: "secondary", onclick: () => item.remove() }, "Dismiss"));
  box.append(item);
}

function hostAway(leaving = null) {
  if (cfg.role === "instructor") return false;
  return ![...roles].some(([identity, role]) => role === "instructor" && identity !== leaving);
}

// -- room protocol events ----------------------------------------------------------------------------------

export function startControls(room) {
  stoa = room;
  state = room.state;
  mount();
  stoa.on("joined", (msg) => {
    if (!msg.resumed) tracks.clear();
    roles.clear();
    locked.clear();
    for (const p of msg.room.participants) {
      roles.set(p.identity, p.role);
      locked.set(p.identity, new Set(p.muted_by_staff || []));
      for (const t of p.tracks || []) learn(t);
    }
    for (const t of msg.room.tracks || []) learn(t);
    setRecording(Boolean(msg.recording));
    notice("host", hostAway() ? "The host has not joined yet." : null);
    render();
  });
  stoa.on("participant_joined", (msg) => {
    roles.set(msg.participant.identity, msg.participant.role);
    locked.set(msg.participant.identity, new Set(msg.participant.muted_by_staff || []));
    if (msg.participant.role === "instructor") notice("host", null);
    render();
  });
  stoa.on("participant_left", (msg) => {
    for (const [id, t] of tracks) if (t.participant === msg.identity) tracks.delete(id);
    if (roles.get(msg.identity) === "instructor" && msg.identity !== cfg.identity && hostAway(msg.identity)) {
      notice("host", "The host left. You can stay: the class goes on when they come back.");
    }
    roles.delete(msg.identity);
    render();
  });
  stoa.on("track_published", (msg) => {
    learn(msg.track);
    const t = tracks.get(msg.track.track_id);
    if (t.participant === cfg.identity && byStaff(t)) {
      // A new track of a source the teacher muted starts muted (the server keeps the mute, across rejoins too).
      for (const [id, o] of tracks) if (id !== t.track_id && o.participant === cfg.identity && o.source === t.source) tracks.delete(id);
      ownMutedByStaff(t);
    }
    render();
  });
  stoa.on("track_unpublished", (msg) => {
    tracks.delete(msg.track_id);
    render();
  });
  stoa.on("track_muted", (msg) => {
    const t = tracks.get(msg.track_id) || { track_id: msg.track_id, participant: msg.participant };
    learn({ ...t, muted: msg.muted, by: msg.muted ? (msg.by || (t.by && t.muted ? t.by : null)) : null });
    const sources = lockedSet(msg.participant);
    const source = tracks.get(msg.track_id).source;
    if (msg.muted && msg.by && source) sources.add(source);
    else if (!msg.muted && source) sources.delete(source);
    if (msg.participant === cfg.identity && msg.muted && msg.by) ownMutedByStaff(tracks.get(msg.track_id));
    if (msg.participant === cfg.identity && !msg.muted) notice(`own-${tracks.get(msg.track_id).source}`, null);
    render();
  });
  stoa.on("recording", (msg) => {
    if (msg.state === "started") setRecording(true);
    else if (msg.state === "stopped") setRecording(false);
    else if (msg.state === "error") indicator.title = `Recording problem: ${msg.error}`;
  });
  stoa.on("recording_ok", (msg) => setRecording(msg.action === "start"));
  stoa.on("moderated", (msg) => {
    const name = nameOf(msg.identity);
    const words = { mute: `${name} is muted`, remove: `${name} was removed`, ban: `${name} was banned`,
                    allow_unmute: `${name} may unmute again` };
    notify(words[msg.action] || "Done");
  });
  stoa.on("unmute_request", unmuteRequest);
  stoa.on("unmute_allowed", ownAllowed);
  stoa.on("error", (msg) => {
    if (msg.code === "muted_by_moderator") notify("The teacher muted this; ask to unmute first", "bad");
    else if (["moderate", "recording", "unmute_request"].includes(msg.ref)) notify(msg.message, "bad");
  });
  stoa.on("left", () => {
    tracks.clear();
    roles.clear();
    notice("host", null);
    setRecording(false);
  });
  // The list is rendered again on every join and leave (room.js): put states and controls back each time.
  new MutationObserver(() => render()).observe($("participants"), { childList: true });
  new MutationObserver(() => render()).observe($("stage"), { childList: true });
}
