// Room page: joins over the room protocol (docs/protocol.md), publishes on one peer connection and
// receives on another that the server offers, so renegotiation never glares.

const cfg = JSON.parse(document.getElementById("room-config").textContent);
const $ = (id) => document.getElementById(id);
const banner = $("banner");
const stage = $("stage");

const state = {
  ws: null,
  pub: null,          // publishing RTCPeerConnection
  sub: null,          // subscribing RTCPeerConnection (server offers)
  iceServers: [],
  participants: new Map(),
  trackInfo: new Map(),   // mid -> track description from the server's offer
  camera: null,
  screen: null,
  retry: 0,
  leaving: false,
  handlers: new Map(),     // message type -> [fn], for the classroom panels
  ownTracks: new Map(),    // track_id -> description, for this participant's published tracks
  offering: false,         // a publish offer awaits its answer
  republish: false,        // tracks were added meanwhile: offer again after that answer
  speaking: new Map(),     // identity -> rank (0: loudest), from the server's `speakers` events
};

export function on(type, fn) {
  if (!state.handlers.has(type)) state.handlers.set(type, []);
  state.handlers.get(type).push(fn);
}
export function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}
window.stoa = { state, on, send, cfg, publish };

function setBanner(kind, text) {
  banner.className = `banner ${kind}`;
  banner.textContent = text;
}

function renderParticipants() {
  const ul = $("participants");
  ul.replaceChildren();
  for (const p of state.participants.values()) {
    const li = document.createElement("li");
    li.textContent = `${p.name} · ${p.role}`;
    li.dataset.identity = p.identity;
    li.classList.toggle("speaking", state.speaking.has(p.identity));
    ul.append(li);
  }
}

function tile(id, label) {
  let el = document.getElementById(`tile-${id}`);
  if (!el) {
    el = document.createElement("figure");
    el.id = `tile-${id}`;
    el.className = "tile";
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true;
    const cap = document.createElement("figcaption");
    el.append(video, cap);
    stage.append(el);
  }
  el.querySelector("figcaption").textContent = label;
  return el;
}

function removeTile(id) {
  const el = document.getElementById(`tile-${id}`);
  if (el) el.remove();
}

// ---- subscribing -------------------------------------------------------------------------------

function newSubscriber() {
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  pc.onicecandidate = (e) => {
    if (e.candidate) send({ type: "ice", target: "subscriber", candidate: e.candidate.toJSON() });
  };
  pc.ontrack = (e) => {
    const mid = e.transceiver.mid;
    const info = state.trackInfo.get(mid) || {};
    const participant = state.participants.get(info.participant) || {};
    const key = `${info.participant || "remote"}-${info.source || e.track.kind}`;
    if (e.track.kind === "video") {
      const el = tile(key, `${participant.name || info.participant || ""} ${info.source || ""}`);
      el.dataset.trackId = info.track_id || "";
      el.dataset.participant = info.participant || "";
      el.querySelector("video").srcObject = new MediaStream([e.track]);
    } else {
      let audio = document.getElementById(`audio-${mid}`);
      if (!audio) {
        audio = document.createElement("audio");
        audio.id = `audio-${mid}`;
        audio.autoplay = true;
        document.body.append(audio);
      }
      audio.srcObject = new MediaStream([e.track]);
    }
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected") setBanner("ok", "Connected");
    else if (pc.connectionState === "failed") {
      setBanner("bad", "Media connection failed; reconnecting…");
      if (state.ws) state.ws.close();  // the normal reconnect builds both connections again
    }
  };
  pc.ondatachannel = (e) => {
    state.dataChannel = e.channel;
    e.channel.onmessage = (m) => dispatch(JSON.parse(m.data));
  };
  return pc;
}

async function onOffer(msg) {
  for (const t of msg.tracks || []) state.trackInfo.set(t.mid, t);
  if (!state.sub) state.sub = newSubscriber();
  await state.sub.setRemoteDescription({ type: "offer", sdp: msg.sdp });
  const answer = await state.sub.createAnswer();
  await state.sub.setLocalDescription(answer);
  send({ type: "answer", sdp: state.sub.localDescription.sdp });
}

