"""A desktop's pixels rebuilt from framed RFB updates, and a PNG of them.

The gateway relays and records RFB without decoding it; this module decodes the stateless
encodings the gateway offers (Raw, CopyRect, RRE, Hextile, and the size pseudo-encodings)
when pixels are wanted: a recording's thumbnail, the replay check of a known region, the
desktop benchmark's "key to screen" latency. Pixels are kept as RGB (3 bytes each) whatever
the true-colour pixel format. Does no I/O; a rectangle outside the framebuffer or an
encoding it does not decode raises ``RFBError`` (the caller's stream is then unusable).
"""

from __future__ import annotations

import struct
import zlib

from gateway.desktop.rfb import (
    ENC_COPYRECT,
    ENC_CURSOR,
    ENC_DESKTOP_NAME,
    ENC_DESKTOP_SIZE,
    ENC_EXTENDED_DESKTOP_SIZE,
    ENC_HEXTILE,
    ENC_LAST_RECT,
    ENC_POINTER_POS,
    ENC_RAW,
    ENC_RRE,
    MAX_FRAMEBUFFER_DIMENSION,
    FramebufferUpdate,
    PixelFormat,
    RFBError,
)

# Pseudo-encodings that carry no pixels of the framebuffer (the cursor's shape, its position,
# the desktop's name, the end of an update).
_NO_PIXELS = frozenset({ENC_CURSOR, ENC_LAST_RECT, ENC_POINTER_POS, ENC_DESKTOP_NAME})
_HEXTILE_RAW, _HEXTILE_BG, _HEXTILE_FG, _HEXTILE_ANY, _HEXTILE_COLOURED = 1, 2, 4, 8, 16


