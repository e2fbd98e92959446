"""What the desktop player reads from a recording: the index and its key track, the RFB in
parts, a frame at an offset (and the pixel format it is decoded in), the thumbnail, and the
keysym names. The events are built with the RFB serializers the relay uses; the real
recording of a real Xvnc session is replayed in ``test_portal_desktop_replay``."""

from __future__ import annotations

import struct
import zlib

import pytest

from gateway.desktop import rfb
from gateway.desktop.keys import keysym_text
from gateway.web.desktop_replay import (
    PART_MAGIC,
    desktop_index,
    frame_at,
    read_part,
    rfb_part,
    thumbnail_png,
)
from recordings.desktop import DesktopEvent, StartPoint
from recordings.events import Event

RGBX = rfb.PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)  # what noVNC asks for
BGRX = rfb.PIXEL_FORMAT_BGRX  # the target's own, in the first start point
W, H = 64, 48


def pixel(r: int, g: int, b: int) -> bytes:
    return (r | g << 8 | b << 16).to_bytes(4, "little")  # RGBX


def full(colour: tuple[int, int, int]) -> bytes:
    return rfb.framebuffer_update([(0, 0, W, H, rfb.ENC_RAW, pixel(*colour) * (W * H))])


def start(pf: rfb.PixelFormat) -> bytes:
    return StartPoint(W, H, pf.pack(), "hmi").payload()


def at(seconds: float, kind: DesktopEvent, payload: bytes) -> Event:
    return Event(round(seconds * 1e6), kind, payload)


RED, GREEN, BLUE = (200, 30, 20), (20, 160, 60), (10, 20, 220)
# The first start point carries the target's BGRX; the viewer's RGBX is in the later ones.
RECORDING = [
    at(0.0, DesktopEvent.START, start(BGRX)),
    at(0.1, DesktopEvent.FROM_SERVER, full(RED)),
    at(0.5, DesktopEvent.TO_SERVER, rfb.key_event(True, ord("l")) + rfb.key_event(False, ord("l"))),
    at(0.6, DesktopEvent.TO_SERVER, rfb.key_event(True, 0xFFE1) + rfb.key_event(True, ord("S"))),
    at(0.7, DesktopEvent.TO_SERVER, rfb.pointer_event(1, 3, 4) + rfb.key_event(True, 0xFF0D)),
    at(0.8, DesktopEvent.MARKER, b"watched by bob"),
    at(1.0, DesktopEvent.START, start(RGBX)),
    at(1.1, DesktopEvent.FROM_SERVER, full(GREEN)),
    at(
        1.5,
        DesktopEvent.FROM_SERVER,
        rfb.framebuffer_update([(8, 8, 4, 4, rfb.ENC_RAW, pixel(*BLUE) * 16)]),
    ),  # fmt: skip
    at(2.0, DesktopEvent.START, start(RGBX)),
    at(2.1, DesktopEvent.FROM_SERVER, full(BLUE)),
]


def test_the_index_lists_start_points_markers_and_pressed_keys() -> None:
    index = desktop_index(RECORDING)
    assert index.duration == pytest.approx(2.1)
    assert index.starts == [(0.0, 0), (1.0, 6), (2.0, 9)]
    assert index.markers == [(0.8, "watched by bob")]
    assert [k for _, k in index.keys] == ["l", "Shift", "S", "Return"]  # presses only
    assert index.has_input and not index.cut
    without_input = [e for e in RECORDING if e.type != DesktopEvent.TO_SERVER]
    assert not desktop_index(without_input).has_input


@pytest.mark.parametrize(
    ("seconds", "where", "colour"),
    [
        (0.05, (0, 0), None),  # nothing drawn yet: the start point's black
        (0.5, (0, 0), RED),  # decoded in the viewer's RGBX (the next start point's format)
        (1.2, (8, 8), GREEN),
        (1.6, (8, 8), BLUE),
        (1.6, (0, 0), GREEN),
        (None, (0, 0), BLUE),
    ],
)
def test_a_frame_at_an_offset(
    seconds: float | None, where: tuple[int, int], colour: tuple[int, int, int] | None
) -> None:
    frame = frame_at(RECORDING, seconds)
    assert frame is not None
    assert frame.pixel(*where) == (colour or (0, 0, 0))


