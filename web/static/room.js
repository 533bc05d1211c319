// Room page: joins over the room protocol (docs/protocol.md), publishes on one peer connection and
// receives on another that the server offers, so renegotiation never glares. Tiles and layout: stage.js;
// device choice: devices.js. The page's entry module (room-page.js) starts the panels with `room` and then
// connects.
import { $ } from "./dom.js";
import { cfg } from "./config.js";
import { removeTile, tileFor } from "./stage.js";
import { applySink, cameraConstraints, prejoinDone } from "./devices.js";

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
  goneTracks: new Set(),   // track_ids unpublished while this page ran
  ownTracks: new Map(),    // track_id -> description, for this participant's published tracks
  offering: false,         // a publish offer awaits its answer
  republish: false,        // tracks were added meanwhile: offer again after that answer
  speaking: new Map(),     // identity -> rank (0: loudest), from the server's `speakers` events
  refusals: 0,             // answers refused in a row (rollback and retry, then a new connection)
  resetPub: false,         // the next publish comes from a new connection: the server drops the old one
  offerTimer: null,
  resume: null,            // the server's resume token: a new socket resumes this participant
  cluster: null,           // several nodes: {node: this page's node, nodes: the others' addresses} (joined)
  failover: null,          // the other node this page joins through after its own stopped answering
  awaitingResubscribe: false,  // offers of the old subscriber connection are ignored until "resubscribed"
  media: new Set(),        // every <audio>/<video> that plays remote media, for the enable-sound control
  iceRestart: { pub: null, sub: null },  // a restart under way: {timer, ufrag: the remote ufrag before}
};

// Moved to another node (`redirect`, docs/scaling.md): the page reloads there with `moved=<ms>,<sources>` and
// publishes again what was on, without a click. A capture does not outlive a reload, so a screen share asks
// again. Honoured for a minute only, and taken out of the address bar, so a copied link starts nothing.
const MOVED_FOR_MS = 60000;
let moved = takeMoved();

function takeMoved() {
  const url = new URL(location.href);
  const value = url.searchParams.get("moved");
  if (value === null) return null;
  url.searchParams.delete("moved");
  history.replaceState(history.state, "", url);
  const [at, ...sources] = value.split(",");
  return Date.now() - Number(at) < MOVED_FOR_MS ? new Set(sources) : null;
}

function publishing() {
  const mic = state.camera && state.camera.getAudioTracks()[0];
  return [state.camera && "camera", mic && !mic.enabled && "muted", state.screen && "screen"].filter(Boolean);
}

async function publishMoved() {
  const sources = moved;
  moved = null;
  if (sources.has("camera")) {
    await startCamera();
    const mic = state.camera && state.camera.getAudioTracks()[0];
    if (mic && sources.has("muted")) {
      mic.enabled = false;  // its track_published then tells the room it is muted
      $("btn-mic").textContent = "Unmute mic";
    }
  }
  if (sources.has("screen")) setBanner("bad", "Moved to another server: share your screen again");
}

export function on(type, fn) {
  if (!state.handlers.has(type)) state.handlers.set(type, []);
  state.handlers.get(type).push(fn);
}
export function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}
// What the panels get at start (room-page.js); also window.stoa, the tests' read-only handle.
export const room = Object.freeze({ state, on, send, cfg, publish, stopCamera, restartMedia, restartIce, connect, rejoin,
                                    toggleMic, renderParticipants });

// A join refused with one of these is final: the page shows its screen (admission.js), no reconnect.
const REFUSALS = ["unauthorized", "room_full", "session_full", "banned", "session_not_live", "forbidden", "bad_password"];

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

function tile(id, desc) {
  const el = tileFor(id, desc);
  state.media.add(el.querySelector("video"));
  return el;
}

// ---- subscribing -------------------------------------------------------------------------------

