// Upload a quiz question bank (a JSON file, as for `stoa quiz import`) to POST /api/quiz/banks. The server
// validates it with the CLI's checks and its error names the problem (e.g. "question 2: answer ...").
// Used by the instructor dashboard and the room page's quiz panel (moderators).
export function quizBankForm(token, { id = "quiz-bank-upload" } = {}) {
  const form = document.createElement("form");
  form.id = id;
  form.className = "quiz-bank-form";
  const label = document.createElement("label");
  const input = Object.assign(document.createElement("input"),
                              { type: "file", accept: ".json,application/json", name: "bank", required: true });
  label.append("Quiz bank (JSON) ", input);
  const button = Object.assign(document.createElement("button"), { type: "submit", textContent: "Upload bank" });
  const status = Object.assign(document.createElement("p"), { className: "hint quiz-bank-status" });
  status.setAttribute("role", "status");
  form.append(label, button, status);
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