// ---- publishing --------------------------------------------------------------------------------

// One offer at a time: a second publish (camera, then screen share at once) waits for the answer to the
// first, then offers everything still unpublished.
async function publish() {
  if (state.offering) {
    state.republish = true;
    return;
  }
  state.offering = true;
  try {
    await offerTracks();
  } catch (err) {
    state.offering = false;
    setBanner("bad", `Publishing failed: ${err.message}`);
  }
}

async function published() {
  state.offering = false;
  if (state.republish) {
    state.republish = false;
    await publish();
  }
}

async function offerTracks() {
  if (!state.pub) {
    state.pub = new RTCPeerConnection({ iceServers: state.iceServers });
    state.pub.onicecandidate = (e) => {
      if (e.candidate) send({ type: "ice", target: "publisher", candidate: e.candidate.toJSON() });
    };
  }
  const sources = new Map();
  const pc = state.pub;
  const senders = new Set(pc.getSenders().map((s) => s.track));
  const add = (stream, label) => {
    for (const track of stream.getTracks()) {
      if (senders.has(track)) continue;
      const tr = pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
      sources.set(tr, track.kind === "audio" ? (label === "screen" ? "screen_audio" : "microphone") : label);
    }
  };
  if (state.camera) add(state.camera, "camera");
  if (state.screen) add(state.screen, "screen");
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const tracks = [];
  for (const tr of pc.getTransceivers()) {
    if (tr.mid !== null && sources.has(tr)) tracks.push({ mid: tr.mid, source: sources.get(tr) });
  }
  send({ type: "publish", sdp: pc.localDescription.sdp, tracks });
}

async function startCamera() {
  try {
    state.camera = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 } }, audio: true });
  } catch (err) {
    setBanner("bad", `Camera/microphone unavailable: ${err.message}`);
    return;
  }
  tile("self", "You").querySelector("video").srcObject = state.camera;
  $("btn-camera").disabled = true;
  $("btn-mic").disabled = false;
  await publish();
}

async function shareScreen() {
  try {
    state.screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    // Slides and code: keep the resolution and give up frame rate when bits are short.
    for (const track of state.screen.getVideoTracks()) track.contentHint = "detail";
  } catch (err) {
    setBanner("bad", `Screen sharing was not started: ${err.message}`);
    return;
  }
  tile("self-screen", "Your screen").querySelector("video").srcObject = state.screen;
  state.screen.getVideoTracks()[0].addEventListener("ended", stopScreen);
  await publish();
}

async function stopScreen() {
  if (!state.screen || !state.pub) return;
  for (const tr of state.pub.getTransceivers()) {
    if (tr.sender.track && state.screen.getTracks().includes(tr.sender.track)) tr.stop();
  }
  state.screen = null;
  removeTile("self-screen");
  await publish();
}

function toggleMic() {
  if (!state.camera) return;
  const track = state.camera.getAudioTracks()[0];
  if (!track) return;
  track.enabled = !track.enabled;
  // Tell the room too, so the server stops forwarding and everyone's UI can show it.
  for (const [id, t] of state.ownTracks) {
    if (t.source === "microphone") send({ type: "mute", track_id: id, muted: !track.enabled });
  }
  $("btn-mic").textContent = track.enabled ? "Mute mic" : "Unmute mic";
}

// ---- the room protocol -------------------------------------------------------------------------

function dispatch(msg) {
  for (const fn of state.handlers.get(msg.type) || []) {
    try { fn(msg); } catch (err) { console.error(err); }
  }
}