function newSubscriber() {
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  pc.onicecandidate = (e) => {
    if (e.candidate) send({ type: "ice", target: "subscriber", candidate: e.candidate.toJSON() });
  };
  pc.ontrack = (e) => {
    const mid = e.transceiver.mid;
    if (e.track.kind === "video") {
      showVideo(mid, e.track);
    } else {
      let audio = document.getElementById(`audio-${mid}`);
      if (!audio) {
        audio = document.createElement("audio");
        audio.id = `audio-${mid}`;
        document.body.append(audio);
        state.media.add(audio);
        applySink(audio);
      }
      audio.srcObject = new MediaStream([e.track]);
      play(audio);
    }
  };
  pc.onconnectionstatechange = () => {
    if (pc !== state.sub) return;
    if (pc.connectionState === "connected") showConnected();
    else if (pc.connectionState === "failed" && pc.iceConnectionState !== "failed") {
      setBanner("bad", "Media connection failed; reconnecting the media…");
      restartMedia();
    }  // ICE failed: watchIce restarts it first
  };
  watchIce(pc, "sub");
  pc.ondatachannel = (e) => {
    state.dataChannel = e.channel;
    e.channel.onmessage = (m) => dispatch(JSON.parse(m.data));
  };
  return pc;
}

function showVideo(mid, track) {
  const info = state.trackInfo.get(mid) || {};
  const participant = state.participants.get(info.participant) || {};
  const key = `${info.participant || "remote"}-${info.source || track.kind}`;
  const el = tile(key, { participant: info.participant || "", source: info.source || "camera",
                         name: participant.name || info.participant || "" });
  el.dataset.trackId = info.track_id || "";
  el.dataset.participant = info.participant || "";
  const video = el.querySelector("video");
  video.srcObject = new MediaStream([track]);
  watchSize(video, el);
  play(video);
}

// ---- the size each video is shown at (docs/protocol.md, "video_size") ------------------------------
// The server sends no simulcast layer larger than the element shows it, whatever the link carries.
const sizeObserver = new ResizeObserver((entries) => {
  for (const entry of entries) reportSize(entry.target);
});
const sizeTimers = new WeakMap();

function watchSize(video, el) {
  video.dataset.sizeSent = "";
  sizeObserver.observe(video);
  reportSize(video, el);
}

function reportSize(video, el = video.closest(".tile")) {
  clearTimeout(sizeTimers.get(video));
  sizeTimers.set(video, setTimeout(() => {
    const trackId = el && el.dataset.trackId;
    if (!trackId || !video.isConnected) return;
    const dpr = window.devicePixelRatio || 1;
    const hidden = document.visibilityState === "hidden";
    const width = hidden ? 0 : Math.round(video.clientWidth * dpr);
    const height = hidden ? 0 : Math.round(video.clientHeight * dpr);
    const key = `${trackId}:${width}x${height}`;
    if (video.dataset.sizeSent === key) return;
    video.dataset.sizeSent = key;
    send({ type: "video_size", track_id: trackId, width, height });
  }, 200));
}

document.addEventListener("visibilitychange", () => {
  for (const video of stage.querySelectorAll(".tile video")) reportSize(video);
});

async function onOffer(msg) {
  if (state.awaitingResubscribe) return;  // meant for the connection being replaced
  for (const t of msg.tracks || []) state.trackInfo.set(t.mid, t);
  if (!state.sub) state.sub = newSubscriber();
  await state.sub.setRemoteDescription({ type: "offer", sdp: msg.sdp });
  // A section that went from one track to the next within one offer (a source stopped and started again
  // before the server offered the stop) fires no track event; its tile went with the old track.
  for (const t of msg.tracks || []) {
    if (t.kind !== "video" || state.goneTracks.has(t.track_id) || !state.participants.has(t.participant)
        || [...stage.querySelectorAll(".tile")].some((el) => el.dataset.trackId === t.track_id)) continue;
    const tr = state.sub.getTransceivers().find((x) => x.mid === t.mid);
    if (tr && tr.receiver.track && tr.receiver.track.readyState === "live") showVideo(t.mid, tr.receiver.track);
  }
  const answer = await state.sub.createAnswer();
  await state.sub.setLocalDescription(answer);
  send({ type: "answer", sdp: state.sub.localDescription.sdp });
  iceRestartDone("sub");
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
  clearTimeout(state.offerTimer);
  if (state.republish) {
    state.republish = false;
    await publish();
  }
}