def test_a_recorded_set_pixel_format_wins() -> None:
    bgrx_red = (20 | 30 << 8 | 200 << 16).to_bytes(4, "little")
    events = [
        at(0.0, DesktopEvent.START, start(RGBX)),
        at(0.0, DesktopEvent.TO_SERVER, rfb.set_pixel_format(BGRX)),
        at(
            0.1,
            DesktopEvent.FROM_SERVER,
            rfb.framebuffer_update([(0, 0, 1, 1, rfb.ENC_RAW, bgrx_red)]),
        ),  # fmt: skip
    ]
    frame = frame_at(events, None)
    assert frame is not None and frame.pixel(0, 0) == RED


def test_one_start_point_and_no_input_decodes_in_the_viewers_format() -> None:
    events = [e for e in RECORDING[:6] if e.type != DesktopEvent.TO_SERVER]
    frame = frame_at(events, None)
    assert frame is not None and frame.pixel(0, 0) == RED


def test_nothing_recorded_has_no_frame() -> None:
    assert frame_at([], None) is None
    assert thumbnail_png([at(0, DesktopEvent.MARKER, b"x")]) is None


def test_parts_are_cut_at_event_boundaries_and_continue() -> None:
    whole, following = rfb_part(RECORDING, 0)
    assert following is None and whole.startswith(PART_MAGIC)
    played = [e for e in RECORDING if e.type in (DesktopEvent.START, DesktopEvent.FROM_SERVER)]
    assert list(read_part(whole)) == played
    got: list[Event] = []
    first: int | None = 0
    parts = 0
    while first is not None:
        data, first = rfb_part(RECORDING, first, budget=len(full(RED)) + 100)
        got += read_part(data)
        parts += 1
    assert got == played and parts > 2
    later, _ = rfb_part(RECORDING, 6)
    assert [e.offset_us for e in read_part(later)][0] == 1_000_000
    with pytest.raises(ValueError, match="not a desktop replay part"):
        list(read_part(b"junk"))


def test_the_thumbnail_is_a_png_of_the_last_frame_about_320_wide() -> None:
    wide = StartPoint(1280, 720, RGBX.pack(), "big").payload()
    update = rfb.framebuffer_update([(0, 0, 1280, 720, rfb.ENC_RRE,
                                      struct.pack(">I", 0) + pixel(*GREEN))])  # fmt: skip
    png = thumbnail_png(
        [at(0, DesktopEvent.START, wide), at(0.1, DesktopEvent.FROM_SERVER, update)]
    )
    assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (320, 180)
    idat = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[idat - 4 : idat])
    rows = zlib.decompress(png[idat + 4 : idat + 4 + length])
    assert rows[1:4] == bytes(GREEN)


def test_an_update_that_does_not_decode_is_an_rfb_error() -> None:
    outside = rfb.framebuffer_update([(60, 40, 8, 8, rfb.ENC_RAW, pixel(*RED) * 64)])
    events = [at(0, DesktopEvent.START, start(RGBX)), at(0.1, DesktopEvent.FROM_SERVER, outside)]
    with pytest.raises(rfb.RFBError):
        frame_at(events, None)


@pytest.mark.parametrize(
    ("keysym", "text"),
    [
        (ord("a"), "a"), (ord("Z"), "Z"), (ord(" "), " "), (0xE9, "é"), (0x010020AC, "€"),
        (0xFF0D, "Return"), (0xFF08, "BackSpace"), (0xFFE3, "Ctrl"), (0xFFE9, "Alt"),
        (0xFFBE, "F1"), (0xFFC9, "F12"), (0xFF09, "Tab"), (0xFF1B, "Escape"), (0xFFB5, "KP_5"),
        (0x7F, "0x007f"), (0x01000007, "0x1000007"), (0x1234, "0x1234"),
    ],
)  # fmt: skip
def test_keysyms_read_as_characters_or_names(keysym: int, text: str) -> None:
    assert keysym_text(keysym) == text
