"""Browser libraries from npm, served from our own origin: only the files named here.

``npm ci`` (the setup scripts) puts them in ``node_modules`` beside the source tree; they are
never committed. A file not listed is 404, so the rest of ``node_modules`` is never reachable.
A missing file (npm not run) is 404 too: pages work without it, they only stop refreshing.
noVNC is ES modules that import each other by relative path, so its two module trees
(``core/`` and the ``vendor/pako`` it imports) are served under ``/assets/novnc/`` with their
own layout: ``.js`` files only, resolved inside those trees (no ``..``, no symlink out).
Does not serve our own CSS (``/static``).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)

NODE_MODULES = Path(__file__).resolve().parents[2] / "node_modules"
# URL name -> file under node_modules, pinned by package-lock.json.
FILES: dict[str, str] = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "xterm.js": "@xterm/xterm/lib/xterm.js",
    "xterm.css": "@xterm/xterm/css/xterm.css",
    "addon-fit.js": "@xterm/addon-fit/lib/addon-fit.js",
    "asciinema-player.min.js": "asciinema-player/dist/bundle/asciinema-player.min.js",
    "asciinema-player.css": "asciinema-player/dist/bundle/asciinema-player.css",
    "uPlot.esm.js": "uplot/dist/uPlot.esm.js",
    "uPlot.min.css": "uplot/dist/uPlot.min.css",
}


NOVNC = NODE_MODULES / "@novnc" / "novnc"
NOVNC_TREES = ("core/", "vendor/pako/")
NOVNC_PATH = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_.-]+)*\.js")


def novnc_file(relative: str) -> Path | None:
    """The noVNC module at ``relative``, or None when it is not one we serve."""
    if not NOVNC_PATH.fullmatch(relative) or "/../" in f"/{relative}" or "/./" in f"/{relative}":
        return None
    if not relative.startswith(NOVNC_TREES):
        return None
    root = NOVNC.resolve()
    path = (NOVNC / relative).resolve()
    if not path.is_file() or not path.is_relative_to(root / relative.split("/", 1)[0]):
        return None
    return path


@router.get("/assets/novnc/{relative:path}")
async def novnc_module(relative: str) -> FileResponse:
    path = novnc_file(relative)
    if path is None:
        raise HTTPException(status_code=404, detail="not found")
    return FileResponse(path, media_type="text/javascript")


@router.get("/assets/{name}")
async def asset(name: str) -> FileResponse:
    relative = FILES.get(name)
    path = NODE_MODULES / relative if relative is not None else None
    if path is None or not path.is_file():
        raise HTTPException(status_code=404, detail="not found")
    media = "text/css" if name.endswith(".css") else "text/javascript"
    return FileResponse(path, media_type=media)