function newPublisher() {
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  pc.onicecandidate = (e) => {
    if (e.candidate && pc === state.pub) send({ type: "ice", target: "publisher", candidate: e.candidate.toJSON() });
  };
  pc.onconnectionstatechange = () => {
    if (pc !== state.pub) return;
    if (pc.connectionState === "failed") {
      if (pc.iceConnectionState === "failed") return;  // watchIce restarts ICE first
      setBanner("bad", "Publishing connection failed; reconnecting it…");
      replacePublisher();
      publish();
    } else showConnected();
  };
  watchIce(pc, "pub");
  return pc;
}

// The source of a track, from the stream it belongs to (so a retried offer labels every section again).
function sourceOf(track) {
  if (state.camera && state.camera.getTracks().includes(track)) return track.kind === "audio" ? "microphone" : "camera";
  if (state.screen && state.screen.getTracks().includes(track)) return track.kind === "audio" ? "screen_audio" : "screen";
  return null;
}

// The camera goes out in three layers (docs/simulcast.md): each viewer gets the one its link and its
// tile's size call for. The screen, with `screen_simulcast`, too, with layers suited to text (as LiveKit's
// screen-share presets): the top one at full size and a low frame rate, for a large tile that must read;
// the smaller ones at 15 fps for small tiles. Off, it is one stream: text needs its full resolution.
const CAMERA_LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4 },
  { rid: "h", scaleResolutionDownBy: 2 },
  { rid: "f", scaleResolutionDownBy: 1 },
];
const SCREEN_LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4, maxFramerate: 15, maxBitrate: 150000 },
  { rid: "h", scaleResolutionDownBy: 2, maxFramerate: 15, maxBitrate: 300000 },
  { rid: "f", scaleResolutionDownBy: 1, maxFramerate: 5, maxBitrate: 800000 },
];
const layered = (t) => t.sender.getParameters().encodings.length > 1;
// Which source each section was made for: a section keeps its encodings, so an idle one is reused only
// by the same source (the camera's layers are no screen's, and the reverse).
const sectionSource = new WeakMap();

// Dynacast names one track: only the section now sending that track's source is changed (the camera's
// and the screen's layers are paused separately).
async function setActiveLayers(trackId, active) {
  const own = state.ownTracks.get(trackId);
  if (!state.pub || !own) return;
  for (const tr of state.pub.getTransceivers()) {
    if (!tr.sender.track || tr.sender.track.kind !== "video" || !layered(tr)) continue;
    if (sourceOf(tr.sender.track) !== own.source) continue;
    const params = tr.sender.getParameters();
    let changed = false;
    for (const enc of params.encodings) {
      const on = active.includes(enc.rid);
      if (enc.active !== on) { enc.active = on; changed = true; }
    }
    if (changed) {
      try { await tr.sender.setParameters(params); } catch (err) { console.warn("layers:", err.message); }
    }
  }
}

async function offerTracks() {
  if (!state.pub) state.pub = newPublisher();
  const pc = state.pub;
  const senders = new Set(pc.getSenders().map((s) => s.track));
  const add = async (stream) => {
    for (const track of stream.getTracks()) {
      if (senders.has(track)) continue;
      const source = sourceOf(track);
      const encodings = track.kind !== "video" ? null
        : stream === state.camera ? (cfg.simulcast ? CAMERA_LAYERS : null)
        : (cfg.screenSimulcast ? SCREEN_LAYERS : null);
      // Reuse an idle section of this kind (a stopped source's): the m-lines and the transport stay.
      // A video section only by the source it was made for, with the same layering.
      const idle = pc.getTransceivers().find((t) => !t.sender.track && t.direction === "inactive"
        && t.currentDirection !== "stopped" && t.receiver.track.kind === track.kind
        && (track.kind !== "video" || (sectionSource.get(t) === source && layered(t) === !!encodings)));
      if (idle) {
        await idle.sender.replaceTrack(track);
        idle.sender.setStreams(stream);
        idle.direction = "sendonly";
      } else {
        const init = { direction: "sendonly", streams: [stream] };
        if (encodings) init.sendEncodings = encodings;
        sectionSource.set(pc.addTransceiver(track, init), source);
      }
    }
  };
  if (state.camera) await add(state.camera);
  if (state.screen) await add(state.screen);
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const tracks = [];
  for (const tr of pc.getTransceivers()) {
    const source = tr.sender.track && sourceOf(tr.sender.track);
    if (tr.mid !== null && source && tr.currentDirection !== "stopped") tracks.push({ mid: tr.mid, source });
  }
  const msg = { type: "publish", sdp: pc.localDescription.sdp, tracks };
  if (state.resetPub) msg.reset = true;
  state.resetPub = false;
  // An answer that never comes counts as a refused one: the connection must not sit in have-local-offer.
  clearTimeout(state.offerTimer);
  state.offerTimer = setTimeout(() => answerRefused(new Error("no answer within 15 s")), 15000);
  send(msg);
}

