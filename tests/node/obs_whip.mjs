// Publishes H.264 over WHIP the way OBS's plugins/obs-webrtc/whip-output.cpp drives libdatachannel:
// one SendOnly audio (Opus 111) and video (H.264 96, 42e01f) section, SR reporter and NACK responder
// on the track, ICE gathering completed before the one offer (no trickle), POST, 201 + Location,
// the answer applied, frames sent, DELETE at the end. Prints one JSON line per step.
// usage: node obs_whip.mjs URL TOKEN FILE.h264 SECONDS
import { readFileSync } from 'node:fs';
import ndc from 'node-datachannel';

const [url, token, file, seconds] = process.argv.slice(2);
const say = (event, extra = {}) => console.log(JSON.stringify({ event, ...extra }));
const FPS = 30;
const MAX_FRAGMENT = 1188; // OBS sends 1200-byte RTP packets

function accessUnits(data) {
  // Annex B split on access unit delimiters (x264 aud=1): 00 00 00 01 09 / 00 00 01 09.
  const starts = [];
  for (let i = 0; i + 4 < data.length; i++) {
    if (data[i] === 0 && data[i + 1] === 0) {
      if (data[i + 2] === 1 && (data[i + 3] & 0x1f) === 9) starts.push(i);
      else if (data[i + 2] === 0 && data[i + 3] === 1 && (data[i + 4] & 0x1f) === 9) { starts.push(i); i++; }
    }
  }
  return starts.map((s, k) => data.subarray(s, k + 1 < starts.length ? starts[k + 1] : data.length));
}

ndc.initLogger(process.env.STOA_RTC_LOG || 'Warning', (level, message) => say('log', { level, message }));
const frames = accessUnits(readFileSync(file));
const pc = new ndc.PeerConnection('obs', { iceServers: [], bindAddress: '127.0.0.1' });
pc.onStateChange((state) => say('state', { state }));

const audio = new ndc.Audio('0', 'SendOnly');
audio.addOpusCodec(111, 'minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1');
audio.addSSRC(1111, 'obs', 'obs', 'obs-audio');
const audioTrack = pc.addTrack(audio);

const ssrc = 2222;
const video = new ndc.Video('1', 'SendOnly');
video.addH264Codec(96, 'profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1');
video.addSSRC(ssrc, 'obs', 'obs', 'obs-video');
const videoTrack = pc.addTrack(video);
const rtpConfig = new ndc.RtpPacketizationConfig(ssrc, 'obs', 96, 90000);
const packetizer = new ndc.H264RtpPacketizer('StartSequence', rtpConfig, MAX_FRAGMENT);
packetizer.addToChain(new ndc.RtcpSrReporter(rtpConfig));
packetizer.addToChain(new ndc.RtcpNackResponder(512));
videoTrack.setMediaHandler(packetizer);

const opened = new Promise((resolve) => videoTrack.onOpen(resolve));
const gathered = new Promise((resolve) => pc.onGatheringStateChange((s) => s === 'complete' && resolve()));
pc.setLocalDescription();
await gathered;
const offer = pc.localDescription().sdp;

const base = new URL(url);
const post = await fetch(url, {
  method: 'POST', body: offer,
  headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
});
const answer = await post.text();
const location = post.headers.get('location');
say('created', { status: post.status, location, etag: post.headers.get('etag') });
if (post.status !== 201) { say('error', { body: answer }); process.exit(1); }
pc.setRemoteDescription(answer, 'answer');

await Promise.race([opened, new Promise((_, reject) => setTimeout(() => reject(new Error('track never opened')), 10000))]);
say('open');
const start = Date.now();
const tsBase = 1000 + Math.floor(Math.random() * 1e6);
let sent = 0;
while (Date.now() - start < Number(seconds) * 1000) {
  const frame = frames[sent % frames.length];
  rtpConfig.timestamp = (tsBase + sent * (90000 / FPS)) >>> 0;
  videoTrack.sendMessageBinary(Buffer.from(frame));
  sent++;
  const due = start + (sent * 1000) / FPS - Date.now();
  if (due > 0) await new Promise((r) => setTimeout(r, due));
}
say('sent', { frames: sent });

const del = await fetch(new URL(location, base), { method: 'DELETE', headers: { Authorization: `Bearer ${token}` } });
say('deleted', { status: del.status });
audioTrack.close();
videoTrack.close();
pc.close();
ndc.cleanup();
process.exit(0);
