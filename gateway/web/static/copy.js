// Copy buttons: <button class="copy" data-copy="ID"> copies the text of element ID with the
// Clipboard API and says so on the button for a moment. No inline script (strict CSP).
const DONE_MS = 1500;

async function copyFrom(button) {
  const source = document.getElementById(button.dataset.copy);
  if (source === null) return;
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(source.textContent);
    button.textContent = "Copied";
  } catch {
    // No clipboard (plain HTTP, or permission refused): select the text for Ctrl+C instead.
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    button.textContent = "Selected: press Ctrl+C";
  }
  window.setTimeout(() => { button.textContent = label; }, DONE_MS);
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy[data-copy]");
  if (button !== null) copyFrom(button);
});
