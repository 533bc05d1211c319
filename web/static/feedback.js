// After a session: "How was this session?" (1-5 and an optional comment), POST /api/sessions/{id}/feedback.
// Offered once, when this participant leaves or the server ends their stay (a `left` message); only in rooms
// that belong to a session, and not to its instructor (docs/room-page.md, "Feedback").
import { cfg } from "./config.js";
import { h } from "./dom.js";

let offered = false;

async function send(form, status) {
  const data = new FormData(form);
  const body = { rating: Number(data.get("rating")) };
  const comment = String(data.get("comment") || "").trim();
  if (comment) body.comment = comment;
  const res = await fetch(`/api/sessions/${encodeURIComponent(cfg.sessionId)}/feedback`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${cfg.token}` },
    body: JSON.stringify(body),
  });
  if (res.ok) {
    form.replaceChildren(h("p", { id: "feedback-done" }, "Thank you for your feedback."));
    return;
  }
  const problem = await res.json().catch(() => ({}));
  status.textContent = `Your feedback was not saved: ${problem.detail || `the server answered ${res.status}`}`;
}

export function offer() {
  if (offered || !cfg.sessionId || cfg.role === "instructor") return;
  offered = true;
  const status = h("p", { id: "feedback-status", class: "hint", role: "status" });
  const stars = h("fieldset", { class: "feedback-stars" }, h("legend", {}, "Your rating"),
    ...[1, 2, 3, 4, 5].map((n) => h("label", {},
      h("input", { type: "radio", name: "rating", value: String(n), required: "" }),
      ` ${n}${n === 1 ? " (poor)" : n === 5 ? " (excellent)" : ""}`)));
  const form = h("form", { id: "feedback-form", class: "card", "aria-labelledby": "feedback-title" },
    h("h2", { id: "feedback-title" }, `How was ${cfg.title || "this session"}?`),
    stars,
    h("label", {}, "Comment (optional) ",
      h("textarea", { name: "comment", maxlength: "2000", rows: "3", id: "feedback-comment" })),
    h("div", { class: "feedback-actions" },
      h("button", { type: "submit", id: "feedback-send" }, "Send feedback"),
      h("button", { type: "button", id: "feedback-skip", class: "secondary",
                     onclick: () => box.remove() }, "Not now")),
    status);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    send(form, status).catch((err) => { status.textContent = `Your feedback was not saved: ${err.message}`; });
  });
  const box = h("section", { id: "feedback", "aria-label": "Session feedback" }, form);
  document.body.append(box);
  form.querySelector("input").focus();
}

// Started by room-page.js with the room.
export function startFeedback(room) {
  document.getElementById("btn-leave")?.addEventListener("click", offer);
  room.on("left", offer);
}
