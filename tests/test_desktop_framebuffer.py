"""The framebuffer decoder: each stateless encoding paints what it says, and its PNG."""

from __future__ import annotations

import struct
import zlib

import pytest

from gateway.desktop import rfb
from gateway.desktop.framebuffer import Framebuffer

# noVNC's own pixel format (RGBX), and the server's usual one (BGRX).
RGBX = rfb.PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)
BGRX = rfb.PIXEL_FORMAT_BGRX


def pixel(pf: rfb.PixelFormat, r: int, g: int, b: int) -> bytes:
    value = (r << pf.red_shift) | (g << pf.green_shift) | (b << pf.blue_shift)
    return value.to_bytes(4, "little")


def update(pf: rfb.PixelFormat, rects: list[tuple[int, int, int, int, int, bytes]]):
    parser = rfb.ServerStreamParser(pf)
    (message,) = parser.feed(rfb.framebuffer_update(rects))
    assert isinstance(message, rfb.FramebufferUpdate)
    return message


@pytest.mark.parametrize("pf", [RGBX, BGRX], ids=["rgbx", "bgrx"])
def test_raw_copyrect_rre_and_hextile_paint_their_pixels(pf: rfb.PixelFormat) -> None:
    fb = Framebuffer(64, 48, pf)
    red, green, blue = pixel(pf, 255, 0, 0), pixel(pf, 0, 255, 0), pixel(pf, 0, 0, 255)
    white = pixel(pf, 255, 255, 255)
    fb.apply(update(pf, [(0, 0, 4, 2, rfb.ENC_RAW, red * 8)]))
    assert fb.region_colour(0, 0, 4, 2) == (255, 0, 0)
    assert fb.pixel(4, 0) == (0, 0, 0)
    fb.apply(update(pf, [(10, 10, 4, 2, rfb.ENC_COPYRECT, struct.pack(">HH", 0, 0))]))
    assert fb.region_colour(10, 10, 4, 2) == (255, 0, 0)
    rre = struct.pack(">I", 1) + green + blue + struct.pack(">HHHH", 2, 2, 3, 3)
    fb.apply(update(pf, [(20, 0, 10, 10, rfb.ENC_RRE, rre)]))
    assert fb.region_colour(20, 0, 10, 2) == (0, 255, 0)
    assert fb.region_colour(22, 2, 3, 3) == (0, 0, 255)
    # Hextile, two tiles: one background + one foreground subrectangle, one raw tile.
    tile1 = bytes([2 | 4 | 8]) + white + red + bytes([1, (1 << 4) | 2, (3 << 4) | 1])
    tile2 = bytes([1]) + blue * (16 * 16)
    fb.apply(update(pf, [(32, 16, 32, 16, rfb.ENC_HEXTILE, tile1 + tile2)]))
    assert fb.pixel(32, 16) == (255, 255, 255)
    assert fb.region_colour(33, 18, 4, 2) == (255, 0, 0)
    assert fb.region_colour(48, 16, 16, 16) == (0, 0, 255)


def test_desktop_size_resizes_and_outside_rectangles_are_refused() -> None:
    fb = Framebuffer(32, 32, RGBX)
    fb.apply(update(RGBX, [(0, 0, 100, 50, rfb.ENC_DESKTOP_SIZE, b"")]))
    assert (fb.width, fb.height) == (100, 50)
    with pytest.raises(rfb.RFBError):
        fb.apply(update(RGBX, [(90, 0, 20, 2, rfb.ENC_RAW, pixel(RGBX, 1, 2, 3) * 40)]))
    with pytest.raises(rfb.RFBError):
        fb.apply(update(RGBX, [(0, 0, 2, 2, rfb.ENC_COPYRECT, struct.pack(">HH", 99, 49))]))


def test_png_is_a_valid_scaled_picture() -> None:
    fb = Framebuffer(100, 40, RGBX)
    fb.apply(update(RGBX, [(0, 0, 50, 40, rfb.ENC_RAW, pixel(RGBX, 0, 0, 255) * 2000)]))
    png = fb.png(max_width=25)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (25, 10)
    idat = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[idat - 4 : idat])
    rows = zlib.decompress(png[idat + 4 : idat + 4 + length])
    assert len(rows) == height * (1 + 3 * width)
    assert rows[1:4] == bytes([0, 0, 255]) and rows[-3:] == bytes([0, 0, 0])
