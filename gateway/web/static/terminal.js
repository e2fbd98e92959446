// The browser terminal and the live watch view (templates/terminal.html), as an ES module.
// xterm.js and its fit addon are loaded first as classic scripts: globals Terminal, FitAddon.
// Binary websocket frames carry terminal bytes (xterm decodes UTF-8); text frames carry small
// JSON controls. Copy and paste are xterm's own: select to copy, Ctrl+Shift+V to paste.
import { askTicket, closedText, show, socketUrl } from "/static/session_page.js";

const MAX_COLS = 1000;
const MAX_ROWS = 500;
const FONT = 'ui-monospace, "DejaVu Sans Mono", monospace';

// The CSP allows no inline style. xterm's DOM renderer keeps its colours and cell sizes in
// <style> elements, and 24-bit colours in style attributes, which the CSP refuses. Both go
// to the CSSOM instead (a constructed style sheet, element.style), which the CSP allows:
// the same rules, and no inline style on the page.
function adoptXtermStyles() {
  const create = document.createElement.bind(document);
  document.createElement = (tag, options) => {
    if (String(tag).toLowerCase() !== "style") return create(tag, options);
    const holder = create("template"); // inert: a stand-in the renderer fills and removes
    const sheet = new CSSStyleSheet();
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
    let text = "";
    Object.defineProperty(holder, "textContent", {
      get: () => text,
      set: (value) => {
        text = String(value);
        sheet.replaceSync(text);
      },
    });
    return holder;
  };
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (String(name).toLowerCase() === "style") {
      this.style.cssText = String(value);
      return;
    }
    setAttribute.call(this, name, value);
  };
}

async function openTerminal(box, status) {
  const term = new Terminal({ cursorBlink: true, fontFamily: FONT, scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  const { asset } = box.dataset;
  const ticket = await askTicket(box, status, "terminal");
  if (!ticket) return;
  const cols = Math.min(Math.max(term.cols, 1), MAX_COLS);
  const rows = Math.min(Math.max(term.rows, 1), MAX_ROWS);
  const socket = new WebSocket(socketUrl(`/ws/terminal?ticket=${encodeURIComponent(ticket)}&cols=${cols}&rows=${rows}`));
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  const send = (data) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(data);
  };
  socket.addEventListener("open", () => {
    show(status, `Connected to ${asset}.`);
    term.focus();
  });
  let ended = "";
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      term.write(new Uint8Array(event.data));
      return;
    }
    const control = JSON.parse(event.data);
    if (control.type === "end") ended = `Session ended: ${control.reason}`;
  });
  socket.addEventListener("close", (event) => {
    show(status, ended || closedText(event, "Session"), true);
    term.options.disableStdin = true;
    term.options.cursorBlink = false;
  });
  term.onData((data) => send(encoder.encode(data)));
  term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(({ cols: c, rows: r }) => {
    if (c >= 1 && c <= MAX_COLS && r >= 1 && r <= MAX_ROWS) {
      send(JSON.stringify({ type: "resize", cols: c, rows: r }));
    }
  });
  let pending = false;
  new ResizeObserver(() => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      fit.fit();
    });
  }).observe(box);
}

function openWatch(box, status) {
  const term = new Terminal({ disableStdin: true, cursorBlink: false, fontFamily: FONT, scrollback: 5000 });
  term.open(box);
  const socket = new WebSocket(socketUrl(`/ws/watch/${encodeURIComponent(box.dataset.session)}`));
  let ended = "";
  socket.binaryType = "arraybuffer";
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      term.write(new Uint8Array(event.data));
      return;
    }
    const control = JSON.parse(event.data);
    if (control.type === "start") {
      term.reset();
      term.resize(control.cols, control.rows);
      show(status, `Watching live (${control.cols}x${control.rows}).`);
    } else if (control.type === "resize") {
      term.resize(control.cols, control.rows);
      show(status, `Watching live (${control.cols}x${control.rows}).`);
    } else if (control.type === "end") {
      ended = `Watch ended: ${control.reason}`;
    }
  });
  socket.addEventListener("close", (event) => show(status, ended || closedText(event, "Watch"), true));
}

const box = document.getElementById("term");
const status = document.getElementById("term-status");
if (box && status) {
  adoptXtermStyles();
  if (box.dataset.mode === "watch") openWatch(box, status);
  else openTerminal(box, status).catch(() => show(status, "Could not open the terminal.", true));
}
