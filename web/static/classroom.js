// Classroom panels on the room page: chat, Q&A, polls, whiteboard, quiz, raised hands and reactions, started by
// the page's entry module (room-page.js) with the room. Modules in ./classroom/; protocol in docs/interactive.md.
import { $, h } from "./dom.js";
import { on, start } from "./classroom/core.js";
import * as chat from "./classroom/chat.js";
import * as qa from "./classroom/qa.js";
import * as polls from "./classroom/polls.js";
import * as whiteboard from "./classroom/whiteboard.js";
import * as quiz from "./classroom/quiz.js";
import * as hands from "./classroom/hands.js";
import { boardIsOpen, setBoard } from "./stage.js";

// The side panel (docs/room-page.md, "Layout"): tabs over the panels, and the chat docked below them on wide
// screens (there its tab is hidden by CSS); on a phone chat is a tab like the others. The Board tab puts the
// whiteboard on the stage instead of in the side panel.
const PANELS = [
  { id: "people", label: "People" },
  { id: "chat", label: "Chat", feature: "chat", module: chat },
  { id: "qa", label: "Q&A", feature: "qa", module: qa },
  { id: "polls", label: "Polls", feature: "polls", module: polls },
  { id: "board", label: "Whiteboard", feature: "whiteboard", module: whiteboard, stage: true },
  { id: "quiz", label: "Quiz", feature: "quiz", module: quiz },
];

const root = $("classroom");
const tabs = $("cr-tabs");
const narrow = window.matchMedia("(max-width: 899px)");
const tabOf = (id) => tabs.querySelector(`[data-tab="${id}"]`);

function show(id) {
  const panel = PANELS.find((p) => p.id === id);
  if (panel.stage) {
    setBoard(!boardIsOpen());
    tabOf(id).setAttribute("aria-pressed", String(boardIsOpen()));
    tabOf(id).classList.toggle("active", boardIsOpen());
    tabOf(id).classList.remove("unread");
    return;
  }
  root.dataset.tab = id;
  for (const p of PANELS) {
    if (p.stage) continue;
    $(`cr-${p.id}`).hidden = p.id !== id;
    tabOf(p.id).classList.toggle("active", p.id === id);
    tabOf(p.id).setAttribute("aria-pressed", String(p.id === id));
  }
  tabOf(id).classList.remove("unread");
}

export function startClassroom(room) {
  start(room);
  for (const p of PANELS) {
    tabs.append(h("button", { type: "button", class: "tab", dataset: { tab: p.id }, "aria-pressed": "false",
                              "aria-controls": `cr-${p.id}`, onclick: () => show(p.id) }, p.label));
    if (p.module) p.module.mount($(`cr-${p.id}`));
  }
  hands.mount($("cr-hands"));
  show(narrow.matches ? "chat" : "people");
  // Chat is docked on wide screens: its tab would show an empty panel there.
  narrow.addEventListener("change", () => { if (!narrow.matches && root.dataset.tab === "chat") show("people"); });
}

const markUnread = (id) => () => {
  const open = id === "board" ? boardIsOpen() : root.dataset.tab === id;
  if (!open) tabOf(id).classList.add("unread");
};
on("chat.message", markUnread("chat"));
on("qa.question", markUnread("qa"));
on("poll.opened", markUnread("polls"));
on("whiteboard.stroke", markUnread("board"));

on("state", (s) => {
  const features = s.features || {};
  for (const p of PANELS) {
    const off = features[p.feature] === false;
    tabOf(p.id).hidden = off;
    if (off && p.stage && boardIsOpen()) show(p.id);
    else if (off && root.dataset.tab === p.id) show(narrow.matches ? "chat" : "people");
  }
  $("cr-hands").hidden = features.hands === false && features.reactions === false;
  $("cr-chat").classList.toggle("off", features.chat === false);
  root.classList.add("ready");
});