async function handle(msg) {
  switch (msg.type) {
    case "joined":
      state.retry = 0;
      state.iceServers = msg.ice_servers || [];
      state.participants.clear();
      for (const p of msg.room.participants) state.participants.set(p.identity, p);
      renderParticipants();
      setBanner("ok", "Joined");
      if (cfg.canPublish && (state.camera || state.screen)) await publish();
      break;
    case "offer":
      await onOffer(msg);
      break;
    case "answer":
      await state.pub.setRemoteDescription({ type: "answer", sdp: msg.sdp });
      await published();
      break;
    case "participant_joined":
      state.participants.set(msg.participant.identity, msg.participant);
      renderParticipants();
      break;
    case "participant_left":
      state.participants.delete(msg.identity);
      for (const el of stage.querySelectorAll(`[id^="tile-${CSS.escape(msg.identity)}-"]`)) el.remove();
      renderParticipants();
      break;
    case "track_published":
      if (msg.track.participant === cfg.identity) state.ownTracks.set(msg.track.track_id, msg.track);
      break;
    case "track_unpublished":
      state.ownTracks.delete(msg.track_id);
      for (const el of stage.querySelectorAll(".tile")) {
        if (el.dataset.trackId === msg.track_id) el.remove();
      }
      break;
    case "connection_quality":
      // The server judged this viewer's link for one track (docs/protocol.md): shown on the tile.
      for (const el of stage.querySelectorAll(".tile")) {
        if (el.dataset.trackId === msg.track_id) el.dataset.quality = msg.quality;
      }
      break;
    case "error":
      console.warn("server error", msg);
      if (msg.ref === "publish" && state.pub && state.pub.signalingState === "have-local-offer") {
        await state.pub.setLocalDescription({ type: "rollback" });
        setBanner("bad", `Publishing was refused: ${msg.message}`);
        await published();
      }
      if (msg.code === "unauthorized") {
        state.leaving = true;
        setBanner("bad", `Not allowed in: ${msg.message}`);
      }
      break;
    case "left":
      state.leaving = true;
      setBanner("bad", `Disconnected: ${msg.reason}`);
      break;
  }
  dispatch(msg);
}

function resetPeers() {
  state.ownTracks.clear();
  state.offering = false;
  state.republish = false;
  for (const key of ["pub", "sub"]) {
    if (state[key]) state[key].close();
    state[key] = null;
  }
  for (const el of stage.querySelectorAll(".tile")) {
    if (!el.id.startsWith("tile-self")) el.remove();
  }
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws/rooms/${encodeURIComponent(cfg.room)}`);
  state.ws = ws;
  setBanner("connecting", state.retry ? "Reconnecting…" : "Connecting…");
  ws.onopen = () => ws.send(JSON.stringify({ type: "join", token: cfg.token }));
  let chain = Promise.resolve();
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    chain = chain.then(() => handle(msg)).catch((err) => console.error(err));
  };
  ws.onclose = () => {
    resetPeers();
    if (state.leaving) return;
    state.retry += 1;
    const delay = Math.min(10000, 500 * 2 ** Math.min(state.retry, 5));
    setBanner("bad", `Connection lost; reconnecting in ${Math.round(delay / 1000)} s…`);
    setTimeout(connect, delay);
  };
}

// Who is speaking: the server ranks the audio levels of every forwarded track (docs/protocol.md,
// `speakers`); their tiles and list entries get the class "speaking", the loudest also "loudest".
on("speakers", (msg) => {
  state.speaking = new Map(msg.speakers.map((s, i) => [s.identity, i]));
  const mark = (el, identity) => {
    el.classList.toggle("speaking", state.speaking.has(identity));
    el.classList.toggle("loudest", state.speaking.get(identity) === 0);
  };
  for (const li of $("participants").children) mark(li, li.dataset.identity);
  for (const el of stage.querySelectorAll(".tile")) {
    mark(el, el.id.startsWith("tile-self") ? cfg.identity : el.dataset.participant);
  }
});

if (cfg.canPublish) {
  $("btn-camera").onclick = startCamera;
  $("btn-mic").onclick = toggleMic;
  $("btn-screen").onclick = () => (state.screen ? stopScreen() : shareScreen());
}
$("btn-leave").onclick = () => {
  state.leaving = true;
  send({ type: "leave" });
  if (state.ws) state.ws.close();
  resetPeers();
  setBanner("bad", "You left the room");
};
connect();
