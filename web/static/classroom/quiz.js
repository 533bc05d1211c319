// Quizzes: instructors start a round (each student gets a different question) and watch live results;
// students answer in a popup with a countdown and see whether they were right.
import { cfg } from "../config.js";
import { $, h } from "../dom.js";
import { act, isMod, on, serverNow } from "./core.js";
import { quizBankForm } from "../quizbank.js";

let question = null;     // the student's current quiz.question (+ choice/correct once answered)
let progress = null;     // moderators: latest quiz.progress
let timer = null;

export function mount(root) {
  if (isMod()) {
    root.append(
      h("form", { id: "quiz-form", class: "cr-row wrap", onsubmit: start },
        h("input", { id: "quiz-bank", placeholder: "bank (empty: all questions)" }),
        h("input", { id: "quiz-duration", type: "number", min: "5", max: "3600", value: "30", class: "short" }),
        h("button", { type: "submit", id: "quiz-start" }, "Start round"),
        h("button", { type: "button", id: "quiz-end", onclick: end }, "End round")),
      h("div", { id: "quiz-progress" }),
      quizBankForm(cfg.token, { id: "quiz-bank-upload" }));
  } else {
    root.append(h("p", { class: "hint", id: "quiz-hint" }, "When the instructor starts a quiz round, your question pops up."));
  }
  document.body.append(h("div", { id: "quiz-popup", class: "quiz-popup", hidden: true, role: "dialog", "aria-modal": "true" }));
}

async function start(e) {
  e.preventDefault();
  const data = { duration_s: parseInt($("quiz-duration").value, 10) || 30 };
  if ($("quiz-bank").value.trim()) data.bank = $("quiz-bank").value.trim();
  await act("quiz.start", data);
}

function end() {
  if (progress && progress.status === "running") act("quiz.end", { round_id: progress.round_id });
}

function renderProgress() {
  const box = $("quiz-progress");
  if (!box) return;
  if (!progress) { box.replaceChildren(); return; }
  const answered = progress.students.filter((s) => s.choice !== null && s.choice !== undefined).length;
  box.replaceChildren(
    h("div", { class: "hint" }, `Round ${progress.status}: ${answered}/${progress.students.length} answered `,
      h("span", { class: "countdown", dataset: { ends: progress.ends_at } })),
    h("table", { class: "quiz-students" },
      h("tr", {}, h("th", {}, "Student"), h("th", {}, "Answer")),
      progress.students.map((s) => h("tr", { dataset: { identity: s.identity } }, h("td", {}, s.name || s.identity),
        h("td", { class: s.correct === true ? "right" : s.correct === false ? "wrong" : "" },
          s.choice === null || s.choice === undefined ? "…" : s.correct ? "✓ right" : "✗ wrong")))),
    h("table", { class: "quiz-questions" },
      h("tr", {}, h("th", {}, "Question"), h("th", {}, "Accuracy")),
      progress.questions.map((q) => h("tr", {}, h("td", {}, q.prompt),
        h("td", {}, q.answered ? `${Math.round(q.accuracy * 100)}% (${q.correct}/${q.answered})` : `0/${q.assigned} answered`)))));
}

function renderPopup() {
  const pop = $("quiz-popup");
  if (!question) { pop.hidden = true; return; }
  pop.hidden = false;
  const answered = question.choice !== undefined && question.choice !== null;
  const over = !answered && serverNow() >= question.ends_at;
  pop.replaceChildren(h("div", { class: "quiz-card" },
    h("div", { class: "cr-row" }, h("strong", {}, "Quiz"), h("span", { id: "quiz-countdown", class: "countdown" })),
    h("p", { id: "quiz-prompt" }, question.prompt),
    h("div", { class: "cr-stack" }, question.choices.map((c, i) => h("button", {
      type: "button", class: `choice${answered && question.choice === i ? (question.correct ? " right" : " wrong") : ""}` +
        `${answered && question.answer === i ? " answer" : ""}`,
      disabled: answered || over, dataset: { index: i }, onclick: () => answer(i) }, c))),
    answered ? h("p", { id: "quiz-verdict", class: question.correct ? "right" : "wrong" },
      question.correct ? "Right!" : `Wrong${question.answer !== undefined ? ` — the answer is ${question.choices[question.answer]}` : ""}`,
      question.explanation ? h("span", { class: "hint" }, ` ${question.explanation}`) : "") : null,
    over ? h("p", { class: "wrong" }, "Time is up.") : null,
    answered || over ? h("button", { type: "button", onclick: () => { question = null; renderPopup(); } }, "Close") : null));
  tick();
}

async function answer(i) {
  const q = question;
  const ack = await act("quiz.answer", { round_id: q.round_id, choice: i });
  if (ack && question === q) {
    Object.assign(question, { choice: ack.choice, correct: ack.correct, answer: ack.answer, explanation: ack.explanation });
    renderPopup();
  }
}

function tick() {
  const left = (t) => Math.max(0, Math.ceil(t - serverNow()));
  const cd = $("quiz-countdown");
  if (cd && question) {
    const done = question.choice !== undefined && question.choice !== null;
    cd.textContent = done ? "answered" : `${left(question.ends_at)} s`;
  }
  for (const el of document.querySelectorAll("#quiz-progress .countdown")) {
    el.textContent = progress && progress.status === "running" ? `${left(parseFloat(el.dataset.ends))} s left` : "";
  }
  if (question && !question.answered && question.choice == null && serverNow() >= question.ends_at
      && !$("quiz-popup").querySelector(".wrong")) renderPopup();
}

on("state", (s) => {
  if (isMod()) { progress = s.quiz; renderProgress(); question = null; }
  else question = s.quiz ? { ...s.quiz } : null;
  renderPopup();
  if (!timer) timer = setInterval(tick, 500);
});
on("quiz.question", (q) => { question = { ...q }; renderPopup(); });
on("quiz.result", (r) => {
  if (question && question.round_id === r.round_id) {
    Object.assign(question, { choice: r.choice, correct: r.correct, answer: r.answer });
    renderPopup();
  }
});
on("quiz.progress", (p) => { progress = p; renderProgress(); });
on("quiz.ended", (d) => {
  if (d.progress) { progress = d.progress; renderProgress(); }
  else if (progress && progress.round_id === d.round_id) { progress.status = "ended"; renderProgress(); }
  if (question && question.round_id === d.round_id && (question.choice === undefined || question.choice === null)) {
    question.ends_at = Math.min(question.ends_at, serverNow());
    renderPopup();
  }
});
