// The recording player page (templates/player.html), as an ES module. asciinema-player is
// loaded first as a classic script (global AsciinemaPlayer). The cast comes from our own
// /cast URL with the page's view pass; changing the speed rebuilds the player at the same
// time with the same URL (no second audit event: the pass covers this page view).
// The player sets its sizes through element.style (the CSSOM), which the CSP allows; it
// needs no inline style or script. Its terminal emulator is WebAssembly, hence the page's
// 'wasm-unsafe-eval'.

const box = document.getElementById("player");
const speedChoice = document.getElementById("speed");
const status = document.getElementById("player-status");
const nextPart = document.getElementById("next-part");
let player = null;

// A long recording comes in parts: once this part is loaded its duration is where the next
// part starts (a new page view at that offset).
function linkNextPart() {
  if (nextPart === null) return;
  const timer = setInterval(() => {
    const end = player === null ? undefined : player.getDuration();
    if (end === undefined || end === null) return;
    clearInterval(timer);
    const url = new URL(window.location.href);
    url.searchParams.set("t", end.toFixed(6));
    url.searchParams.delete("hit");
    nextPart.href = url.pathname + url.search;
    nextPart.hidden = false;
  }, 250);
}

// Opened at the start, the poster is the first frame (the server says when the first output
// was recorded; the screen at a time shows what came before it, hence the millisecond after):
// at 0 s the terminal is still blank.
function posterTime(at) {
  const first = Number.parseFloat(box.dataset.firstFrame || "");
  return at === 0 && Number.isFinite(first) ? first + 0.001 : at;
}

function build(at, speed, play) {
  if (player !== null) player.dispose();
  box.replaceChildren();
  player = AsciinemaPlayer.create({ url: box.dataset.cast, parser: "asciicast" }, box, {
    startAt: at,
    poster: `npt:${posterTime(at)}`,
    preload: true,
    autoPlay: play,
    speed,
    fit: "width",
    controls: true,
    keystrokeOverlay: true,
    terminalFontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace',
  });
  player.addEventListener("marker", (event) => {
    status.textContent = `Marker at ${event.time.toFixed(1)} s: ${event.label}`;
  });
  player.addEventListener("ended", () => {
    status.textContent = "End of the recording.";
  });
}

function start() {
  const at = Number.parseFloat(box.dataset.start || "0");
  build(Number.isFinite(at) ? at : 0, 1, false);
  linkNextPart();
  speedChoice.addEventListener("change", () => {
    const speed = Number.parseFloat(speedChoice.value);
    build(player.getCurrentTime(), Number.isFinite(speed) ? speed : 1, true);
  });
  document.getElementById("prev-marker").addEventListener("click", () => player.seek({ marker: "prev" }));
  document.getElementById("next-marker").addEventListener("click", () => player.seek({ marker: "next" }));
}

if (typeof AsciinemaPlayer === "undefined") {
  status.textContent = "The player did not load (its files are missing on the server).";
} else {
  start();
}
