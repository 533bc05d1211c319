// Camera, microphone and speaker choice (docs/room-page.md, "Devices"): the pre-join check on the stage and the
// Devices dialog share one form. A device changed while publishing swaps the track on the same sender with
// replaceTrack(): no renegotiation. The speaker is chosen with setSinkId() where the browser has it.
import { $, h, notify } from "./dom.js";

const KEY = "stoa.devices";
const chosen = Object.assign({ camera: "", mic: "", speaker: "" }, safeLoad());
const canPickSpeaker = typeof HTMLMediaElement !== "undefined" && "setSinkId" in HTMLMediaElement.prototype;
let stoa = null;
let preview = null;        // the preview stream (before publishing)
let meter = null;          // {ctx, timer}

function safeLoad() {
  try { return JSON.parse(localStorage.getItem(KEY) || "{}"); } catch { return {}; }
}
function save() {
  try { localStorage.setItem(KEY, JSON.stringify(chosen)); } catch { /* private mode: not remembered */ }
}

function buildForm() {
  const field = (label, id) => h("label", { for: id }, label, h("select", { id }));
  const form = h("div", { id: "devices", class: "devices" },
    h("video", { id: "dev-preview", class: "dev-preview", muted: "", autoplay: "", playsinline: "",
                  "aria-label": "Camera preview" }),
    h("div", { class: "dev-fields" },
      field("Camera", "dev-camera"),
      field("Microphone", "dev-mic"),
      h("label", { for: "mic-level" }, "Microphone level",
         h("meter", { id: "mic-level", min: "0", max: "1", low: "0.05", high: "0.8", optimum: "0.3", value: "0" })),
      canPickSpeaker ? field("Speaker", "dev-speaker") : h("p", { class: "hint" },
        "This browser plays sound on its default speaker."),
      h("button", { id: "dev-test", type: "button", class: "secondary" }, "Test camera and microphone")));
  form.querySelector("video").muted = true;
  form.querySelector("#dev-camera").addEventListener("change", (e) => pick("camera", e.target.value));
  form.querySelector("#dev-mic").addEventListener("change", (e) => pick("mic", e.target.value));
  if (canPickSpeaker) form.querySelector("#dev-speaker").addEventListener("change", (e) => pick("speaker", e.target.value));
  form.querySelector("#dev-test").addEventListener("click", startPreview);
  return form;
}

async function listDevices() {
  const all = await navigator.mediaDevices.enumerateDevices();
  const fill = (id, kind, current, noun) => {
    const select = $(id);
    if (!select) return;
    const found = all.filter((d) => d.kind === kind && d.deviceId);
    select.replaceChildren(...(found.length ? found : [{ deviceId: "", label: "" }]).map((d, i) => {
      const o = h("option", { value: d.deviceId }, d.label || (d.deviceId ? `${noun} ${i + 1}` : `Default ${noun.toLowerCase()}`));
      o.selected = d.deviceId === current;
      return o;
    }));
  };
  fill("dev-camera", "videoinput", chosen.camera || liveId("video"), "Camera");
  fill("dev-mic", "audioinput", chosen.mic || liveId("audio"), "Microphone");
  fill("dev-speaker", "audiooutput", chosen.speaker, "Speaker");
}

function liveId(kind) {
  const stream = stoa?.state.camera || preview;
  const track = stream && stream.getTracks().find((t) => t.kind === kind);
  return track ? track.getSettings().deviceId || "" : "";
}

const exact = (id) => (id ? { deviceId: { exact: id } } : {});
const videoConstraints = (extra = {}) => ({ ...exact(chosen.camera), width: { ideal: 1280 }, height: { ideal: 720 }, ...extra });

// What room.js asks getUserMedia for when the camera starts: the chosen devices.
export function cameraConstraints() {
  return { video: videoConstraints(), audio: chosen.mic ? exact(chosen.mic) : true };
}

async function pick(what, deviceId) {
  chosen[what] = deviceId;
  save();
  if (what === "speaker") {
    for (const m of stoa.state.media) applySink(m);
    return;
  }
  if (stoa.state.camera) await switchLive(what === "camera" ? "video" : "audio");
  else if (preview) await startPreview();
}

