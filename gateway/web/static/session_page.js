// What the terminal and desktop pages share (terminal.js, desktop.js), as an ES module: the
// one-time ticket for the page's socket, the websocket URL on this page's own origin, the
// status line, and the words for a socket that closed without an end line of its own. Opens
// no socket and draws nothing but the status line.

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

// The one-time ticket for the socket of a ``kind`` ("terminal", "desktop") on the box's asset
// and account (the session's CSRF token from the page); "" when refused, said on the status.
export async function askTicket(box, status, kind) {
  const { asset, account, csrf } = box.dataset;
  const query = account && account !== "default" ? `?account=${encodeURIComponent(account)}` : "";
  const answer = await fetch(`/connect/${encodeURIComponent(asset)}/${kind}/ticket${query}`, {
    method: "POST",
    headers: { "X-CSRF-Token": csrf },
    credentials: "same-origin",
  });
  if (!answer.ok) {
    show(status, answer.status === 404 ? "Not found or not permitted." : `Could not open the ${kind}; sign in again.`, true);
    return "";
  }
  const { ticket } = await answer.json();
  return ticket;
}
