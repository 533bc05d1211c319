// Chat panel: send, reply, edit/delete own, moderators delete any and pin, typing indicator, older pages
// through GET /api/rooms/{room}/chat.
import { cfg } from "../config.js";
import { $, h } from "../dom.js";
import { act, fmtTime, isMod, me, on, readOnly, send } from "./core.js";

const TYPING_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 6000;

const messages = new Map();  // id -> message (oldest first by id)
let pinned = new Map();
const typers = new Map();    // identity -> {name, timer}
let replyTo = null;
let editing = null;
let lastTyping = 0;
let idleTimer = null;

export function mount(root) {
  const list = h("ol", { id: "chat-list", class: "cr-list chat-list", "aria-live": "polite" });
  const older = h("button", { id: "chat-older", type: "button", class: "link", onclick: loadOlder }, "Load earlier messages");
  const pins = h("div", { id: "chat-pinned", class: "cr-pinned" });
  const context = h("div", { id: "chat-context", class: "cr-context", hidden: true });
  const input = h("input", { id: "chat-input", maxlength: "4096", placeholder: "Message", "aria-label": "Chat message", autocomplete: "off",
                             oninput: onTypingInput });
  const form = h("form", { id: "chat-form", class: "cr-row", onsubmit: submit },
    input, h("button", { type: "submit", id: "chat-send" }, "Send"));
  const typing = h("div", { id: "chat-typing", class: "hint" });
  root.append(pins, older, list, typing, context, readOnly() ? h("p", { class: "hint" }, "Viewers read only.") : form);
}

function byId(id) { return messages.get(id); }

function render() {
  const list = $("chat-list");
  const ids = [...messages.keys()].sort((a, b) => a - b);
  list.replaceChildren(...ids.map((id) => item(messages.get(id))));
  list.scrollTop = list.scrollHeight;
  const pins = $("chat-pinned");
  pins.replaceChildren(...[...pinned.values()].map((m) =>
    h("div", { class: "pin", dataset: { id: m.id } }, "📌 ", h("b", {}, m.name || ""), " ", m.text)));
}

function item(m) {
  if (m.kind === "system") return h("li", { class: "system", dataset: { id: m.id } }, m.text);
  const mine = m.identity === me.identity;
  const parent = m.reply_to ? byId(m.reply_to) : null;
  const buttons = [];
  if (!readOnly()) buttons.push(h("button", { type: "button", class: "link", onclick: () => startReply(m) }, "Reply"));
  if (mine) buttons.push(h("button", { type: "button", class: "link", onclick: () => startEdit(m) }, "Edit"));
  if (mine || isMod()) {
    buttons.push(h("button", { type: "button", class: "link", onclick: () => act("chat.delete", { message_id: m.id }) }, "Delete"));
  }
  if (isMod()) {
    buttons.push(h("button", { type: "button", class: "link",
                               onclick: () => act("chat.pin", { message_id: m.id, pinned: !m.pinned }) },
                   m.pinned ? "Unpin" : "Pin"));
  }
  return h("li", { class: `msg${mine ? " mine" : ""}${m.pinned ? " pinned" : ""}`, dataset: { id: m.id, identity: m.identity } },
    m.reply_to ? h("div", { class: "reply-quote" }, "↪ ", parent ? `${parent.name}: ${parent.text.slice(0, 80)}` : "an earlier message") : null,
    h("span", { class: "who" }, m.name || m.identity), " ",
    h("span", { class: "when" }, fmtTime(m.created_at)), " ",
    h("span", { class: "text" }, m.text),
    m.edited_at ? h("span", { class: "hint" }, " (edited)") : null,
    h("span", { class: "actions" }, buttons));
}

function setContext(text) {
  const ctx = $("chat-context");
  ctx.hidden = !text;
  ctx.replaceChildren(text ? h("span", {}, text) : "",
    text ? h("button", { type: "button", class: "link", onclick: cancelContext }, "Cancel") : "");
}

function startReply(m) { replyTo = m.id; editing = null; setContext(`Replying to ${m.name}: ${m.text.slice(0, 60)}`); $("chat-input").focus(); }
function startEdit(m) { editing = m.id; replyTo = null; setContext("Editing your message"); $("chat-input").value = m.text; $("chat-input").focus(); }
function cancelContext() { replyTo = null; editing = null; setContext(""); $("chat-input").value = ""; }

async function submit(e) {
  e.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text) return;
  let ok;
  if (editing) ok = await act("chat.edit", { message_id: editing, text });
  else ok = await act("chat.send", replyTo ? { text, reply_to: replyTo } : { text });
  if (ok) { input.value = ""; cancelContext(); stopTyping(); }
}

function onTypingInput() {
  const now = Date.now();
  if (now - lastTyping > TYPING_EVERY_MS) {
    lastTyping = now;
    send("chat.typing", { typing: true });
  }
  clearTimeout(idleTimer);
  idleTimer = setTimeout(stopTyping, TYPING_EVERY_MS + 1000);
}

function stopTyping() {
  clearTimeout(idleTimer);
  if (lastTyping) send("chat.typing", { typing: false });
  lastTyping = 0;
}

function renderTyping() {
  const names = [...typers.values()].map((t) => t.name);
  $("chat-typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}

async function loadOlder() {
  const oldest = Math.min(...messages.keys());
  const q = new URLSearchParams({ limit: "50" });
  if (Number.isFinite(oldest)) q.set("before", String(oldest));
  const resp = await fetch(`/api/rooms/${encodeURIComponent(cfg.room)}/chat?${q}`,
                           { headers: { Authorization: `Bearer ${cfg.token}` } });
  if (!resp.ok) return;
  const body = await resp.json();
  for (const m of body.messages) if (!m.deleted) messages.set(m.id, m);
  if (body.next_before === null) $("chat-older").hidden = true;
  render();
}

on("state", (s) => {
  messages.clear();
  for (const m of s.chat || []) messages.set(m.id, m);
  pinned = new Map((s.pinned || []).map((m) => [m.id, m]));
  render();
});
on("chat.message", (m) => { messages.set(m.id, m); render(); });
on("chat.edited", (m) => { messages.set(m.id, { ...messages.get(m.id), ...m }); if (pinned.has(m.id)) pinned.set(m.id, m); render(); });
on("chat.deleted", (d) => { messages.delete(d.message_id); pinned.delete(d.message_id); render(); });
on("chat.pinned", (d) => {
  const m = { ...(messages.get(d.message_id) || d.message || {}), ...(d.message || {}), pinned: d.pinned };
  if (messages.has(d.message_id)) messages.set(d.message_id, m);
  if (d.pinned) pinned.set(d.message_id, m); else pinned.delete(d.message_id);
  render();
});
on("chat.typing", (d) => {
  if (d.identity === me.identity) return;
  clearTimeout(typers.get(d.identity)?.timer);
  if (d.typing) {
    typers.set(d.identity, { name: d.name || d.identity,
                             timer: setTimeout(() => { typers.delete(d.identity); renderTyping(); }, TYPING_SHOWN_MS) });
  } else typers.delete(d.identity);
  renderTyping();
});
