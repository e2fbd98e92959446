// What the terminal and desktop pages share (terminal.js, desktop.js), as an ES module: the
// websocket URL on this page's own origin, the status line, and the words for a socket that
// closed without an end line of its own. Opens nothing and draws nothing itself.

export function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

export function show(status, text, ended = false) {
  status.textContent = text;
  status.classList.toggle("ended", ended);
}

export function closedText(event, what) {
  if (event.code === 4404) return `${what} ended: not found or not permitted.`;
  if (event.code === 1008) return `${what} refused: ${event.reason || "not permitted"}. Reload the page to start again.`;
  if (event.code === 1000 || event.code === 1005) return `${what} ended.`;
  return `${what} closed (${event.reason || "connection lost"}).`;
}
