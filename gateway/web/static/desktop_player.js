// The desktop recording player (templates/player_desktop.html), as an ES module.
// noVNC draws the recorded desktop read-only. It is not connected to anything: a replay
// channel (what noVNC needs of a WebSocket) plays the server's side of the RFB handshake
// (3.8, security None, then the ServerInit body of a start point) and then hands noVNC the
// recorded server messages at their offsets. What noVNC sends is dropped. Seeking builds a
// new noVNC from the last start point at or before the target (the gateway asked for a full
// update right after each one), delivers the events up to the target at once, then plays.
// The RFB comes from /evidence/recordings/{id}/rfb in parts (binary: "CDRP1\n", then per
// event type u8, offset µs u64, length u32, payload), the index (start points, markers, key
// track) from .../desktop-index, both with the page's view pass.
import RFB from "/assets/novnc/core/rfb.js";

const START = 3;
const FROM_SERVER = 1;
const MAGIC = "CDRP1\n";
const TICK_MS = 40;
const LOW_WATER = 200; // events left before the next part is fetched
const KEEP_PLAYED = 1000;
const HIDDEN_KEYS = new Set(["Shift"]); // the keysym already says upper or lower case

const box = document.getElementById("desk");
const status = document.getElementById("player-status");
const playButton = document.getElementById("play");
const speedChoice = document.getElementById("speed");
const slider = document.getElementById("seek");
const clock = document.getElementById("clock");
const base = `/evidence/recordings/${encodeURIComponent(box.dataset.recording)}`;
const pass = `pass=${encodeURIComponent(box.dataset.pass)}`;

function say(text) { status.textContent = text; }
function seconds(t) { return `${t.toFixed(1)} s`; }

// The server's side of RFB toward noVNC, then recorded messages on demand.
class ReplayChannel {
  constructor(serverInit) {
    this._init = serverInit;
    this._got = 0; // bytes noVNC has sent: 12 (version), 13 (security), 14 (ClientInit)
    this.readyState = 0;
    this.protocol = "";
    this.binaryType = "arraybuffer";
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this.ready = new Promise((resolve) => { this._ready = resolve; });
    setTimeout(() => {
      this.readyState = 1;
      if (this.onopen) this.onopen(new Event("open"));
      this._reply(new TextEncoder().encode("RFB 003.008\n"));
    }, 0);
  }
  _reply(bytes) {
    setTimeout(() => this.deliver(bytes), 0); // never inside noVNC's own send
  }
  deliver(bytes) {
    if (this.readyState !== 1 || !this.onmessage) return;
    const data = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    this.onmessage({ data });
  }
  send(data) {
    const before = this._got;
    this._got += data.byteLength !== undefined ? data.byteLength : data.length;
    if (before < 12 && this._got >= 12) this._reply(new Uint8Array([1, 1])); // one type: None
    if (before < 13 && this._got >= 13) this._reply(new Uint8Array([0, 0, 0, 0])); // result ok
    if (before < 14 && this._got >= 14) {
      this._reply(this._init);
      setTimeout(() => this._ready(), 0);
    }
  }
  close() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => { if (this.onclose) this.onclose({ code: 1000, reason: "", wasClean: true }); }, 0);
  }
}

function readPart(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  if (new TextDecoder().decode(bytes.subarray(0, MAGIC.length)) !== MAGIC) throw new Error("not a replay part");
  const out = [];
  let at = MAGIC.length;
  while (at + 13 <= bytes.length) {
    const type = view.getUint8(at);
    const us = Number(view.getBigUint64(at + 1));
    const length = view.getUint32(at + 9);
    at += 13;
    out.push({ t: us / 1e6, type, payload: bytes.subarray(at, at + length) });
    at += length;
  }
  return out;
}

const state = {
  index: null,
  rfb: null,
  channel: null,
  events: [],
  pos: 0,
  next: null, // the next part's first event number, or null at the end
  loading: null,
  playing: false,
  speed: 1,
  at: 0, // recording time when the clock was last anchored
  anchor: 0, // performance.now() then
  generation: 0, // bumped by every seek: late parts of an older one are dropped
  dragging: false,
};