async function onAnswer(msg) {
  if (!state.pub || state.pub.signalingState !== "have-local-offer") return;
  try {
    await state.pub.setRemoteDescription({ type: "answer", sdp: msg.sdp });
  } catch (err) {
    await answerRefused(err);
    return;
  }
  state.refusals = 0;
  iceRestartDone("pub");
  showConnected();
  await published();
}

// A refused answer: say so, roll back and offer again; refused twice in a row, start a new connection.
async function answerRefused(err) {
  clearTimeout(state.offerTimer);
  console.warn("publish answer refused:", err.message);
  state.refusals += 1;
  setBanner("bad", `Publishing failed (${err.message}); recovering…`);
  if (state.refusals > 3) {
    setBanner("bad", `Publishing failed (${err.message}); reload the page to try again`);
    state.offering = false;
    return;
  }
  if (state.pub && state.pub.signalingState === "have-local-offer") {
    try { await state.pub.setLocalDescription({ type: "rollback" }); } catch (e) { replacePublisher(); }
  }
  if (state.refusals >= 2) replacePublisher();
  state.offering = false;
  await publish();
}

function replacePublisher() {
  if (state.pub) state.pub.close();
  state.pub = null;
  state.resetPub = true;
  state.offering = false;
}

// Connected only when nothing is stuck: the subscriber is connected, no publish awaits an answer, and no
// connection is cut off or restarting ICE (one connection's restart may end before the other's).
function showConnected() {
  const sub = state.sub && state.sub.connectionState === "connected";
  const pubStuck = state.pub && (["failed", "disconnected"].includes(state.pub.connectionState) || state.refusals > 0);
  const restarting = state.iceRestart.pub || state.iceRestart.sub;
  if (sub && !pubStuck && !restarting) setBanner("ok", "Connected");
}

// ---- ICE restart (docs/protocol.md, "ICE restart") -----------------------------------------------
// A network change: new ICE credentials on the same connection (restartIce()), which keeps its tracks,
// and the participant its place. Not reconnected within 10 s, or refused by the server: a new connection.
const ICE_DISCONNECTED_GRACE = 2000;
const ICE_RESTART_TIMEOUT = 10000;
const ufragOf = (desc) => (desc && /a=ice-ufrag:(\S+)/.exec(desc.sdp) || [])[1];

function watchIce(pc, which) {
  let grace = null;
  pc.addEventListener("iceconnectionstatechange", () => {
    if (pc !== state[which]) return;
    clearTimeout(grace);
    if (pc.iceConnectionState === "disconnected") grace = setTimeout(() => restartIce(which), ICE_DISCONNECTED_GRACE);
    else if (pc.iceConnectionState === "failed") restartIce(which);
    else iceRestartDone(which);
  });
}

function restartIce(which) {
  const pc = state[which];
  if (!pc || pc.connectionState === "closed" || state.iceRestart[which]) return;
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;  // the resume restarts it
  setBanner("bad", "Network changed; reconnecting the media…");
  state.iceRestart[which] = {
    ufrag: ufragOf(pc.remoteDescription),
    timer: setTimeout(() => iceRestartFailed(which), ICE_RESTART_TIMEOUT),
  };
  pc.restartIce();
  if (which === "sub") send({ type: "restart_ice" });  // the server offers new credentials
  else publish();  // the next offer carries new credentials
}

