// Polls: instructors create (2-10 options, single/multiple, anonymous, live/after-close results, optional
// duration), start and close; students vote (and may change it while open) and see live bars.
import { $, h } from "../dom.js";
import { act, isMod, on, readOnly, serverNow } from "./core.js";

const polls = new Map();

export function mount(root) {
  // Results first; the form folds away once a poll is made, so the results stay in view (docs/room-page.md).
  root.append(h("div", { id: "poll-list" }));
  if (isMod()) root.append(h("details", { id: "poll-new", open: true }, h("summary", {}, "New poll"), createForm()));
  setInterval(tickCountdowns, 1000);
}

function createForm() {
  return h("form", { id: "poll-form", class: "cr-stack", onsubmit: create },
    h("input", { id: "poll-question", placeholder: "Question", maxlength: "500", required: true }),
    h("textarea", { id: "poll-options", rows: "3", placeholder: "Options, one per line (2 to 10)", required: true }),
    h("div", { class: "cr-row wrap" },
      h("label", { class: "inline" }, h("input", { type: "checkbox", id: "poll-multiple" }), " multiple choice"),
      h("label", { class: "inline" }, h("input", { type: "checkbox", id: "poll-anonymous" }), " anonymous")),
    h("div", { class: "cr-row wrap" },
      h("select", { id: "poll-results", "aria-label": "When students see the results" }, h("option", { value: "live" }, "results live"),
        h("option", { value: "after_close" }, "results after close")),
      h("input", { id: "poll-duration", type: "number", min: "5", max: "86400", placeholder: "duration s", class: "short" }),
      h("label", { class: "inline" }, h("input", { type: "checkbox", id: "poll-start", checked: true }), " start now")),
    h("div", { id: "poll-form-error", class: "error" }),
    h("button", { type: "submit", id: "poll-create" }, "Create poll"));
}

async function create(e) {
  e.preventDefault();
  const options = $("poll-options").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const err = $("poll-form-error");
  if (options.length < 2 || options.length > 10) {
    err.textContent = `a poll needs 2 to 10 options (got ${options.length})`;
    return;
  }
  err.textContent = "";
  const data = { question: $("poll-question").value.trim(), options, multiple: $("poll-multiple").checked,
                 anonymous: $("poll-anonymous").checked, results: $("poll-results").value,
                 start: $("poll-start").checked };
  const duration = parseInt($("poll-duration").value, 10);
  if (Number.isFinite(duration)) data.duration_s = duration;
  if (await act("poll.create", data)) {
    $("poll-form").reset();
    $("poll-new").open = false;
  }
}

const drafts = new Map();  // poll id -> choices ticked but not sent yet (survive re-rendering)

function render() {
  for (const el of document.querySelectorAll(".poll.open")) {
    const ticked = [...el.querySelectorAll("input:checked")].map((i) => Number(i.value));
    if (el.querySelector("input")) drafts.set(el.dataset.id, ticked);
  }
  const list = [...polls.values()].sort((a, b) => b.created_at - a.created_at);
  $("poll-list").replaceChildren(...list.map(card));
}

function card(p) {
  const canVote = p.status === "open" && !readOnly();
  const chosen = new Set(p.my_choices || []);
  const ticked = new Set(drafts.get(p.id) ?? p.my_choices ?? []);
  const name = `poll-${p.id}`;
  const rows = p.options.map((opt, i) => {
    const count = p.tally ? p.tally.counts[i] : null;
    const pct = p.tally ? p.tally.percentages[i] : 0;
    return h("li", { class: "option", dataset: { index: i } },
      h("label", { class: "inline" },
        canVote ? h("input", { type: p.multiple ? "checkbox" : "radio", name, value: String(i), checked: ticked.has(i) }) : null,
        ` ${opt}`, chosen.has(i) && !canVote ? " ✓" : ""),
      p.tally ? h("div", { class: "bar", dataset: { index: i, count, pct } },
        h("span", { class: "fill", style: `width:${pct}%` }),
        h("span", { class: "label" }, `${count} · ${pct}%`)) : null);
  });
  const buttons = [];
  if (canVote) buttons.push(h("button", { type: "button", class: "vote-btn", onclick: () => vote(p) }, chosen.size ? "Change vote" : "Vote"));
  if (isMod() && p.status === "draft") buttons.push(h("button", { type: "button", class: "start-btn", onclick: () => act("poll.start", { poll_id: p.id }) }, "Start"));
  if (isMod() && p.status === "open") buttons.push(h("button", { type: "button", class: "close-btn", onclick: () => act("poll.close", { poll_id: p.id }) }, "Close"));
  const meta = [p.status, p.multiple ? "multiple choice" : "single choice", p.anonymous ? "anonymous" : null,
                p.tally ? `${p.tally.total_voters} voted` : (p.results === "after_close" ? "results after close" : null)]
    .filter(Boolean).join(" · ");
  return h("article", { class: `poll ${p.status}`, dataset: { id: p.id } },
    h("h3", {}, p.question),
    h("div", { class: "hint" }, meta, " ", h("span", { class: "countdown", dataset: { closes: p.closes_at || "" } })),
    h("ol", { class: "options" }, rows),
    p.voters && isMod() ? h("details", {}, h("summary", {}, "Voters"),
      h("ul", {}, Object.entries(p.voters).map(([who, c]) => h("li", {}, `${who}: ${c.map((i) => p.options[i]).join(", ")}`)))) : null,
    h("div", { class: "cr-row" }, buttons));
}

async function vote(p) {
  const picked = [...document.querySelectorAll(`.poll[data-id="${p.id}"] input:checked`)].map((i) => Number(i.value));
  if (!picked.length) return;
  const ack = await act("poll.vote", { poll_id: p.id, choices: picked });
  if (ack && polls.has(p.id)) {
    polls.get(p.id).my_choices = ack.choices;
    drafts.delete(p.id);
    render();
  }
}

function tickCountdowns() {
  for (const el of document.querySelectorAll(".poll .countdown")) {
    const closes = parseFloat(el.dataset.closes);
    el.textContent = Number.isFinite(closes) && el.closest(".poll.open")
      ? `closes in ${Math.max(0, Math.ceil(closes - serverNow()))} s` : "";
  }
}

function upsert(p) {
  const old = polls.get(p.id);
  polls.set(p.id, { ...p, my_choices: p.my_choices ?? old?.my_choices ?? null });
  render();
}

on("state", (s) => {
  polls.clear();
  for (const p of s.polls || []) polls.set(p.id, p);
  render();
});
on("poll.created", upsert);
on("poll.opened", upsert);
on("poll.closed", upsert);
on("poll.results", (d) => {
  const p = polls.get(d.poll_id);
  if (!p) return;
  p.tally = d.tally;
  if (d.voters) p.voters = d.voters;
  render();
});
