// Raised hands (moderators see the queue in order) and emoji reactions.
import { $, h } from "../dom.js";
import { act, isMod, me, on, readOnly } from "./core.js";

const EMOJI = ["👏", "👍", "❤️", "😂", "😮", "🎉", "❓"];
let raised = false;

export function mount(root) {
  const hand = h("button", { type: "button", id: "hand-btn", onclick: toggleHand, disabled: readOnly() }, "✋ Raise hand");
  const reactions = h("div", { id: "reactions", class: "cr-row reactions" },
    EMOJI.map((e) => h("button", { type: "button", class: "emoji", disabled: readOnly(), title: `React ${e}`,
                                   onclick: () => act("reaction.send", { emoji: e }) }, e)));
  root.append(h("div", { class: "cr-row" }, hand, h("span", { id: "hand-status", class: "hint" })), reactions,
    isMod() ? h("div", {}, h("h3", {}, "Raised hands"), h("ol", { id: "hand-queue", class: "cr-list" })) : "");
  document.body.append(h("div", { id: "reaction-float", "aria-hidden": "true" }));
}

async function toggleHand() {
  await act(raised ? "hand.lower" : "hand.raise", {});
}

function setMine(isRaised, position, count) {
  raised = isRaised;
  $("hand-btn").textContent = raised ? "✋ Lower hand" : "✋ Raise hand";
  $("hand-btn").classList.toggle("active", raised);
  $("hand-status").textContent = raised && position ? `You are #${position} of ${count}` : (count ? `${count} raised` : "");
}

function renderQueue(queue, myIdentity) {
  const ol = $("hand-queue");
  if (!ol) return;
  ol.replaceChildren(...queue.map((q) => h("li", { dataset: { identity: q.identity } }, `${q.name || q.identity} `,
    h("button", { type: "button", class: "link", onclick: () => act("hand.lower", { identity: q.identity }) }, "Lower"))));
  const mine = queue.find((q) => q.identity === myIdentity);
  setMine(Boolean(mine), mine?.position, queue.length);
}

on("state", (s, msg) => {
  const hands = s.hands || {};
  if (hands.queue) renderQueue(hands.queue, s.you?.identity);
  else setMine(Boolean(hands.raised), hands.position, hands.count || 0);
});
on("hand.queue", (d) => renderQueue(d.queue || [], me.identity));
on("hand.state", (d) => setMine(Boolean(d.raised), d.position, d.count || 0));
on("reaction", (d) => {
  const box = $("reaction-float");
  const el = h("span", { class: "float", title: d.name }, d.emoji, h("small", {}, d.name || ""));
  el.style.left = `${10 + Math.random() * 70}%`;
  box.append(el);
  setTimeout(() => el.remove(), 3000);
});
