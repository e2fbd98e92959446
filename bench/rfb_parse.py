"""RFB framing cost: ServerStreamParser over a real Xvnc stream, per encoding, against copying
the same bytes (what a relay does without a parser), in the same process.

The stream is the stored transcript of a real Xvnc session (tests/desktop_data), cut into
its updates per encoding and fed in 64 KiB chunks, as a socket read would deliver them.
Figures: MB/s and updates/s per encoding, and the parser's time as a multiple of the copy's.
The last line printed is one JSON object with the figures and ratios.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import gateway  # noqa: F401
from gateway.desktop import rfb

TRANSCRIPT = Path(__file__).resolve().parents[1] / "tests" / "desktop_data"
CHUNK = 1 << 16
ROUNDS = 30


def server_stream() -> tuple[rfb.PixelFormat, list[rfb.FramebufferUpdate]]:
    blob = gzip.decompress((TRANSCRIPT / "xvnc-320x240.transcript.gz").read_bytes())
    pos = blob.index(b"\n") + 1
    sp, cp = rfb.ServerStreamParser(), rfb.ClientStreamParser()
    messages: list[rfb.ServerMessage] = []
    while pos < len(blob):
        direction, length = chr(blob[pos]), int.from_bytes(blob[pos + 1 : pos + 5], "big")
        data = blob[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if direction == "S":
            for message in sp.feed(data):
                messages.append(message)
                cp.note_server(message)
        else:
            for cmessage in cp.feed(data):
                messages += sp.note_client(cmessage)
    init = next(m for m in messages if isinstance(m, rfb.ServerInit))
    return init.pixel_format, [m for m in messages if isinstance(m, rfb.FramebufferUpdate)]


def timed(work: list[bytes], fn: object) -> float:
    assert callable(fn)
    start = time.perf_counter()
    for _ in range(ROUNDS):
        fn(work)
    return time.perf_counter() - start


def main() -> None:
    pf, updates = server_stream()
    results: dict[str, object] = {}
    for name, encoding in (("raw", rfb.ENC_RAW), ("hextile", rfb.ENC_HEXTILE),
                           ("zrle", rfb.ENC_ZRLE), ("tight", rfb.ENC_TIGHT),
                           ("rre", rfb.ENC_RRE)):  # fmt: skip
        chosen = [u for u in updates if any(r.encoding == encoding for r in u.rectangles)]
        stream = b"".join(u.raw for u in chosen)
        chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]

        def parse(work: list[bytes]) -> None:
            parser = rfb.ServerStreamParser(pf)
            count = 0
            for piece in work:
                count += len(parser.feed(piece))
            assert count == len(chosen)  # noqa: B023

        def copy(work: list[bytes]) -> None:
            buf = bytearray()
            for piece in work:
                buf += piece
                bytes(buf)
                buf.clear()

        copy_s, parse_s = timed(chunks, copy), timed(chunks, parse)
        mb = len(stream) * ROUNDS / 1e6
        results[name] = {
            "bytes": len(stream),
            "updates": len(chosen),
            "parse_mb_s": round(mb / parse_s, 1),
            "parse_updates_s": round(len(chosen) * ROUNDS / parse_s),
            "copy_mb_s": round(mb / copy_s, 1),
            "parse_over_copy": round(parse_s / copy_s, 2),
        }
        print(f"{name:8} {results[name]}")
    print(json.dumps({"bench": "rfb_parse", "rounds": ROUNDS, "chunk": CHUNK, **results}))


if __name__ == "__main__":
    main()
