// Admission and end screens of the room page (docs/room-page.md, "Admission and ends"): one screen for each
// refused join (docs/protocol.md, "Refused joins"), the recording notice before joining, and what the page
// shows after a remove, ban, end or leave. Started by room-page.js with the room; never reconnects by itself
// except to join a scheduled class once a status check (not a join) says it has started.
import { cfg } from "./config.js";
import { h } from "./dom.js";

let stoa = null;           // the room (startAdmission)
let state = null;          // its state
const STATUS_POLL_MS = 5000;
let waiting = null;        // the status check of a class that has not started
let disabled = [];         // controls this page disabled at an end, enabled again on Rejoin

const when = (t) => new Date(t * 1000).toLocaleString([], { weekday: "long", day: "numeric", month: "long",
                                                            hour: "2-digit", minute: "2-digit" });

function overlay() {
  let el = document.getElementById("admission");
  if (!el) {
    el = h("section", { id: "admission", class: "admission", role: "dialog", "aria-modal": "true",
                        "aria-labelledby": "admission-title" });
    document.body.append(el);
  }
  return el;
}

// One screen: its kind (data-screen, for tests and styles), a title, lines of text, then actions.
function show(kind, title, lines, actions = []) {
  const el = overlay();
  el.dataset.screen = kind;
  el.hidden = false;
  el.replaceChildren(h("div", { class: "admission-card" },
    h("h1", { id: "admission-title" }, title),
    ...lines.filter(Boolean).map((l) => (l instanceof Node ? l : h("p", {}, l))),
    actions.length ? h("div", { class: "admission-actions" }, ...actions) : ""));
  const first = el.querySelector("input, button, a");
  if (first) first.focus();
}

function hide() {
  const el = document.getElementById("admission");
  if (el) el.hidden = true;
}

const button = (label, onclick, primary = false) =>
  h("button", { type: "button", class: primary ? "primary" : "secondary", onclick }, label);

function join(opts) {
  stopWaiting();
  hide();
  enableAgain();
  stoa.rejoin(opts);
}

// -- before joining: consent -------------------------------------------------------------------------------

function consent() {
  const now = cfg.recorded === "recording";
  show("consent", now ? "This class is being recorded" : "This class will be recorded", [
    "What you say and show (camera, microphone, screen) and what you write in the chat are recorded.",
    "The recording can be watched later by the teacher and the class.",
  ], [
    button("Join and agree", () => { hide(); stoa.connect(); }, true),
    button("Do not join", () => show("declined", "You did not join",
      ["Nothing was recorded of you. You can close this page."],
      [button("Join after all", () => { hide(); stoa.connect(); })])),
  ]);
}

// -- refused joins -----------------------------------------------------------------------------------------

function refused(msg) {
  const c = msg.code;
  if (c === "session_not_live" && msg.status === "scheduled") return notStarted(msg);
  if (c === "session_not_live") {
    const link = msg.recording_id
      ? h("p", {}, h("a", { href: `/recordings/${encodeURIComponent(msg.recording_id)}?token=${encodeURIComponent(cfg.token)}`,
                          class: "recording-link" }, "Watch the recording"))
      : h("p", { class: "hint" }, "There is no recording of it.");
    return show("ended", msg.status === "cancelled" ? "This class was cancelled" : "This class has ended",
      [msg.title ? `“${msg.title}” is over.` : "", msg.status === "cancelled" ? "" : link]);
  }
  if (c === "room_full" || c === "session_full") {
    return show("full", "This class is full", [
      "Every seat is taken. A seat frees up when someone leaves.",
    ], [button("Try again", () => join(), true)]);
  }
  if (c === "banned") {
    return show("banned", "You cannot join this class", [
      "The teacher banned you from this session.",
      msg.reason ? h("p", { class: "reason" }, `Reason: ${msg.reason}`) : "",
    ]);
  }
  if (c === "bad_password") return password(msg.password === "wrong");
  if (c === "unauthorized") {
    if (msg.reason === "expired") {
      return show("expired", "This link has expired", ["Ask your teacher for a new link to the class."]);
    }
    if (msg.reason === "other_room") {
      return show("other-room", "This link is for another class", [
        "The link you opened belongs to a different room. Ask your teacher for the link to this class."]);
    }
    return show("bad-link", "This link does not work", [msg.message, "Ask your teacher for a new link."]);
  }
  return show("refused", "You cannot join this class", [msg.message]);
}

