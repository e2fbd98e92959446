// The desktop in the browser and its live watch view (templates/desktop.html), as an ES module.
// noVNC draws the desktop; the gateway speaks RFB to it over our websocket after doing the
// target's own handshake itself (the target's password never reaches this page). The socket
// is opened here, not by noVNC: binary frames are RFB and go to noVNC through a channel
// object, text frames are the gateway's small JSON controls (the reason a session ended),
// which noVNC would take for RFB bytes.
import RFB from "/assets/novnc/core/rfb.js";
import { askTicket, closedText, show, socketUrl } from "/static/session_page.js";

const MIN_SIDE = 64;
const MAX_WIDTH = 3840;
const MAX_HEIGHT = 2160;

// What noVNC needs of a WebSocket (core/websock.js attach): binary frames pass through,
// text frames go to onControl, and the close event carries code and reason for the page.
class Channel {
  constructor(url, onControl, onClose) {
    this._socket = new WebSocket(url);
    this._socket.binaryType = "arraybuffer";
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this._socket.addEventListener("open", (event) => this.onopen && this.onopen(event));
    this._socket.addEventListener("error", (event) => this.onerror && this.onerror(event));
    this._socket.addEventListener("message", (event) => {
      if (typeof event.data === "string") onControl(JSON.parse(event.data));
      else if (this.onmessage) this.onmessage(event);
    });
    this._socket.addEventListener("close", (event) => {
      onClose(event);
      if (this.onclose) this.onclose(event);
    });
  }
  get readyState() { return this._socket.readyState; }
  get protocol() { return this._socket.protocol; }
  get binaryType() { return "arraybuffer"; }
  set binaryType(_value) { /* always arraybuffer */ }
  send(data) { if (this._socket.readyState === WebSocket.OPEN) this._socket.send(data); }
  close() { this._socket.close(); }
}

// The last frame stays on the page, dimmed, under the reason (noVNC removes its canvas when
// the connection closes).
function keepLastFrame(box, rfb) {
  if (!rfb || box.querySelector(".desk-last")) return;
  try {
    const picture = document.createElement("img");
    picture.className = "desk-last";
    picture.alt = "The desktop as it was when the session ended";
    picture.src = rfb.toDataURL("image/png");
    box.prepend(picture);
  } catch (_error) {
    // no frame yet: the banner alone
  }
}

function ended(box, text) {
  const banner = box.querySelector(".desk-end");
  if (banner) {
    banner.textContent = text;
    banner.hidden = false;
  }
}

function connectView(box, status, url, what, viewOnly) {
  let reason = "";
  let rfb = null;
  const channel = new Channel(
    url,
    (control) => {
      if (control.type === "end") {
        reason = `${what} ended: ${control.reason}`;
        keepLastFrame(box, rfb);
      }
    },
    (event) => {
      const text = reason || closedText(event, what);
      keepLastFrame(box, rfb);
      show(status, text, true);
      ended(box, text);
    },
  );
  rfb = new RFB(box, channel, { shared: true });
  rfb.viewOnly = viewOnly;
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = !viewOnly;
  rfb.addEventListener("connect", () => {
    show(status, viewOnly ? "Watching live." : `Connected to ${box.dataset.asset}.`);
    if (!viewOnly) rfb.focus();
  });
  rfb.addEventListener("desktopname", (event) => { box.dataset.name = event.detail.name; });
  return rfb;
}

function screenSize(box) {
  const clamp = (v, hi) => Math.min(Math.max(Math.round(v), MIN_SIDE), hi);
  const rect = box.getBoundingClientRect();
  return [clamp(rect.width || 1024, MAX_WIDTH), clamp(rect.height || 768, MAX_HEIGHT)];
}

async function openDesktop(box, status) {
  const ticket = await askTicket(box, status, "desktop");
  if (!ticket) return;
  const [width, height] = screenSize(box);
  const url = socketUrl(`/ws/desktop?ticket=${encodeURIComponent(ticket)}&width=${width}&height=${height}`);
  window.conduitDesktop = connectView(box, status, url, "Session", false);
}

const box = document.getElementById("desk");
const status = document.getElementById("desk-status");
if (box && status) {
  if (box.dataset.mode === "watch") {
    const url = socketUrl(`/ws/watch-desktop/${encodeURIComponent(box.dataset.session)}`);
    window.conduitDesktop = connectView(box, status, url, "Watch", true);
  } else {
    openDesktop(box, status).catch(() => show(status, "Could not open the desktop.", true));
  }
}
