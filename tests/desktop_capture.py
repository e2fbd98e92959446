"""Capture a transcript of a real Xvnc session in every encoding we frame.

``python -m tests.desktop_capture OUT`` starts an Xvnc (security None, 320x240), draws an
xterm with text on a painted root window, and records both directions of one RFB
connection while it asks for full updates in Raw, RRE, Hextile, ZRLE and Tight (with JPEG),
then moves the window for CopyRect. tests/desktop_data/xvnc-320x240.transcript came from
here; the realpeer tests call ``capture`` against a fresh Xvnc as well.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from gateway.desktop import rfb
from tests.desktop_targets import XvncTarget, save_transcript, start_xvnc

PSEUDO = [rfb.ENC_CURSOR, rfb.ENC_LAST_RECT, rfb.ENC_EXTENDED_DESKTOP_SIZE,
          rfb.ENC_DESKTOP_SIZE, rfb.ENC_DESKTOP_NAME]  # fmt: skip
ROUNDS = [
    [rfb.ENC_RAW],
    [rfb.ENC_RRE],
    [rfb.ENC_HEXTILE],
    [rfb.ENC_ZRLE],
    [rfb.ENC_TIGHT, -32 + 5, -256 + 6],  # JPEG quality 5, compression 6
    [rfb.ENC_TIGHT, -256 + 1],  # Tight without JPEG: basic compression, palettes, fill
]
WAIT_SECONDS = 10


async def capture(target: XvncTarget) -> list[tuple[str, bytes]]:
    """One connection (security None) through every round; returns the transcript."""
    chunks: list[tuple[str, bytes]] = []
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    server = rfb.ServerStreamParser()
    pending: list[rfb.ServerMessage] = []

    def send(data: bytes) -> None:
        chunks.append(("C", data))
        for message in rfb.ClientStreamParser(handshake=False).feed(data) if sent_init else []:
            server.note_client(message)
        writer.write(data)

    async def next_message() -> rfb.ServerMessage:
        async with asyncio.timeout(WAIT_SECONDS):
            while not pending:
                data = await reader.read(1 << 16)
                if not data:
                    raise EOFError
                chunks.append(("S", data))
                pending.extend(server.feed(data))
        return pending.pop(0)

    async def next_update() -> rfb.FramebufferUpdate:
        while True:
            message = await next_message()
            if isinstance(message, rfb.FramebufferUpdate):
                return message

    async def full_update(encoding: int) -> None:
        """Ask for the whole screen until an update carries ``encoding`` (the first answer
        after SetEncodings may hold only pseudo-rectangles: Xvnc then sends the pixels for
        the next, incremental, request)."""
        for attempt in range(5):
            send(rfb.framebuffer_update_request(0, 0, init.width, init.height,
                                                incremental=attempt > 0))  # fmt: skip
            update = await next_update()
            if any(r.encoding == encoding for r in update.rectangles):
                return
        raise AssertionError(f"no rectangle in encoding {encoding}")

    sent_init = False
    await next_message()
    send(rfb.protocol_version(8))
    server.note_client(rfb.ClientStreamParser().feed(rfb.protocol_version(8))[0])
    await next_message()
    send(rfb.security_choice(rfb.SEC_NONE))
    server.note_client(rfb.SecurityChoice(rfb.SEC_NONE, b"\x01"))
    await next_message()  # SecurityResult
    send(rfb.client_init(True))
    server.note_client(rfb.ClientInit(True, b"\x01"))
    init = await next_message()
    assert isinstance(init, rfb.ServerInit)
    sent_init = True
    for encodings in ROUNDS:
        send(rfb.set_encodings([*encodings, *PSEUDO]))
        await full_update(encodings[0])
    xterm = await asyncio.create_subprocess_exec(
        "xterm", "-display", target.display_name, "-geometry", "30x8+20+20", "-bg", "#0000ff",
        "-fg", "#ffff00", "-e", "sh", "-c", "ls -l /usr/bin | head -40; sleep 60",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.sleep(1.5)  # xterm maps its window and draws its text
        send(rfb.set_encodings([rfb.ENC_COPYRECT, rfb.ENC_HEXTILE, *PSEUDO]))
        await full_update(rfb.ENC_HEXTILE)
        await asyncio.to_thread(
            target.x11, "xdotool", "search", "--class", "xterm", "windowmove", "%@", "120", "90"
        )
        for _ in range(3):  # the move arrives as CopyRect plus what it uncovered
            send(rfb.framebuffer_update_request(0, 0, init.width, init.height, incremental=True))
            update = await next_update()
            if any(r.encoding == rfb.ENC_COPYRECT for r in update.rectangles):
                break
        for encodings in ROUNDS[1:]:
            send(rfb.set_encodings([*encodings, *PSEUDO]))
            await full_update(encodings[0])
    finally:
        if xterm.returncode is None:
            xterm.terminate()
            await xterm.wait()
    writer.close()
    return chunks


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = start_xvnc(Path(tmp), security="None", geometry="320x240")
        try:
            target.paint("#ff0000")
            save_transcript(out, asyncio.run(capture(target)))
        finally:
            target.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