function notStarted(msg) {
  const title = msg.title ? `“${msg.title}”` : "The class";
  show("not-started", "This class has not started yet", [
    msg.scheduled_start ? `${title} is scheduled for ${when(msg.scheduled_start)}.` : `${title} has not been started by the teacher.`,
    "Keep this page open: it joins by itself when the teacher starts the class.",
    cfg.recorded ? "The class will be recorded." : "",
  ]);
  if (!msg.session_id) return;
  // A status check of the session (GET, the page's own token), not a join: no join attempt until it is live.
  stopWaiting();
  waiting = setInterval(async () => {
    try {
      const r = await fetch(`/api/sessions/${encodeURIComponent(msg.session_id)}`,
                            { headers: { Authorization: `Bearer ${cfg.token}` } });
      if (!r.ok) return;
      const s = await r.json();
      if (s.status === "live") join();
      else if (s.status !== "scheduled") refused({ ...msg, status: s.status });
    } catch (err) { /* offline for a moment: check again next time */ }
  }, STATUS_POLL_MS);
}

function stopWaiting() {
  if (waiting) clearInterval(waiting);
  waiting = null;
}

function password(wrong) {
  const input = h("input", { type: "password", id: "admission-password", name: "password", autocomplete: "off",
                             required: true, "aria-describedby": "admission-password-hint" });
  const form = h("form", { class: "admission-form", onsubmit: (e) => { e.preventDefault(); join({ password: input.value }); } },
    h("label", {}, "Password", input),
    h("button", { type: "submit", class: "primary" }, "Join"));
  show(wrong ? "password-wrong" : "password", wrong ? "That password is wrong" : "This class needs a password", [
    h("p", { id: "admission-password-hint" }, wrong ? "Check the password your teacher gave you and try again."
      : "Enter the password your teacher gave you."),
    form,
  ]);
  input.focus();
}

// -- ends --------------------------------------------------------------------------------------------------

const ENDS = {
  removed: { title: "You were removed from the class", rejoin: true },
  banned: { title: "You were banned from this session", rejoin: false },
  ended: { title: "The class has ended", rejoin: false },
  replaced: { title: "You joined from another tab or device", rejoin: true, again: "Use this tab instead" },
  left: { title: "You left the class", rejoin: true },
  closed: { title: "The class was closed", rejoin: true },
};

function ended(msg) {
  stopMedia();
  clearStale();
  disableInput();
  const end = ENDS[msg.code] || { title: "You are no longer in the class", rejoin: true };
  const lines = [];
  if (msg.code === "banned") {
    lines.push("You cannot come back to this session.");
    if (msg.ban_reason) lines.push(h("p", { class: "reason" }, `Reason: ${msg.ban_reason}`));
  } else if (msg.code === "removed") {
    lines.push(msg.reason && !msg.reason.startsWith("removed by ") ? h("p", { class: "reason" }, `Reason: ${msg.reason}`)
      : "The teacher removed you. You may join again.");
  } else if (msg.code === "ended") {
    lines.push("Thank you for taking part.");
  } else if (msg.code !== "left" && msg.reason) {
    lines.push(msg.reason);
  }
  show(`end-${msg.code || "other"}`, end.title, lines,
    end.rejoin ? [button(end.again || "Rejoin", () => join(), true)] : []);
}

function stopMedia() {
  for (const key of ["camera", "screen"]) {
    if (state[key]) for (const t of state[key].getTracks()) t.stop();
    state[key] = null;
  }
  for (const el of document.querySelectorAll("#stage .tile")) el.remove();
  for (const el of document.querySelectorAll("audio")) el.remove();
  const cam = document.getElementById("btn-camera");
  if (cam) cam.textContent = "Start camera";
}

function clearStale() {
  state.participants.clear();
  stoa.renderParticipants();
  for (const id of ["hand-queue", "unmute-requests"]) {
    const el = document.getElementById(id);
    if (el) el.replaceChildren();
  }
  const status = document.getElementById("hand-status");
  if (status) status.textContent = "";
}

function disableInput() {
  for (const el of document.querySelectorAll("header button, main button, main input, main textarea, main select")) {
    if (!el.disabled) { el.disabled = true; disabled.push(el); }
  }
}

function enableAgain() {
  for (const el of disabled) el.disabled = false;
  disabled = [];
  const mic = document.getElementById("btn-mic");
  if (mic && !state.camera) mic.disabled = true;
}

// Before the room connects; a room that records asks first, and connects on "Join and agree".
export function startAdmission(room) {
  stoa = room;
  state = room.state;
  stoa.on("error", (msg) => { if (msg === state.refused) refused(msg); });
  stoa.on("left", (msg) => ended(msg));
  stoa.on("joined", () => { stopWaiting(); hide(); });
  if (cfg.recorded && !state.ws) consent();
}
