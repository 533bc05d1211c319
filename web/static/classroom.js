// Classroom panels on the room page: chat, Q&A, polls, whiteboard, quiz, raised hands and reactions.
// Loaded after room.js (window.stoa). Modules in ./classroom/; protocol in docs/interactive.md.
import { $, h, on, start } from "./classroom/core.js";
import * as chat from "./classroom/chat.js";
import * as qa from "./classroom/qa.js";
import * as polls from "./classroom/polls.js";
import * as whiteboard from "./classroom/whiteboard.js";
import * as quiz from "./classroom/quiz.js";
import * as hands from "./classroom/hands.js";

const PANELS = [
  { id: "chat", label: "Chat", feature: "chat", module: chat },
  { id: "qa", label: "Q&A", feature: "qa", module: qa },
  { id: "polls", label: "Polls", feature: "polls", module: polls },
  { id: "board", label: "Board", feature: "whiteboard", module: whiteboard },
  { id: "quiz", label: "Quiz", feature: "quiz", module: quiz },
];

const root = $("classroom");
const tabs = $("cr-tabs");

function show(id) {
  root.dataset.tab = id;
  for (const p of PANELS) {
    $(`cr-${p.id}`).hidden = p.id !== id;
    tabs.querySelector(`[data-tab="${p.id}"]`).classList.toggle("active", p.id === id);
  }
  tabs.querySelector(`[data-tab="${id}"]`).classList.remove("unread");
}

for (const p of PANELS) {
  tabs.append(h("button", { type: "button", class: "tab", dataset: { tab: p.id }, onclick: () => show(p.id) }, p.label));
  p.module.mount($(`cr-${p.id}`));
}
hands.mount($("cr-hands"));
show("chat");

const markUnread = (id) => () => {
  if (root.dataset.tab !== id) tabs.querySelector(`[data-tab="${id}"]`).classList.add("unread");
};
on("chat.message", markUnread("chat"));
on("qa.question", markUnread("qa"));
on("poll.opened", markUnread("polls"));
on("whiteboard.stroke", markUnread("board"));

on("state", (s) => {
  const features = s.features || {};
  for (const p of PANELS) {
    const off = features[p.feature] === false;
    tabs.querySelector(`[data-tab="${p.id}"]`).hidden = off;
    if (off && root.dataset.tab === p.id) show("chat");
  }
  $("cr-hands").hidden = features.hands === false && features.reactions === false;
  root.classList.add("ready");
});
start();
