// Tutoring dashboard: renders the view from GET /api/tutoring, then re-renders from every message on
// /ws/notify (each carries a fresh view). No polling: a dropped socket reconnects with backoff.
// Instructors also get the quiz bank upload and the feedback on their sessions (GET /api/feedback).
import { $, h } from "./dom.js";
import { quizBankForm } from "./quizbank.js";

const cfg = JSON.parse(document.getElementById("dashboard-config").textContent);
const state = { view: null, ws: null, retry: 0, joins: new Map() };
window.stoaDashboard = { state, cfg };

function setBanner(kind, text) {
  const b = $("banner");
  b.className = `banner ${kind}`;
  b.textContent = text;
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${cfg.token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = res.status === 204 ? null : await res.json();
  if (!res.ok) throw new Error(data && data.detail ? data.detail : `HTTP ${res.status}`);
  return data;
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "";
}

function describe(r) {
  const about = [r.course_ref, r.lesson_ref].filter(Boolean).join(" · ") || "general help";
  const who = cfg.role === "instructor" ? `${r.student_name || r.student}: ` : "";
  return h("span", { class: "what" }, `${who}${about}`, r.note ? h("span", { class: "hint" }, ` — ${r.note}`) : null);
}

function report(text) {
  const li = h("li", {}, `${new Date().toLocaleTimeString()} ${text}`);
  $("events").prepend(li);
}

async function join(r) {
  try {
    const link = state.joins.get(r.id) || (await api("GET", `/api/tutoring/${r.id}/join`));
    window.location.assign(link.url);
  } catch (e) {
    report(`Cannot join: ${e.message}`);
  }
}

function item(r, actions) {
  return h("li", { dataset: { id: r.id, status: r.status } }, describe(r), ...actions);
}

function renderList(id, items, actions, emptyText) {
  const ul = $(id);
  if (!ul) return;
  ul.replaceChildren(...(items.length ? items.map((r) => item(r, actions(r))) : [h("li", { class: "empty" }, emptyText)]));
}

function render(view) {
  state.view = view;
  const c = view.counts || {};
  $("counts").replaceChildren(...Object.entries(c).map(([k, v]) => h("span", { dataset: { count: k } }, `${k}: ${v}`)));
  const joinLink = (r) => h("a", { class: "join", href: `/api/tutoring/${r.id}/join`, onclick: (e) => { e.preventDefault(); join(r); } }, "Join room");
  const endBtn = (r) => h("button", { type: "button", class: "end", onclick: () => act(r, "end") }, "End");
  if (cfg.role === "instructor") {
    renderList("pending", view.pending || [], (r) => {
      const reason = h("input", { class: "reason", placeholder: "reason (if rejecting)", maxlength: 1000 });
      return [
        h("span", { class: "hint" }, `asked ${when(r.created_at)}`),
        h("button", { type: "button", class: "accept", onclick: () => accept(r) }, "Accept"),
        reason,
        h("button", { type: "button", class: "reject", onclick: () => act(r, "reject", { reason: reason.value }) }, "Reject"),
      ];
    }, "No one is waiting.");
  } else {
    renderList("pending", view.pending || [], (r) => [
      h("span", { class: "hint" }, `expires ${when(r.expires_at)}`),
      h("button", { type: "button", class: "cancel", onclick: () => act(r, "cancel") }, "Withdraw"),
    ], "Nothing pending.");
    renderList("closed", view.closed || [], (r) => [
      h("span", { class: "hint reason" }, r.status === "rejected" ? `rejected: ${r.reason || "no reason given"}` : r.status),
    ], "None.");
  }
  renderList("active", view.active || [], (r) => [joinLink(r), endBtn(r)], "No active session.");
  renderList("completed", view.completed || [], (r) => [
    h("span", { class: "hint duration" }, r.duration_s != null ? `${Math.round(r.duration_s)} s` : ""),
  ], "None yet.");
}

async function act(r, verb, body) {
  try {
    await api("POST", `/api/tutoring/${r.id}/${verb}`, body);
  } catch (e) {
    report(`Could not ${verb}: ${e.message}`);
  }
}

async function accept(r) {
  try {
    const out = await api("POST", `/api/tutoring/${r.id}/accept`);
    window.location.assign(out.join.url);
  } catch (e) {
    report(`Could not accept: ${e.message}`);
  }
}

const WORDS = {
  "tutoring.requested": (r) => (cfg.role === "instructor" ? `${r.student_name || r.student} asked for help` : "Your request was sent"),
  "tutoring.accepted": (r) => (cfg.role === "instructor" ? `${r.instructor_name || r.instructor} took ${r.student_name || r.student}'s request` : `${r.instructor_name || r.instructor} accepted your request`),
  "tutoring.rejected": (r) => (cfg.role === "instructor" ? `${r.student_name || r.student}'s request was rejected` : `Your request was rejected: ${r.reason || "no reason given"}`),
  "tutoring.cancelled": (r) => `${r.student_name || r.student} withdrew a request`,
  "tutoring.expired": (r) => (cfg.role === "instructor" ? `${r.student_name || r.student}'s request expired` : "Your request expired: nobody was free"),
  "tutoring.ended": (r) => `The session with ${cfg.role === "instructor" ? r.student_name || r.student : r.instructor_name || r.instructor} ended`,
};

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws/notify?token=${encodeURIComponent(cfg.token)}`);
  state.ws = ws;
  ws.onopen = () => { state.retry = 0; setBanner("ok", "Live"); };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "ready") render(msg.view);
    else if (msg.type === "tutoring") {
      if (msg.join) state.joins.set(msg.request.id, msg.join);
      render(msg.view);
      const words = WORDS[msg.event];
      if (words) report(words(msg.request));
    }
  };
  ws.onclose = () => {
    setBanner("bad", "Disconnected; reconnecting…");
    const delay = Math.min(30000, 500 * 2 ** state.retry++);
    setTimeout(connect, delay);
  };
}

const form = $("request-form");
if (form) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    for (const k of ["course_ref", "lesson_ref"]) if (!data[k]) delete data[k];
    $("form-error").hidden = true;
    try {
      await api("POST", "/api/tutoring", data);
      form.reset();
    } catch (e) {
      $("form-error").textContent = e.message;
      $("form-error").hidden = false;
    }
  });
}

function renderFeedback(report) {
  const sessions = (report.sessions || []).filter((s) => s.summary.count);
  $("feedback-sessions").replaceChildren(...(sessions.length ? sessions.map((s) => h("li", { dataset: { session: s.session_id } },
    h("span", { class: "what" }, h("strong", {}, s.title),
      ` ${s.summary.average} / 5 from ${s.summary.count} ${s.summary.count === 1 ? "person" : "people"}`,
      h("ul", { class: "comments" }, ...s.items.filter((f) => f.comment).map((f) =>
        h("li", {}, h("span", { title: `${f.rating} of 5`, "aria-label": `${f.rating} of 5` }, "★".repeat(f.rating)),
          ` ${f.name}: ${f.comment}`))))))
    : [h("li", { class: "empty" }, "No feedback yet.")]));
}

if (cfg.role === "instructor") {
  $("quiz-banks").append(quizBankForm(cfg.token, { id: "quiz-bank-upload" }));
  api("GET", "/api/feedback").then(renderFeedback).catch((e) => report(`Feedback could not be loaded: ${e.message}`));
}

api("GET", "/api/tutoring").then(render).catch((e) => setBanner("bad", e.message));
connect();