// Sound of one <audio>/<video> to the chosen speaker.
export function applySink(media) {
  if (!canPickSpeaker || !media.setSinkId) return;
  media.setSinkId(chosen.speaker || "").catch((err) => console.warn("speaker not changed:", err.message));
}

// The published camera or microphone changes device: a new track on the same sender (no new offer).
export async function switchLive(kind) {
  const s = stoa.state;
  const stream = s.camera;
  const old = stream.getTracks().find((t) => t.kind === kind);
  let fresh;
  try {
    const got = await navigator.mediaDevices.getUserMedia(kind === "video" ? { video: videoConstraints() }
                                                                            : { audio: exact(chosen.mic) });
    fresh = got.getTracks()[0];
  } catch (err) {
    notifyDevice(`That ${kind === "video" ? "camera" : "microphone"} could not be opened: ${err.message}`);
    return;
  }
  if (old) fresh.enabled = old.enabled;   // a muted microphone stays muted
  const sender = s.pub && s.pub.getSenders().find((x) => x.track && x.track === old);
  if (sender) await sender.replaceTrack(fresh);
  if (old) { stream.removeTrack(old); old.stop(); }
  stream.addTrack(fresh);
  const self = document.querySelector("#tile-self video");
  if (self) self.srcObject = stream;
  showPreview(stream);
}

const notifyDevice = (text) => notify(text, "bad", 6000);

async function startPreview() {
  stopPreview();
  try {
    preview = await navigator.mediaDevices.getUserMedia({
      video: videoConstraints({ width: { ideal: 640 }, height: { ideal: 360 } }), audio: chosen.mic ? exact(chosen.mic) : true });
  } catch (err) {
    notifyDevice(`Camera or microphone unavailable: ${err.message}`);
    return;
  }
  showPreview(preview);
  await listDevices();
}

function showPreview(stream) {
  const video = $("dev-preview");
  if (video) video.srcObject = stream;
  startMeter(stream);
}

export function stopPreview() {
  stopMeter();
  if (preview) for (const t of preview.getTracks()) t.stop();
  preview = null;
  const video = $("dev-preview");
  if (video) video.srcObject = null;
}

// The microphone level: RMS of the last 2048 samples, every 100 ms, on a <meter>.
function startMeter(stream) {
  stopMeter();
  const track = stream.getAudioTracks()[0];
  if (!track || typeof AudioContext === "undefined") return;
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    const m = $("mic-level");
    if (m) m.value = Math.min(1, Math.sqrt(sum / buf.length) * 4);
  }, 100);
  meter = { ctx, timer };
}

function stopMeter() {
  if (!meter) return;
  clearInterval(meter.timer);
  meter.ctx.close();
  meter = null;
}

// The pre-join check ends when the camera or a share starts, or on "Continue without camera".
export function prejoinDone() {
  const card = $("prejoin");
  if (!card || card.hidden) return;
  card.hidden = true;
  stopPreview();
}

export function startDevices(s) {
  stoa = s;
  const form = buildForm();
  const card = $("prejoin");
  (card ? $("prejoin-devices") : $("devices-slot")).append(form);
  if (card) {
    $("prejoin-start").addEventListener("click", () => $("btn-camera").click());
    $("prejoin-skip").addEventListener("click", prejoinDone);
  }
  const dialog = $("devices-dialog");
  $("btn-devices").addEventListener("click", async () => {
    prejoinDone();
    $("devices-slot").append(form);
    $("dev-test").hidden = Boolean(stoa.state.camera);   // live: the form shows the published camera
    dialog.showModal();
    await listDevices();
    if (stoa.state.camera) showPreview(stoa.state.camera);
  });
  dialog.addEventListener("close", () => { if (!stoa.state.camera) stopPreview(); else stopMeter(); });
  listDevices().catch(() => {});
  navigator.mediaDevices.addEventListener?.("devicechange", () => listDevices().catch(() => {}));
}