// Done once the other side's new credentials are applied and ICE is connected again.
function iceRestartDone(which) {
  const pc = state[which], pending = state.iceRestart[which];
  if (!pending || !pc || ufragOf(pc.remoteDescription) === pending.ufrag) return;
  if (!["connected", "completed"].includes(pc.iceConnectionState)) return;
  clearTimeout(pending.timer);
  state.iceRestart[which] = null;
  showConnected();
}

function iceRestartFailed(which) {
  const pending = state.iceRestart[which];
  if (pending) clearTimeout(pending.timer);
  state.iceRestart[which] = null;
  console.warn(`ICE restart of the ${which} connection did not reconnect; making a new one`);
  if (which === "sub") resubscribe();
  else if (state.pub) { replacePublisher(); publish(); }
}

function resubscribe() {
  if (state.sub) state.sub.close();
  state.sub = null;
  state.awaitingResubscribe = true;
  send({ type: "resubscribe" });
}

// A media connection failed for good: new peer connections for this same participant, which keeps its
// place, hand, votes and published sources (docs/room-page.md, "Resume").
function restartMedia() {
  resubscribe();
  if (state.pub && (state.camera || state.screen)) {
    replacePublisher();
    publish();
  }
}

async function startCamera() {
  try {
    prejoinDone();
    state.camera = await navigator.mediaDevices.getUserMedia(cameraConstraints());
  } catch (err) {
    setBanner("bad", `Camera/microphone unavailable: ${err.message}`);
    return;
  }
  tile("self", { participant: cfg.identity, source: "camera", name: "You" }).querySelector("video").srcObject = state.camera;
  $("btn-camera").textContent = "Stop camera";
  $("btn-mic").disabled = false;
  await publish();
}

// Stopping a source idles its sections (no track, inactive) rather than stopping them: the re-offer's
// inactive sections unpublish it, the next source of that kind reuses them, and the connection never
// loses its last m-line (Chromium closes the transport when every m-line is rejected; aiortc then closes
// the whole connection).
async function stopSource(stream) {
  if (state.pub) {
    for (const tr of state.pub.getTransceivers()) {
      if (tr.sender.track && stream.getTracks().includes(tr.sender.track)) {
        await tr.sender.replaceTrack(null);
        tr.direction = "inactive";
      }
    }
  }
  for (const track of stream.getTracks()) track.stop();
}

async function stopCamera() {
  if (!state.camera) return;
  const camera = state.camera;
  state.camera = null;
  await stopSource(camera);
  removeTile("self");
  $("btn-camera").textContent = "Start camera";
  $("btn-mic").disabled = true;
  $("btn-mic").textContent = "Mute mic";
  if (state.pub) await publish();
}

async function shareScreen() {
  prejoinDone();
  try {
    state.screen = await navigator.mediaDevices.getDisplayMedia({
      video: { width: { ideal: 1920 }, height: { ideal: 1080 } }, audio: false });
    // Slides and code: keep the resolution and give up frame rate when bits are short.
    for (const track of state.screen.getVideoTracks()) track.contentHint = "detail";
  } catch (err) {
    setBanner("bad", `Screen sharing was not started: ${err.message}`);
    return;
  }
  tile("self-screen", { participant: cfg.identity, source: "screen", name: "You" }).querySelector("video").srcObject = state.screen;
  state.screen.getVideoTracks()[0].addEventListener("ended", stopScreen);
  setShareButton(true);
  await publish();
}

async function stopScreen() {
  if (!state.screen) return;
  const screen = state.screen;
  state.screen = null;
  await stopSource(screen);
  removeTile("self-screen");
  setShareButton(false);
  if (state.pub) await publish();
}