function now() {
  return state.playing ? state.at + ((performance.now() - state.anchor) / 1000) * state.speed : state.at;
}
function anchor(t) { state.at = t; state.anchor = performance.now(); }

async function fetchPart(first, generation) {
  const answer = await fetch(`${base}/rfb?from=${first}&${pass}`, { credentials: "same-origin" });
  if (!answer.ok) throw new Error(`the recording could not be read (${answer.status})`);
  const following = answer.headers.get("X-Next-Event");
  const events = readPart(await answer.arrayBuffer());
  if (generation !== state.generation) return false;
  state.events.push(...events);
  state.next = following ? Number.parseInt(following, 10) : null;
  return true;
}

function moreIfLow() {
  if (state.loading || state.next === null || state.events.length - state.pos > LOW_WATER) return;
  const generation = state.generation;
  state.loading = fetchPart(state.next, generation)
    .catch((error) => say(String(error.message || error)))
    .finally(() => { if (generation === state.generation) state.loading = null; });
}

function deliverUntil(t) {
  while (state.pos < state.events.length && state.events[state.pos].t <= t) {
    const event = state.events[state.pos++];
    if (event.type === FROM_SERVER) state.channel.deliver(event.payload);
  }
  if (state.pos > KEEP_PLAYED) { // played events go: memory holds about one part
    state.events.splice(0, state.pos);
    state.pos = 0;
  }
}

function show(t) {
  if (!state.dragging) slider.value = String(t);
  clock.textContent = `${seconds(t)} / ${seconds(state.index.duration)}`;
  box.dataset.time = t.toFixed(3);
  markPast(t);
}

async function seek(target) {
  const generation = ++state.generation;
  const wasPlaying = state.playing;
  state.playing = false;
  box.dataset.state = "seeking";
  const t = Math.min(Math.max(target, 0), state.index.duration);
  const starts = state.index.starts;
  let start = starts[0];
  for (const s of starts) if (s[0] <= t) start = s;
  if (state.rfb) state.rfb.disconnect();
  state.events = [];
  state.pos = 0;
  state.next = null;
  state.loading = null;
  await fetchPart(start[1], generation);
  if (generation !== state.generation) return;
  const first = state.events[0];
  if (!first || first.type !== START) throw new Error("the recording has no start point there");
  state.pos = 1;
  box.replaceChildren();
  state.channel = new ReplayChannel(first.payload);
  const rfb = new RFB(box, state.channel, { shared: true });
  rfb.viewOnly = true;
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = false;
  state.rfb = rfb;
  await state.channel.ready;
  await new Promise((resolve) => setTimeout(resolve, 0)); // noVNC reads the ServerInit
  if (generation !== state.generation) return;
  // Fast-forward: every event up to the target, fetching parts as needed.
  for (;;) {
    deliverUntil(t);
    const last = state.events[state.events.length - 1];
    if (state.next === null || (last && last.t > t)) break;
    await fetchPart(state.next, generation);
    if (generation !== state.generation) return;
  }
  anchor(t);
  show(t);
  state.playing = wasPlaying;
  box.dataset.state = state.playing ? "playing" : "paused";
}

function tick() {
  if (state.index && state.channel && box.dataset.state !== "seeking") {
    let t = now();
    if (state.playing) {
      const waiting = state.pos >= state.events.length && state.next !== null;
      if (waiting) {
        anchor(t); // hold the clock until the next part is here
      } else {
        deliverUntil(t);
      }
      if (t >= state.index.duration && state.next === null && state.pos >= state.events.length) {
        t = state.index.duration;
        setPlaying(false);
        anchor(t);
        say("End of the recording.");
      }
      moreIfLow();
    }
    show(t);
  }
  setTimeout(tick, TICK_MS);
}

function setPlaying(on) {
  if (on === state.playing) return;
  anchor(now());
  state.playing = on;
  show(state.at); // the time shown is the time paused at, not the last tick's
  playButton.textContent = on ? "Pause" : "Play";
  box.dataset.state = on ? "playing" : "paused";
  if (on && now() >= state.index.duration) seekAndSay(0, true);
}

