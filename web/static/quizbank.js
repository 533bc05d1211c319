// Upload a quiz question bank (a JSON file, as for `stoa quiz import`) to POST /api/quiz/banks. The server
// validates it with the CLI's checks and its error names the problem (e.g. "question 2: answer ...").
// Used by the instructor dashboard and the room page's quiz panel (moderators).
import { h } from "./dom.js";

export function quizBankForm(token, { id = "quiz-bank-upload" } = {}) {
  const input = h("input", { type: "file", accept: ".json,application/json", name: "bank", required: true });
  const button = h("button", { type: "submit" }, "Upload bank");
  const status = h("p", { class: "hint quiz-bank-status", role: "status" });
  const form = h("form", { id, class: "quiz-bank-form" }, h("label", {}, "Quiz bank (JSON) ", input), button, status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = input.files[0];
    if (!file) return;
    button.disabled = true;
    status.classList.remove("error");
    status.textContent = `Uploading ${file.name}…`;
    try {
      const res = await fetch("/api/quiz/banks", {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
        body: await file.text(),
      });
      const out = await res.json().catch(() => ({}));
      if (res.ok) {
        status.textContent = `Imported ${out.count} question${out.count === 1 ? "" : "s"} into bank “${out.bank}”.`;
        form.dispatchEvent(new CustomEvent("imported", { detail: out }));
      } else {
        status.classList.add("error");
        status.textContent = `${file.name} was not imported: ${out.detail || `the server answered ${res.status}`}`;
      }
    } catch (err) {
      status.classList.add("error");
      status.textContent = `${file.name} was not imported: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}
