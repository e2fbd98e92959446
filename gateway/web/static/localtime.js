// Beside each instant the server rendered in UTC (<time class="when" datetime="ISO">), add the
// browser's local time. Loaded as a module from our origin: no inline script (strict CSP).
const format = new Intl.DateTimeFormat(undefined, {
  weekday: "short",
  hour: "2-digit",
  minute: "2-digit",
  hourCycle: "h23",
});

export function addLocalTimes(root = document) {
  for (const element of root.querySelectorAll("time.when[datetime]")) {
    if (element.dataset.local) continue;
    const at = new Date(element.getAttribute("datetime"));
    if (Number.isNaN(at.getTime())) continue;
    const local = document.createElement("span");
    local.className = "local";
    local.textContent = ` (${format.format(at)} your time)`;
    element.after(local);
    element.dataset.local = "1";
  }
}

addLocalTimes();
document.addEventListener("htmx:afterSwap", (event) => addLocalTimes(event.target));
