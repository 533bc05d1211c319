// Recording player: one media element per chosen file, kept on one timeline (seconds from the
// recording's start); the event timeline follows playback and seeks it; watch progress is reported.
const config = JSON.parse(document.getElementById("review-config").textContent);
const players = document.getElementById("players");
const filesBox = document.getElementById("files");
const positionEl = document.getElementById("position");
const items = [...document.querySelectorAll("#timeline li")];
const state = { elements: [], watched: 0, lastTick: null, lastReport: 0 };
window.stoaReview = state;

function fmt(s) {
  s = Math.max(0, Math.round(s));
  const m = Math.floor(s / 60), r = s % 60;
  return `${m}:${String(r).padStart(2, "0")}`;
}

function withToken(url) {
  return config.token ? `${url}?token=${encodeURIComponent(config.token)}` : url;
}

function master() { return state.elements[0] || null; }

// Timeline position (seconds from the recording's start) of the master element.
function position() {
  const m = master();
  return m ? m.currentTime + Number(m.dataset.offset) : 0;
}
state.position = position;

function seek(t) {
  for (const el of state.elements) {
    el.currentTime = Math.max(0, t - Number(el.dataset.offset));
  }
}
state.seek = seek;

function build(chosen) {
  const t = position();
  for (const el of state.elements) { el.pause(); el.removeAttribute("src"); el.load(); el.remove(); }
  state.elements = [];
  for (const f of chosen) {
    const el = document.createElement(f.kind === "audio" ? "audio" : "video");
    el.controls = state.elements.length === 0;
    el.preload = "auto";
    el.dataset.offset = f.offset;
    el.dataset.name = f.name;
    el.src = withToken(f.url);
    if (state.elements.length > 0) el.muted = false;
    players.appendChild(el);
    state.elements.push(el);
  }
  const m = master();
  if (!m) return;
  m.addEventListener("play", () => state.elements.slice(1).forEach((e) => e.play().catch(() => {})));
  m.addEventListener("pause", () => state.elements.slice(1).forEach((e) => e.pause()));
  m.addEventListener("seeked", () => seek(position()));
  m.addEventListener("timeupdate", tick);
  if (t > 0) m.addEventListener("loadedmetadata", () => seek(t), { once: true });
}

function chosenFiles() {
  return config.files.filter((f) => filesBox.querySelector(`input[value="${CSS.escape(f.name)}"]`)?.checked);
}

function defaults() {
  const composite = config.files.find((f) => f.kind === "composite");
  if (composite) return [composite.name];
  const video = config.files.find((f) => f.kind === "video");
  const audio = config.files.find((f) => f.kind === "audio" && (!video || f.participant === video.participant))
    || config.files.find((f) => f.kind === "audio");
  return [video, audio].filter(Boolean).map((f) => f.name);
}

function renderChoices() {
  const initial = new Set(defaults());
  if (!config.files.length) { filesBox.textContent = "This recording has no playable file."; return; }
  for (const f of config.files) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.value = f.name; box.checked = initial.has(f.name);
    box.addEventListener("change", () => build(chosenFiles()));
    label.append(box, f.label || `${f.participant} ${f.kind}`);
    label.title = f.name;
    filesBox.appendChild(label);
  }
}

function tick() {
  const t = position();
  positionEl.textContent = `${fmt(t)} / ${fmt(config.duration)}`;
  const m = master();
  const now = performance.now();
  if (m && !m.paused && state.lastTick !== null) {
    state.watched += Math.min(1.5, (now - state.lastTick) / 1000) * (m.playbackRate || 1);
  }
  state.lastTick = m && !m.paused ? now : null;
  // Followers drift: pull them back when they are off by more than 0.3 s.
  for (const el of state.elements.slice(1)) {
    const want = t - Number(el.dataset.offset);
    if (want >= 0 && Math.abs(el.currentTime - want) > 0.3) el.currentTime = want;
  }
  let current = null;
  for (const li of items) {
    if (Number(li.dataset.offset) <= t + 0.25) current = li;
  }
  for (const li of items) li.classList.toggle("current", li === current);
  if (now - state.lastReport > config.progressInterval * 1000) report();
}

async function report() {
  state.lastReport = performance.now();
  if (!master()) return;
  try {
    await fetch(`/api/recordings/${config.id}/progress`, {
      method: "POST",
      headers: { "Content-Type": "application/json",
                 ...(config.token ? { Authorization: `Bearer ${config.token}` } : {}) },
      body: JSON.stringify({ position: Math.max(0, position()), watched_seconds: state.watched }),
      keepalive: true,
    });
  } catch (err) { console.warn("progress report failed", err); }
}
state.report = report;

for (const li of items) {
  const go = () => { seek(Number(li.dataset.offset)); master()?.play().catch(() => {}); };
  li.addEventListener("click", go);
  li.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
}
document.addEventListener("visibilitychange", () => { if (document.hidden) report(); });

renderChoices();
build(chosenFiles());