function setShareButton(sharing) {
  const btn = $("btn-screen");
  btn.textContent = sharing ? "Stop sharing" : "Share screen";
  btn.setAttribute("aria-pressed", String(sharing));
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
      state.joined = true;
      state.refused = null;
      state.resume = msg.resume || null;
      state.cluster = msg.cluster || null;
      state.iceServers = msg.ice_servers || [];
      if (msg.resumed) {
        // Same participant, same server connections: the network may have changed meanwhile, so ICE
        // restarts on both; only closed connections are replaced.
        if (!state.sub || state.sub.connectionState === "closed") restartMedia();
        else {
          restartIce("sub");
          if (state.pub && state.pub.connectionState === "closed") { replacePublisher(); await publish(); }
          else if (state.pub) restartIce("pub");
        }
        state.participants.clear();
        for (const p of msg.room.participants) state.participants.set(p.identity, p);
        renderParticipants();
        setBanner("ok", "Joined");
        showConnected();
        break;
      }
      resetPeers();  // a new participant at the server: the old connections are gone there
      state.participants.clear();
      for (const p of msg.room.participants) state.participants.set(p.identity, p);
      renderParticipants();
      setBanner("ok", "Joined");
      if (cfg.canPublish && (state.camera || state.screen)) await publish();
      else if (cfg.canPublish && moved) await publishMoved();
      break;
    case "offer":
      await onOffer(msg);
      break;
    case "answer":
      await onAnswer(msg);
      break;
    case "resubscribed":
      state.awaitingResubscribe = false;
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
      if (msg.track.participant === cfg.identity) {
        state.ownTracks.set(msg.track.track_id, msg.track);
        // A mic published while muted (after a move) says so, as the mute button does.
        const mic = state.camera && state.camera.getAudioTracks()[0];
        if (msg.track.source === "microphone" && mic && !mic.enabled) {
          send({ type: "mute", track_id: msg.track.track_id, muted: true });
        }
      }
      break;
    case "track_unpublished":
      state.ownTracks.delete(msg.track_id);
      state.goneTracks.add(msg.track_id);  // an offer sent before it must not show it again
      for (const el of stage.querySelectorAll(".tile")) {
        if (el.dataset.trackId === msg.track_id) el.remove();
      }
      break;
    case "layers":
      // Dynacast (docs/simulcast.md): run only the layers of that track some viewer needs.
      setActiveLayers(msg.track_id, msg.active);
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
        clearTimeout(state.offerTimer);
        await state.pub.setLocalDescription({ type: "rollback" });
        setBanner("bad", `Publishing was refused: ${msg.message}`);
        await published();
      }
      if (msg.code === "ice_restart_refused") iceRestartFailed(msg.ref === "publish" ? "pub" : "sub");
      if (msg.code === "publish_on_home") {
        // An edge member publishes on the room's home (docs/scaling.md): the page moves there, as on `redirect`.
        state.leaving = true;
        setBanner("connecting", "Moving to the room's server to publish…");
        location.replace(`${msg.page}?token=${encodeURIComponent(cfg.token)}`);
      }

      if (REFUSALS.includes(msg.code) && msg.ref !== "moderate" && !state.joined) {
        state.leaving = true;
        state.refused = msg;
        setBanner("bad", `Not let in: ${msg.message}`);
      }
      break;
    case "redirect": {
      // The room lives on another node (docs/scaling.md): load the page there, with the same token.
      state.leaving = true;
      setBanner("connecting", "Moving to the room's server…");
      const sources = cfg.canPublish ? publishing() : [];
      const again = sources.length ? `&moved=${Date.now()},${sources.join(",")}` : "";
      location.replace(`${msg.page}?token=${encodeURIComponent(cfg.token)}${again}`);
      break;
    }
    case "left":
      state.leaving = true;
      state.joined = false;
      setBanner("bad", `Disconnected: ${msg.reason}`);
      break;
  }
  dispatch(msg);
}

