// After a session: "How was this session?" (1-5 and an optional comment), POST /api/sessions/{id}/feedback.
// Offered once, when this participant leaves or the server ends their stay (a `left` message); only in rooms
// that belong to a session, and not to its instructor (docs/room-page.md, "Feedback").
const cfg = JSON.parse(document.getElementById("room-config").textContent);
let offered = false;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

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
    form.replaceChildren(el("p", { id: "feedback-done" }, "Thank you for your feedback."));
    return;
  }
  const problem = await res.json().catch(() => ({}));
  status.textContent = `Your feedback was not saved: ${problem.detail || `the server answered ${res.status}`}`;
}

export function offer() {
  if (offered || !cfg.sessionId || cfg.role === "instructor") return;
  offered = true;
  const status = el("p", { id: "feedback-status", class: "hint", role: "status" });
  const stars = el("fieldset", { class: "feedback-stars" }, el("legend", {}, "Your rating"),
    ...[1, 2, 3, 4, 5].map((n) => el("label", {},
      el("input", { type: "radio", name: "rating", value: String(n), required: "" }),
      ` ${n}${n === 1 ? " (poor)" : n === 5 ? " (excellent)" : ""}`)));
  const form = el("form", { id: "feedback-form", class: "card", "aria-labelledby": "feedback-title" },
    el("h2", { id: "feedback-title" }, `How was ${cfg.title || "this session"}?`),
    stars,
    el("label", {}, "Comment (optional) ",
      el("textarea", { name: "comment", maxlength: "2000", rows: "3", id: "feedback-comment" })),
    el("div", { class: "feedback-actions" },
      el("button", { type: "submit", id: "feedback-send" }, "Send feedback"),
      el("button", { type: "button", id: "feedback-skip", class: "secondary",
                     onclick: () => box.remove() }, "Not now")),
    status);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    send(form, status).catch((err) => { status.textContent = `Your feedback was not saved: ${err.message}`; });
  });
  const box = el("section", { id: "feedback", "aria-label": "Session feedback" }, form);
  document.body.append(box);
  form.querySelector("input").focus();
}

document.getElementById("btn-leave")?.addEventListener("click", offer);
window.stoa?.on("left", offer);
