// Chat panel: send, reply, edit/delete own, moderators delete any and pin, typing indicator, older pages
// through GET /api/rooms/{room}/chat. Rendered line by line: a new message is appended, an edit or delete
// changes its own line; at the bottom the list follows new lines, scrolled up it stays where the reader is and
// a "new messages" button takes them down (docs/room-page.md, "Chat").
import { cfg } from "../config.js";
import { $, h } from "../dom.js";
import { act, fmtTime, isMod, me, on, readOnly, send } from "./core.js";

const TYPING_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 6000;
const BOTTOM_SLACK_PX = 24;  // this close to the bottom counts as at the bottom

const messages = new Map();  // id -> message
const lines = new Map();     // id -> its <li> in #chat-list
let pinned = new Map();
let stuck = true;            // the reader is at the bottom: new lines scroll into view
let unseen = 0;              // lines that arrived while scrolled up
const typers = new Map();    // identity -> {name, timer}
let replyTo = null;
let editing = null;
let lastTyping = 0;
let idleTimer = null;

export function mount(root) {
  const list = h("ol", { id: "chat-list", class: "cr-list chat-list", "aria-live": "polite", onscroll: onScroll });
  const jump = h("button", { id: "chat-new", type: "button", class: "chat-new", hidden: true, onclick: toBottom },
                 "New messages");
  const older = h("button", { id: "chat-older", type: "button", class: "link", onclick: loadOlder }, "Load earlier messages");
  const pins = h("div", { id: "chat-pinned", class: "cr-pinned" });
  const context = h("div", { id: "chat-context", class: "cr-context", hidden: true });
  const input = h("input", { id: "chat-input", maxlength: "4096", placeholder: "Message", "aria-label": "Chat message", autocomplete: "off",
                             oninput: onTypingInput });
  const form = h("form", { id: "chat-form", class: "cr-row", onsubmit: submit },
    input, h("button", { type: "submit", id: "chat-send" }, "Send"));
  const typing = h("div", { id: "chat-typing", class: "hint" });
  root.append(pins, older, h("div", { class: "chat-view" }, list, jump), typing, context,
    readOnly() ? h("p", { class: "hint" }, "Viewers read only.") : form);
  // The list changes size (a reply box opens, the phone's Chat tab is shown): one at the bottom stays there.
  new ResizeObserver(() => { if (stuck) list.scrollTop = list.scrollHeight; }).observe(list);
}

function byId(id) { return messages.get(id); }

// ---- the list, line by line --------------------------------------------------------------------------

function onScroll() {
  const list = $("chat-list");
  if (!list.clientHeight) return;  // hidden (another tab on a phone): nothing was scrolled
  stuck = list.scrollHeight - list.scrollTop - list.clientHeight <= BOTTOM_SLACK_PX;
  if (stuck) showUnseen(0);
}

function toBottom() {
  const list = $("chat-list");
  stuck = true;
  list.scrollTop = list.scrollHeight;
  showUnseen(0);
}

function showUnseen(n) {
  unseen = n;
  const jump = $("chat-new");
  jump.hidden = n === 0;
  jump.textContent = n === 1 ? "1 new message" : `${n} new messages`;
}

// Runs `change` on the list and keeps what the reader sees: at the bottom, the bottom; scrolled up, the first
// line in view stays where it was on screen (a line above it edited, deleted or loaded). Not the browser's
// scroll anchoring (overflow-anchor: none): not every browser has it.
function keepView(change) {
  const list = $("chat-list");
  if (stuck) { change(); list.scrollTop = list.scrollHeight; return; }
  const top = list.getBoundingClientRect().top;
  const anchor = [...list.children].find((li) => li.getBoundingClientRect().bottom > top);
  const id = anchor && Number(anchor.dataset.id);
  const before = anchor && anchor.getBoundingClientRect().top;
  change();
  const after = lines.get(id) || (anchor && anchor.isConnected ? anchor : null);
  if (after) list.scrollTop += after.getBoundingClientRect().top - before;
}

// The line of message m, new (in id order: a new message goes last) or in place of its old one.
function place(m) {
  const list = $("chat-list");
  const li = item(m);
  const old = lines.get(m.id);
  lines.set(m.id, li);
  if (old) { old.replaceWith(li); return; }
  const next = list.lastElementChild && Number(list.lastElementChild.dataset.id) > m.id
    ? [...list.children].find((el) => Number(el.dataset.id) > m.id) : null;
  list.insertBefore(li, next);
}

function unplace(id) {
  lines.get(id)?.remove();
  lines.delete(id);
}

// Replies quote their parent: redraw them when it changes or goes.
function redrawReplies(id) {
  for (const m of messages.values()) if (m.reply_to === id && lines.has(m.id)) place(m);
}

function renderPins() {
  $("chat-pinned").replaceChildren(...[...pinned.values()].map((m) =>
    h("div", { class: "pin", dataset: { id: m.id } }, "📌 ", h("b", {}, m.name || ""), " ", m.text)));
}

function reset(all) {
  messages.clear();
  for (const m of all) messages.set(m.id, m);
  keepView(() => {
    lines.clear();
    const ids = [...messages.keys()].sort((a, b) => a - b);
    for (const id of ids) lines.set(id, item(messages.get(id)));
    $("chat-list").replaceChildren(...ids.map((id) => lines.get(id)));
  });
}

function added(m) {
  messages.set(m.id, m);
  // Your own line takes you to the bottom; another's, scrolled up, is counted on the button instead.
  if (m.identity === me.identity && m.kind !== "system") stuck = true;
  const fresh = !lines.has(m.id);
  keepView(() => place(m));
  if (fresh && !stuck) showUnseen(unseen + 1);
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
  const older = body.messages.filter((m) => !m.deleted);
  for (const m of older) messages.set(m.id, m);
  if (body.next_before === null) $("chat-older").hidden = true;
  keepView(() => { for (const m of older) place(m); });
}

on("state", (s) => {
  pinned = new Map((s.pinned || []).map((m) => [m.id, m]));
  reset(s.chat || []);
  renderPins();
});
on("chat.message", added);
on("chat.edited", (m) => {
  const merged = { ...messages.get(m.id), ...m };
  messages.set(m.id, merged);
  if (pinned.has(m.id)) { pinned.set(m.id, m); renderPins(); }
  keepView(() => { place(merged); redrawReplies(m.id); });
});
on("chat.deleted", (d) => {
  messages.delete(d.message_id);
  if (pinned.delete(d.message_id)) renderPins();
  keepView(() => { unplace(d.message_id); redrawReplies(d.message_id); });
});
on("chat.pinned", (d) => {
  const m = { ...(messages.get(d.message_id) || d.message || {}), ...(d.message || {}), pinned: d.pinned };
  if (d.pinned) pinned.set(d.message_id, m); else pinned.delete(d.message_id);
  renderPins();
  if (messages.has(d.message_id)) {
    messages.set(d.message_id, m);
    keepView(() => place(m));
  }
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
