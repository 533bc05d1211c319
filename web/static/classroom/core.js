// Classroom transport for the panels: one router for server messages arriving over the data channel
// ("stoa") or over the room WebSocket as {"type":"data","payload":...}, and send() that prefers the
// channel. Envelopes and types: docs/interactive.md.
import { cfg } from "../config.js";
import { notify } from "../dom.js";

export const me = { identity: cfg.identity, role: cfg.role };
export const isMod = () => me.role === "instructor" || me.role === "moderator";
export const readOnly = () => me.role === "viewer";

const ACK_TIMEOUT_MS = 15000;

const handlers = new Map();  // envelope type -> [fn]: the panels' on() calls are the list of types it routes
const subscribed = new Set();  // types this router receives from the room
const pending = new Map();   // envelope id -> {resolve, reject, timer}
let room = null;             // start()
let seq = 0;
let clockOffset = 0;         // server_time - local time, seconds

export function on(type, fn) {
  if (!handlers.has(type)) handlers.set(type, []);
  handlers.get(type).push(fn);
  subscribe(type);
}

// Seconds on the server's clock (deadlines like ends_at / closes_at are server times).
export const serverNow = () => Date.now() / 1000 + clockOffset;

function route(msg) {
  // Room-protocol messages share some type names ("error"); classroom envelopes carry v: 1.
  if (!msg || typeof msg !== "object" || msg.v !== 1) return;
  if (msg.type === "state" && msg.data && typeof msg.data.server_time === "number") {
    clockOffset = msg.data.server_time - Date.now() / 1000;
  }
  if ((msg.type === "ack" || msg.type === "error") && msg.id && pending.has(msg.id)) {
    const p = pending.get(msg.id);
    pending.delete(msg.id);
    clearTimeout(p.timer);
    if (msg.type === "ack") p.resolve(msg.data || {});
    else p.reject(Object.assign(new Error(msg.message || msg.code), { code: msg.code }));
    return;
  }
  if (msg.type === "error") notify(msg.message || "The server refused that.", "bad");
  for (const fn of handlers.get(msg.type) || []) {
    try { fn(msg.data || {}, msg); } catch (err) { console.error(err); }
  }
}

// Data-channel messages reach room.on(<their type>); WebSocket ones reach room.on("data").
const deliver = (m) => route(m && m.type === "data" ? m.payload : m);

function subscribe(type) {
  if (!room || subscribed.has(type)) return;
  subscribed.add(type);
  room.on(type, deliver);
}

// Called by the page's entry module (room-page.js) before the room connects: nothing is missed.
export function start(r) {
  room = r;
  for (const t of ["data", "ack", "error", ...handlers.keys()]) subscribe(t);
}

function transmit(env) {
  const dc = room.state.dataChannel;
  if (dc && dc.readyState === "open") dc.send(JSON.stringify(env));
  else room.send({ type: "data", payload: env });
}

// Send an envelope; resolves with the ack's data, rejects with the server's error (err.code).
export function send(type, data = {}) {
  const id = `c${++seq}`;
  if (type === "chat.typing") {    // never acknowledged
    transmit({ v: 1, type, id, data });
    return Promise.resolve({});
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      pending.delete(id);
      reject(Object.assign(new Error("no answer from the server"), { code: "timeout" }));
    }, ACK_TIMEOUT_MS);
    pending.set(id, { resolve, reject, timer });
    transmit({ v: 1, type, id, data });
  });
}

// What each action is called in a toast ("Could not start the quiz: ...").
const DOING = {
  "chat.send": "send the message", "chat.edit": "edit the message", "chat.delete": "delete the message",
  "chat.pin": "pin the message", "hand.raise": "raise your hand", "hand.lower": "lower the hand",
  "poll.create": "create the poll", "poll.start": "open the poll", "poll.vote": "send your vote",
  "poll.close": "close the poll", "qa.ask": "send the question", "qa.answer": "send the answer",
  "qa.dismiss": "dismiss the question", "qa.feature": "feature the question", "qa.upvote": "vote for the question",
  "quiz.start": "start the quiz", "quiz.answer": "send your answer", "quiz.end": "end the quiz",
  "reaction.send": "send the reaction", "whiteboard.stroke": "draw on the whiteboard",
  "whiteboard.undo": "undo", "whiteboard.clear": "clear the whiteboard", "whiteboard.permit": "change who may draw",
};

// send() that reports a refusal to the user, in words, instead of throwing.
export async function act(type, data = {}) {
  try {
    return await send(type, data);
  } catch (err) {
    notify(`Could not ${DOING[type] || "do that"}: ${err.message}`, "bad");
    return null;
  }
}

export const fmtTime = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