class Framebuffer:
    """RGB pixels of a ``width`` x ``height`` desktop in true-colour ``pixel_format``."""

    def __init__(self, width: int, height: int, pixel_format: PixelFormat) -> None:
        if not pixel_format.true_colour:
            raise RFBError("framebuffer: colour-mapped pixel formats are not decoded")
        self.pixel_format = pixel_format
        self.width, self.height = 0, 0
        self.rgb = bytearray()
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        if not (0 < width <= MAX_FRAMEBUFFER_DIMENSION and 0 < height <= MAX_FRAMEBUFFER_DIMENSION):
            raise RFBError(f"framebuffer: size {width}x{height} out of range")
        self.width, self.height = width, height
        self.rgb = bytearray(3 * width * height)

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        at = 3 * (y * self.width + x)
        return self.rgb[at], self.rgb[at + 1], self.rgb[at + 2]

    # -- decoding ------------------------------------------------------------------------------
    def _colours(self, data: bytes | memoryview) -> bytes:
        """Packed pixels to RGB bytes (a fast path for the 32-bit formats viewers use)."""
        pf = self.pixel_format
        bpp = pf.bytes_per_pixel
        raw = bytes(data)
        if (
            bpp == 4
            and not pf.big_endian
            and (pf.red_max, pf.green_max, pf.blue_max)
            == (
                255,
                255,
                255,
            )
        ):
            out = bytearray(3 * (len(raw) // 4))
            out[0::3] = raw[pf.red_shift // 8 :: 4]
            out[1::3] = raw[pf.green_shift // 8 :: 4]
            out[2::3] = raw[pf.blue_shift // 8 :: 4]
            return bytes(out)
        out = bytearray()
        for at in range(0, len(raw) - bpp + 1, bpp):
            out.extend(pf.rgb(raw[at : at + bpp]))
        return bytes(out)

    def _inside(self, x: int, y: int, w: int, h: int) -> None:
        if x + w > self.width or y + h > self.height:
            raise RFBError(
                f"framebuffer: rectangle {w}x{h}+{x}+{y} outside {self.width}x{self.height}"
            )

    def _put(self, x: int, y: int, w: int, rows: int, rgb: bytes) -> None:
        line = 3 * w
        for row in range(rows):
            at = 3 * ((y + row) * self.width + x)
            self.rgb[at : at + line] = rgb[row * line : (row + 1) * line]

    def _fill(self, x: int, y: int, w: int, h: int, colour: bytes) -> None:
        line = colour * w
        for row in range(h):
            at = 3 * ((y + row) * self.width + x)
            self.rgb[at : at + 3 * w] = line

    def apply(self, update: FramebufferUpdate) -> None:
        for rect in update.rectangles:
            payload = update.payload(rect)
            x, y, w, h = rect.x, rect.y, rect.width, rect.height
            if rect.encoding in _NO_PIXELS:
                continue
            if rect.encoding in (ENC_DESKTOP_SIZE, ENC_EXTENDED_DESKTOP_SIZE):
                self.resize(w, h)
                continue
            self._inside(x, y, w, h)
            if rect.encoding == ENC_RAW:
                self._put(x, y, w, h, self._colours(payload))
            elif rect.encoding == ENC_COPYRECT:
                sx, sy = struct.unpack(">HH", payload)
                self._inside(sx, sy, w, h)
                rows = [self._row(sx, sy + r, w) for r in range(h)]
                for r, row in enumerate(rows):
                    at = 3 * ((y + r) * self.width + x)
                    self.rgb[at : at + 3 * w] = row
            elif rect.encoding == ENC_RRE:
                self._rre(x, y, w, h, bytes(payload))
            elif rect.encoding == ENC_HEXTILE:
                self._hextile(x, y, w, h, bytes(payload))
            else:
                raise RFBError(f"framebuffer: encoding {rect.encoding} is not decoded")

    def _row(self, x: int, y: int, w: int) -> bytes:
        at = 3 * (y * self.width + x)
        return bytes(self.rgb[at : at + 3 * w])

    def _rre(self, x: int, y: int, w: int, h: int, data: bytes) -> None:
        bpp = self.pixel_format.bytes_per_pixel
        (count,) = struct.unpack_from(">I", data)
        self._fill(x, y, w, h, self._colours(data[4 : 4 + bpp]))
        at = 4 + bpp
        for _ in range(count):
            colour = self._colours(data[at : at + bpp])
            sx, sy, sw, sh = struct.unpack_from(">HHHH", data, at + bpp)
            at += bpp + 8
            if sx + sw > w or sy + sh > h:
                raise RFBError("framebuffer: RRE subrectangle outside its rectangle")
            self._fill(x + sx, y + sy, sw, sh, colour)

    def _hextile(self, x: int, y: int, w: int, h: int, data: bytes) -> None:
        bpp = self.pixel_format.bytes_per_pixel
        at = 0
        background = foreground = bytes(3)
        for ty in range(y, y + h, 16):
            th = min(16, y + h - ty)
            for tx in range(x, x + w, 16):
                tw = min(16, x + w - tx)
                flags = data[at]
                at += 1
                if flags & _HEXTILE_RAW:
                    size = tw * th * bpp
                    self._put(tx, ty, tw, th, self._colours(data[at : at + size]))
                    at += size
                    continue
                if flags & _HEXTILE_BG:
                    background = self._colours(data[at : at + bpp])
                    at += bpp
                if flags & _HEXTILE_FG:
                    foreground = self._colours(data[at : at + bpp])
                    at += bpp
                self._fill(tx, ty, tw, th, background)
                if not flags & _HEXTILE_ANY:
                    continue
                count = data[at]
                at += 1
                for _ in range(count):
                    colour = foreground
                    if flags & _HEXTILE_COLOURED:
                        colour = self._colours(data[at : at + bpp])
                        at += bpp
                    xy, wh = data[at], data[at + 1]
                    at += 2
                    sx, sy, sw, sh = xy >> 4, xy & 15, (wh >> 4) + 1, (wh & 15) + 1
                    if sx + sw > tw or sy + sh > th:
                        raise RFBError("framebuffer: Hextile subrectangle outside its tile")
                    self._fill(tx + sx, ty + sy, sw, sh, colour)

    # -- pictures ------------------------------------------------------------------------------
    def region_colour(self, x: int, y: int, w: int, h: int) -> tuple[int, int, int] | None:
        """The one colour of a region, or None when it holds more than one."""
        self._inside(x, y, w, h)
        first = self.pixel(x, y)
        colour = bytes(first)
        for row in range(h):
            if self._row(x, y + row, w) != colour * w:
                return None
        return first

    def png(self, max_width: int = 0) -> bytes:
        """The framebuffer as a PNG, scaled down (nearest pixel) to ``max_width`` if wider."""
        step = max(1, -(-self.width // max_width)) if max_width else 1
        out_w, out_h = -(-self.width // step), -(-self.height // step)
        lines = bytearray()
        for row in range(0, self.height, step):
            line = self._row(0, row, self.width)
            if step > 1:
                picked = bytearray(3 * out_w)
                picked[0::3] = line[0 :: 3 * step]
                picked[1::3] = line[1 :: 3 * step]
                picked[2::3] = line[2 :: 3 * step]
                line = bytes(picked)
            lines += b"\x00" + line

        def chunk(kind: bytes, body: bytes) -> bytes:
            crc = zlib.crc32(kind + body) & 0xFFFFFFFF
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

        header = struct.pack(">IIBBBBB", out_w, out_h, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(lines), 6))
            + chunk(b"IEND", b"")
        )