function resetPeers() {
  state.ownTracks.clear();
  state.offering = false;
  state.republish = false;
  state.refusals = 0;
  state.resetPub = false;
  state.awaitingResubscribe = false;
  clearTimeout(state.offerTimer);
  for (const key of ["pub", "sub"]) {
    if (state[key]) state[key].close();
    state[key] = null;
    if (state.iceRestart[key]) clearTimeout(state.iceRestart[key].timer);
    state.iceRestart[key] = null;
  }
  for (const el of stage.querySelectorAll(".tile")) {
    if (!el.id.startsWith("tile-self")) el.remove();
  }
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  // After this page's node stopped answering, another node of the cluster (see onclose).
  const base = state.failover ? state.failover.replace(/^http/, "ws") : `${proto}://${location.host}`;
  const ws = new WebSocket(`${base}/ws/rooms/${encodeURIComponent(cfg.room)}`);
  state.ws = ws;
  setBanner("connecting", state.retry ? "Reconnecting…" : "Connecting…");
  ws.onopen = () => {
    // resumable: after a drop the server keeps this participant for a while; resume: take it back.
    const join = { type: "join", token: cfg.token, resumable: true };
    if (state.resume) join.resume = state.resume;
    if (state.password) join.password = state.password;
    if (state.failover) join.lost = state.cluster.node;  // that node answers with `redirect` to the room's home
    ws.send(JSON.stringify(join));
  };
  let chain = Promise.resolve();
  ws.onmessage = (e) => {
    if (state.ws !== ws) return;  // a socket given up on
    const msg = JSON.parse(e.data);
    chain = chain.then(() => handle(msg)).catch((err) => console.error(err));
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    // The peer connections stay: a resumed participant keeps them (their media may never have stopped).
    if (state.leaving) { resetPeers(); return; }
    state.joined = false;  // a refusal of the next join is final, as a first join's is
    state.retry += 1;
    // Several nodes (docs/scaling.md, "A node that dies"): when a second try on this page's node fails too,
    // join through the other nodes in turn, saying which node was lost; the room is placed again if that
    // node is gone, and the page is sent to the room's home.
    const others = state.cluster ? state.cluster.nodes : [];
    if (others.length && state.retry >= 2) {
      state.failover = others[(state.retry - 2) % others.length];
      setBanner("bad", "The server stopped answering; moving to another one…");
      setTimeout(connect, state.retry > 2 + others.length ? 1000 : 250);
      return;
    }
    const delay = Math.min(10000, 250 * 2 ** Math.min(state.retry, 5));
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

// ---- sound -------------------------------------------------------------------------------------

// Autoplay may be blocked until the user interacts (a page opened from a learning platform): then one
// "Click to enable sound" control plays every remote element.
function play(el, tries = 0) {
  const p = el.play();
  if (p && p.catch) {
    p.catch((err) => {
      if (err.name === "NotAllowedError") {
        // Chromium lets a MediaStream play without a gesture once it has loaded; a refusal before that is
        // retried once on load, and only a second refusal asks for the click.
        if (tries === 0 && el.readyState === 0 && el.srcObject) {
          el.addEventListener("loadedmetadata", () => { if (el.paused) play(el, 5); }, { once: true });
        } else showEnableSound();
      }
      // A new srcObject interrupted it: play the new one (a few times at most).
      else if (err.name === "AbortError" && tries < 5) setTimeout(() => { if (el.paused) play(el, tries + 1); }, 200);
      else console.warn("play() failed", err);
    });
  }
}

function showEnableSound() {
  if ($("btn-sound")) return;
  const btn = document.createElement("button");
  btn.id = "btn-sound";
  btn.type = "button";
  btn.className = "enable-sound";
  btn.textContent = "Click to enable sound";
  btn.onclick = () => {
    btn.remove();
    for (const el of state.media) if (el.isConnected && el.srcObject) play(el);
  };
  document.body.prepend(btn);
}

if (cfg.canPublish) {
  $("btn-camera").onclick = () => (state.camera ? stopCamera() : startCamera());
  $("btn-mic").onclick = toggleMic;
  $("btn-screen").onclick = () => (state.screen ? stopScreen() : shareScreen());
}
$("btn-leave").onclick = () => {
  state.leaving = true;
  state.joined = false;
  send({ type: "leave" });
  if (state.ws) state.ws.close();
  resetPeers();
  setBanner("bad", "You left the room");
  dispatch({ type: "left", code: "left", reason: "you left the room" });
};

// After a refusal or an end: a new join on a new socket (the Rejoin and password buttons), as a new participant.
function rejoin({ password } = {}) {
  if (password !== undefined) state.password = password;
  if (state.ws && state.ws.readyState <= WebSocket.OPEN) state.ws.close();
  state.ws = null;
  state.leaving = false;
  state.joined = false;
  state.resume = null;
  state.retry = 0;
  connect();
}