function seekAndSay(t, play = false) {
  seek(t)
    .then(() => { if (play) setPlaying(true); say(`At ${seconds(t)}.`); })
    .catch((error) => say(String(error.message || error)));
}

// -- key track and markers ---------------------------------------------------------------------
let timed = []; // [seconds, li] in time order, for the "past" highlight
let pastUpTo = 0;

function markPast(t) {
  let i = pastUpTo;
  while (i < timed.length && timed[i][0] <= t) timed[i++][1].classList.add("past");
  while (i > 0 && timed[i - 1][0] > t) timed[--i][1].classList.remove("past");
  pastUpTo = i;
}

function item(t, parts) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  const at = document.createElement("span");
  at.className = "at";
  at.textContent = t.toFixed(1);
  button.append(at, ...parts);
  button.addEventListener("click", () => seekAndSay(t));
  li.append(button);
  return li;
}

// Printable keys typed within a second of each other make one line; named keys stand alone.
function keyLines(keys) {
  const lines = [];
  for (const [t, text] of keys) {
    if (HIDDEN_KEYS.has(text)) continue;
    const last = lines[lines.length - 1];
    if (text.length === 1 && last && last.text && t - last.end < 1) {
      last.text += text;
      last.end = t;
    } else {
      lines.push({ t, end: t, text: text.length === 1 ? text : "", name: text.length === 1 ? "" : text });
    }
  }
  return lines;
}

function showTracks(index) {
  const keys = document.getElementById("keys");
  if (!index.keys.length) document.getElementById("keys-none").hidden = false;
  for (const line of keyLines(index.keys)) {
    const span = document.createElement("span");
    span.className = line.name ? "name" : "text";
    span.textContent = line.name || line.text;
    const li = item(line.t, [span]);
    keys.append(li);
    timed.push([line.t, li]);
  }
  const markers = document.getElementById("markers");
  for (const [t, text] of index.markers) {
    if (text === "keyframe") continue;
    const li = item(t, [document.createTextNode(text)]);
    markers.append(li);
    timed.push([t, li]);
  }
  if (!markers.children.length) markers.append(Object.assign(document.createElement("li"), { textContent: "None." }));
  timed.sort((a, b) => a[0] - b[0]);
}

async function main() {
  const answer = await fetch(`${base}/desktop-index?${pass}`, { credentials: "same-origin" });
  if (!answer.ok) throw new Error(answer.status === 404 ? "Not found or not permitted." : `The recording could not be read (${answer.status}).`);
  const index = await answer.json();
  if (!index.starts.length) throw new Error("Nothing was recorded.");
  state.index = index;
  slider.max = String(index.duration);
  slider.disabled = false;
  playButton.disabled = false;
  showTracks(index);
  const asked = Number.parseFloat(box.dataset.start || "0");
  await seek(Number.isFinite(asked) && asked > 0 ? asked : Math.min(1, index.duration));
  say(`Ready: ${seconds(index.duration)} recorded. Press Play.`);
  window.conduitReplay = { seek, now, state };
  tick();
}

playButton.addEventListener("click", () => setPlaying(!state.playing));
speedChoice.addEventListener("change", () => {
  const speed = Number.parseFloat(speedChoice.value);
  anchor(now());
  state.speed = Number.isFinite(speed) ? Math.min(Math.max(speed, 0.5), 8) : 1;
});
slider.addEventListener("pointerdown", () => { state.dragging = true; });
slider.addEventListener("input", () => { clock.textContent = `${seconds(Number(slider.value))} / ${seconds(state.index.duration)}`; });
slider.addEventListener("change", () => {
  state.dragging = false;
  seekAndSay(Number(slider.value), state.playing);
});
document.addEventListener("keydown", (event) => {
  if (event.key !== " " || ["INPUT", "SELECT", "BUTTON", "TEXTAREA"].includes(document.activeElement.tagName)) return;
  event.preventDefault();
  if (!playButton.disabled) setPlaying(!state.playing);
});
main().catch((error) => { box.dataset.state = "failed"; say(String(error.message || error)); });
