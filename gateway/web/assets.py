"""Browser libraries from npm, served from our own origin: only the files named here.

``npm ci`` (the setup scripts) puts them in ``node_modules`` beside the source tree; they are
never committed. A file not listed is 404, so the rest of ``node_modules`` is never reachable.
A missing file (npm not run) is 404 too: pages work without it, they only stop refreshing.
Does not serve our own CSS (``/static``).
"""

from __future__ import annotations

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


@router.get("/assets/{name}")
async def asset(name: str) -> FileResponse:
    relative = FILES.get(name)
    path = NODE_MODULES / relative if relative is not None else None
    if path is None or not path.is_file():
        raise HTTPException(status_code=404, detail="not found")
    media = "text/css" if name.endswith(".css") else "text/javascript"
    return FileResponse(path, media_type=media)
