// Q&A panel: ask (optionally anonymous), upvote toggle, instructor answers / answered live / dismiss /
// feature; ordered by votes, then age.
import { $, h } from "../dom.js";
import { act, isMod, on, readOnly } from "./core.js";

const questions = new Map();

export function mount(root) {
  const text = h("textarea", { id: "qa-text", maxlength: "1000", rows: "2", placeholder: "Ask a question" });
  const anon = h("label", { class: "inline" },
    h("input", { type: "checkbox", id: "qa-anon", "aria-describedby": "qa-anon-note" }), " Ask anonymously");
  // Who sees the asker's name: the server decides (session setting qa_anonymous_to_staff) and says so in state.
  const note = h("p", { id: "qa-anon-note", class: "hint", "aria-live": "polite" }, anonNote(false));
  const form = h("form", { id: "qa-form", class: "cr-stack", onsubmit: ask }, text,
    h("div", { class: "cr-row" }, anon, h("button", { type: "submit", id: "qa-ask" }, "Ask")), note);
  root.append(readOnly() ? "" : form, h("ol", { id: "qa-list", class: "cr-list qa-list" }));
}

function anonNote(toStaff) {
  return toStaff
    ? "Anonymous questions hide your name from everyone, the teacher included."
    : "Anonymous questions hide your name from classmates; the teacher sees your name.";
}

async function ask(e) {
  e.preventDefault();
  const text = $("qa-text").value.trim();
  if (!text) return;
  if (await act("qa.ask", { text, anonymous: $("qa-anon").checked })) $("qa-text").value = "";
}

function sorted() {
  return [...questions.values()]
    .filter((q) => q.status !== "dismissed" || isMod())
    .sort((a, b) => (b.votes - a.votes) || (a.created_at - b.created_at));
}

function render() {
  $("qa-list").replaceChildren(...sorted().map(item));
}

function item(q) {
  const vote = h("button", { type: "button", class: `vote${q.voted ? " voted" : ""}`, disabled: readOnly(),
                             "aria-pressed": q.voted ? "true" : "false",
                             onclick: () => act("qa.upvote", { question_id: q.id }) }, `▲ ${q.votes}`);
  const status = q.status === "answered" ? (q.answered_live ? "answered live" : "answered") : q.status;
  const li = h("li", { class: `question ${q.status}${q.featured ? " featured" : ""}${q.mine ? " mine" : ""}`,
                       dataset: { id: q.id, votes: q.votes } },
    vote, " ",
    h("span", { class: "text" }, q.text),
    h("div", { class: "hint" }, `${q.name || "Anonymous"}${q.anonymous && isMod() && q.identity ? " (asked anonymously)" : ""}${q.mine && q.anonymous ? " (you, anonymously)" : ""} · ${status}`,
      q.featured ? " · ★ featured" : ""),
    q.answer ? h("div", { class: "answer" }, q.answer) : null);
  if (isMod()) {
    const answer = h("input", { placeholder: "Answer…", class: "answer-input" });
    li.append(h("div", { class: "cr-row mod-actions" },
      answer,
      h("button", { type: "button", onclick: () => answer.value.trim() && act("qa.answer", { question_id: q.id, text: answer.value.trim() }) }, "Answer"),
      h("button", { type: "button", onclick: () => act("qa.answer", { question_id: q.id, live: true }) }, "Answered live"),
      h("button", { type: "button", onclick: () => act("qa.feature", { question_id: q.id, featured: !q.featured }) }, q.featured ? "Unfeature" : "Feature"),
      q.status !== "dismissed" ? h("button", { type: "button", onclick: () => act("qa.dismiss", { question_id: q.id }) }, "Dismiss") : null));
  }
  return li;
}

on("state", (s) => {
  const note = $("qa-anon-note");
  if (note) note.textContent = anonNote(Boolean(s.qa && s.qa.anonymous_to_staff));
  questions.clear();
  for (const q of s.questions || []) questions.set(q.id, q);
  render();
});
on("qa.question", (q) => {
  if (q.status === "dismissed" && !isMod()) questions.delete(q.id);
  else questions.set(q.id, q);
  render();
});
