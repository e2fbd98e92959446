"""The sans-io RFB parsers: every message and encoding, the limits, the handshake in each
protocol version, a real Xvnc transcript, and Hypothesis fuzzing (random bytes and random
fragmentation raise nothing but ``RFBError`` and never change what is parsed)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.desktop import rfb
from gateway.desktop.rfb import ClientStreamParser, RFBError, ServerStreamParser
from tests.desktop_targets import load_transcript, replay

PF = rfb.PIXEL_FORMAT_BGRX
PF16 = rfb.PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
TRANSCRIPT = Path(__file__).parent / "desktop_data" / "xvnc-320x240.transcript.gz"


def parse_all(parser: ServerStreamParser | ClientStreamParser, data: bytes) -> list[object]:
    out: list[object] = list(parser.feed(data))
    out += parser.feed(b"")  # an error held back behind complete messages comes out here
    return out


def server(data: bytes, pf: rfb.PixelFormat = PF, **limits: int) -> list[object]:
    return parse_all(ServerStreamParser(pf, **limits), data)


def client(data: bytes) -> list[object]:
    return parse_all(ClientStreamParser(handshake=False), data)


def update(*rects: tuple[int, int, int, int, int, bytes]) -> bytes:
    return rfb.framebuffer_update(rects)


def compact(n: int) -> bytes:
    """Tight's compact length."""
    out = [n & 0x7F]
    if n > 0x7F:
        out[0] |= 0x80
        out.append((n >> 7) & 0x7F)
        if n > 0x3FFF:
            out[1] |= 0x80
            out.append(n >> 14)
    return bytes(out)


# -- one rectangle per encoding: (encoding, width, height, payload) -----------------------------
def hextile_payload(width: int, height: int, bpp: int) -> bytes:
    """Tiles using every subencoding combination in turn."""
    tiles = []
    flags_cycle = [1, 2, 2 | 4, 2 | 8, 2 | 4 | 8, 2 | 8 | 16, 0, 8 | 16]
    index = 0
    for ty in range(0, height, 16):
        for tx in range(0, width, 16):
            tw, th = min(16, width - tx), min(16, height - ty)
            flags = flags_cycle[index % len(flags_cycle)]
            index += 1
            tile = bytes([flags])
            if flags & 1:
                tiles.append(tile + b"\x11" * (tw * th * bpp))
                continue
            tile += b"\x22" * bpp * (bool(flags & 2) + bool(flags & 4))
            if flags & 8:
                n = 3
                tile += bytes([n]) + (b"\x33" * ((bpp if flags & 16 else 0) + 2)) * n
            tiles.append(tile)
    return b"".join(tiles)


def tight_cases(pf: rfb.PixelFormat) -> list[tuple[str, int, int, bytes]]:
    tp = pf.tight_pixel_bytes
    big = zlib.compress(b"\x01" * (40 * 10 * tp))
    return [
        ("fill", 50, 50, b"\x80" + b"\x10" * tp),
        ("jpeg", 30, 20, b"\x90" + compact(300) + b"\xff" * 300),
        ("copy short, uncompressed", 2, 1, b"\x00" + b"\x05" * (2 * tp)),
        ("copy compressed", 40, 10, b"\x00" + compact(len(big)) + big),
        ("copy, stream 2 reset", 40, 10, b"\x24" + compact(len(big)) + big),
        ("explicit copy filter", 40, 10, b"\x40\x00" + compact(len(big)) + big),
        ("palette of 2: 1 bit", 16, 4, b"\x40\x01\x01" + b"\x07" * (2 * tp) + b"\x00" * 8),
        ("palette of 5: 8 bits", 3, 3, b"\x40\x01\x04" + b"\x07" * (5 * tp) + b"\x00" * 9),
        (
            "palette, compressed",
            64,
            64,
            b"\x50\x01\x0f" + b"\x07" * (16 * tp) + compact(200) + b"\x00" * 200,
        ),  # fmt: skip
        ("gradient", 40, 10, b"\x40\x02" + compact(len(big)) + big),
        ("long compact length", 100, 100, b"\x00" + compact(20000) + b"\x00" * 20000),
    ]


def encoding_cases(pf: rfb.PixelFormat) -> list[tuple[str, int, int, int, bytes]]:
    bpp = pf.bytes_per_pixel
    zrle = zlib.compress(b"\x00" * 100)
    cases = [
        ("raw", rfb.ENC_RAW, 7, 3, b"\x42" * (7 * 3 * bpp)),
        ("copyrect", rfb.ENC_COPYRECT, 10, 10, struct.pack(">HH", 1, 2)),
        (
            "rre",
            rfb.ENC_RRE,
            40,
            40,
            struct.pack(">I", 2)
            + b"\x01" * bpp
            + (b"\x02" * bpp + struct.pack(">HHHH", 1, 1, 2, 2)) * 2,
        ),  # fmt: skip
        ("hextile", rfb.ENC_HEXTILE, 70, 40, hextile_payload(70, 40, bpp)),
        ("zrle", rfb.ENC_ZRLE, 64, 64, struct.pack(">I", len(zrle)) + zrle),
        ("cursor", rfb.ENC_CURSOR, 9, 5, b"\x01" * (9 * 5 * bpp) + b"\xff\x80" * 5),
        ("desktop size", rfb.ENC_DESKTOP_SIZE, 800, 600, b""),
        ("pointer position", rfb.ENC_POINTER_POS, 0, 0, b""),
        ("desktop name", rfb.ENC_DESKTOP_NAME, 0, 0, struct.pack(">I", 4) + b"plc1"),
        (
            "extended desktop size",
            rfb.ENC_EXTENDED_DESKTOP_SIZE,
            800,
            600,
            b"\x02\x00\x00\x00"
            + struct.pack(">IHHHHI", 1, 0, 0, 400, 600, 0)
            + struct.pack(">IHHHHI", 2, 400, 0, 400, 600, 0),
        ),  # fmt: skip
    ]
    cases += [(f"tight {name}", rfb.ENC_TIGHT, w, h, p) for name, w, h, p in tight_cases(pf)]
    return cases


@pytest.mark.parametrize("pf", [PF, PF16], ids=["32bpp", "16bpp"])
def test_each_encoding_is_framed_to_its_exact_length(pf: rfb.PixelFormat) -> None:
    for name, encoding, width, height, payload in encoding_cases(pf):
        data = update((3, 4, width, height, encoding, payload)) + rfb.bell()
        messages = server(data, pf)
        assert [type(m) for m in messages] == [rfb.FramebufferUpdate, rfb.Bell], name
        fbu = messages[0]
        assert isinstance(fbu, rfb.FramebufferUpdate)
        (rect,) = fbu.rectangles
        assert (rect.x, rect.y, rect.width, rect.height, rect.encoding) == (
            3, 4, width, height, encoding)  # fmt: skip
        assert bytes(fbu.payload(rect)) == payload, name
        assert fbu.raw + messages[1].raw == data  # type: ignore[attr-defined]


def test_tight_pixel_is_three_bytes_only_for_24_bit_true_colour_in_32() -> None:
    assert PF.tight_pixel_bytes == 3
    assert PF16.tight_pixel_bytes == 2
    assert rfb.PixelFormat(32, 32, False, True, 1023, 1023, 1023, 20, 10, 0).tight_pixel_bytes == 4


def test_update_with_many_rectangles_and_last_rect() -> None:
    rects = [(i, 0, 1, 1, rfb.ENC_RAW, b"\x00" * 4) for i in range(5)]
    data = rfb.framebuffer_update(rects)
    (fbu,) = server(data)
    assert isinstance(fbu, rfb.FramebufferUpdate) and len(fbu.rectangles) == 5
    # 0xFFFF rectangles: as many as come before LastRect.
    body = b"".join(struct.pack(">HHHHi", *r[:5]) + r[5] for r in rects)
    last = struct.pack(">HHHHi", 0, 0, 0, 0, rfb.ENC_LAST_RECT)
    data = b"\x00\x00\xff\xff" + body + last + rfb.bell()
    fbu, bell = server(data)
    assert isinstance(fbu, rfb.FramebufferUpdate) and isinstance(bell, rfb.Bell)
    assert [r.encoding for r in fbu.rectangles] == [0] * 5 + [rfb.ENC_LAST_RECT]


def test_other_server_messages() -> None:
    data = (
        b"\x01\x00\x00\x02\x00\x02" + struct.pack(">6H", 65535, 0, 0, 0, 65535, 0)
        + rfb.bell() + rfb.server_cut_text("caf\u00e9 ok")
    )  # fmt: skip
    colours, bell, cut = server(data, rfb.PixelFormat(8, 8, False, False, 0, 0, 0, 0, 0, 0))
    assert isinstance(colours, rfb.SetColourMapEntries)
    assert colours.first == 2 and colours.colours == ((65535, 0, 0), (0, 65535, 0))
    assert isinstance(bell, rfb.Bell)
    assert isinstance(cut, rfb.ServerCutText) and cut.text == "caf\u00e9 ok"


def test_client_messages_round_trip_through_their_serializers() -> None:
    data = [
        rfb.set_pixel_format(PF16),
        rfb.set_encodings([rfb.ENC_TIGHT, rfb.ENC_ZRLE, rfb.ENC_CURSOR]),
        rfb.framebuffer_update_request(0, 0, 1024, 768, incremental=False),
        rfb.framebuffer_update_request(10, 20, 30, 40, incremental=True),
        rfb.key_event(True, 0xFF0D),
        rfb.pointer_event(5, 100, 200),
        rfb.client_cut_text("ls -l"),
        b"\xfb\x00"
        + struct.pack(">HHBx", 1280, 720, 1)
        + struct.pack(">IHHHHI", 0, 0, 0, 1280, 720, 0),
    ]
    messages = client(b"".join(data))
    assert [m.raw for m in messages] == data  # type: ignore[attr-defined]
    spf, enc, full, inc, key, ptr, cut, size = messages
    assert isinstance(spf, rfb.SetPixelFormat) and spf.pixel_format == PF16
    assert isinstance(enc, rfb.SetEncodings) and enc.encodings == (7, 16, -239)
    assert isinstance(full, rfb.FramebufferUpdateRequest) and not full.incremental
    assert (full.width, full.height) == (1024, 768)
    assert isinstance(inc, rfb.FramebufferUpdateRequest) and inc.incremental and inc.y == 20
    assert isinstance(key, rfb.KeyEvent) and key.down and key.key == 0xFF0D
    assert isinstance(ptr, rfb.PointerEvent) and (ptr.buttons, ptr.x, ptr.y) == (5, 100, 200)
    assert isinstance(cut, rfb.ClientCutText) and cut.text == "ls -l"
    assert isinstance(size, rfb.SetDesktopSize) and size.screens[0].width == 1280


def test_filter_encodings_keeps_what_we_frame_in_order_once() -> None:
    fence, continuous, ext_clipboard, qemu_key, corre = -312, -313, -1063131698, -258, 4
    asked = [rfb.ENC_TIGHT, fence, rfb.ENC_ZRLE, continuous, rfb.ENC_TIGHT, ext_clipboard,
             qemu_key, corre, -32 + 6, -256 + 2, rfb.ENC_CURSOR, rfb.ENC_RAW]  # fmt: skip
    assert rfb.filter_encodings(asked) == (7, 16, -26, -254, -239, 0)


# -- refusals --------------------------------------------------------------------------------
REFUSED_SERVER = [
    ("unknown encoding (CoRRE)", update((0, 0, 1, 1, 4, b"\x00" * 8)), "encoding 4"),
    ("fence message", b"\xf8\x00\x00\x00\x00\x00\x00\x00\x00", "server message type 248"),
    ("continuous updates end", b"\x96", "server message type 150"),
    ("tight png", update((0, 0, 4, 4, rfb.ENC_TIGHT, b"\xa0\x00\x00")), "compression control"),
    ("tight unknown filter", update((0, 0, 4, 4, rfb.ENC_TIGHT, b"\x40\x03")), "filter 3"),
    ("rectangle too wide", update((0, 0, 20000, 1, rfb.ENC_DESKTOP_SIZE, b"")), "over the limit"),
    ("raw over the rect limit", update((0, 0, 2000, 2000, rfb.ENC_RAW, b"")), "over the limit"),
    (
        "rre subrects over the limit",
        update((0, 0, 4, 4, rfb.ENC_RRE, b"\xff\xff\xff\xff")),
        "over the limit",
    ),  # fmt: skip
    (
        "zrle length over the limit",
        update((0, 0, 4, 4, rfb.ENC_ZRLE, b"\x7f\xff\xff\xff")),
        "over the limit",
    ),  # fmt: skip
    (
        "cut text over the limit",
        b"\x03\x00\x00\x00" + struct.pack(">i", rfb.MAX_CUT_TEXT_BYTES + 1),
        "server cut text",
    ),  # fmt: skip
    ("extended clipboard (negative length)", b"\x03\x00\x00\x00\xff\xff\xff\xf0", "length -16"),
    (
        "desktop name too long",
        update((0, 0, 0, 0, rfb.ENC_DESKTOP_NAME, struct.pack(">I", 100000))),
        "desktop name",
    ),  # fmt: skip
    ("too many screens", update((0, 0, 8, 8, rfb.ENC_EXTENDED_DESKTOP_SIZE, b"\xff")), "screens"),
]


@pytest.mark.parametrize("name,data,reason", REFUSED_SERVER, ids=[c[0] for c in REFUSED_SERVER])
def test_server_stream_refusals(name: str, data: bytes, reason: str) -> None:
    parser = ServerStreamParser(PF, max_rect_bytes=1 << 20, max_update_bytes=2 << 20)
    with pytest.raises(RFBError, match=reason) as caught:
        parse_all(parser, data)
    assert caught.value.reason == caught.value.detail and len(caught.value.reason) < 100
    with pytest.raises(RFBError):  # a broken stream stays broken
        parser.feed(rfb.bell())


def test_update_total_is_bounded_across_rectangles() -> None:
    rects = [(0, 0, 100, 100, rfb.ENC_RAW, b"\x00" * 40000)] * 30
    with pytest.raises(RFBError, match="framebuffer update is over the limit"):
        server(rfb.framebuffer_update(rects), max_update_bytes=1 << 20)


def test_rectangle_count_is_bounded_with_last_rect() -> None:
    rect = struct.pack(">HHHHi", 0, 0, 1, 1, rfb.ENC_DESKTOP_SIZE)
    with pytest.raises(RFBError, match="too many rectangles"):
        server(b"\x00\x00\xff\xff" + rect * (rfb.MAX_RECTANGLES + 1))


REFUSED_CLIENT = [
    ("qemu message", b"\xff\x00\x00\x00", "client message type 255"),
    ("enable continuous updates", b"\x96\x01" + b"\x00" * 8, "client message type 150"),
    ("too many encodings", b"\x02\x00" + struct.pack(">H", rfb.MAX_ENCODINGS + 1), "encodings"),
    (
        "cut text too long",
        b"\x06\x00\x00\x00" + struct.pack(">i", rfb.MAX_CUT_TEXT_BYTES + 1),
        "client cut text",
    ),  # fmt: skip
    (
        "24 bits per pixel",
        rfb.set_pixel_format(rfb.PixelFormat(24, 24, False, True, 255, 255, 255, 16, 8, 0)),
        "24 bits",
    ),  # fmt: skip
    ("depth over bpp", b"\x00\x00\x00\x00" + bytes([8, 16]) + b"\x00" * 14, "depth 16"),
    ("desktop size too big", b"\xfb\x00" + struct.pack(">HHBx", 40000, 10, 0), "over the limit"),
]


@pytest.mark.parametrize("name,data,reason", REFUSED_CLIENT, ids=[c[0] for c in REFUSED_CLIENT])
def test_client_stream_refusals(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(RFBError, match=reason):
        client(data)


def test_messages_before_an_error_come_out_and_the_error_follows() -> None:
    parser = ServerStreamParser(PF)
    good = rfb.bell() + rfb.server_cut_text("x")
    assert [type(m) for m in parser.feed(good + b"\x96")] == [rfb.Bell, rfb.ServerCutText]
    with pytest.raises(RFBError, match="type 150"):
        parser.feed(b"")


def test_error_carries_no_stream_content() -> None:
    with pytest.raises(RFBError) as caught:
        parse_all(ClientStreamParser(), b"RFB 003.008\nsecretpw")
    assert "secret" not in str(caught.value) and "secret" not in caught.value.detail


# -- handshakes ---------------------------------------------------------------------------------
SERVER_INIT = rfb.server_init(1024, 768, PF, "plant-hmi")


def run_handshake(
    server_chunks: list[bytes], client_chunks: list[bytes]
) -> tuple[list[object], list[object]]:
    """Alternate: server chunk, client chunk, ...; each parser is told the other side."""
    sp, cp = ServerStreamParser(), ClientStreamParser()
    seen_s: list[object] = []
    seen_c: list[object] = []
    for i in range(max(len(server_chunks), len(client_chunks))):
        if i < len(server_chunks):
            for message in sp.feed(server_chunks[i]):
                seen_s.append(message)
                seen_c += cp.note_server(message)  # type: ignore[arg-type]
        if i < len(client_chunks):
            for message in cp.feed(client_chunks[i]):
                seen_c.append(message)
                seen_s += sp.note_client(message)  # type: ignore[arg-type]
    return seen_s, seen_c


def names(messages: list[object]) -> list[str]:
    return [type(m).__name__ for m in messages]


def test_handshake_38_security_none() -> None:
    s, c = run_handshake(
        [rfb.protocol_version(8), rfb.security_types([1]), rfb.security_result(True) + SERVER_INIT],
        [rfb.protocol_version(8), rfb.security_choice(1), rfb.client_init(True)],
    )
    assert names(s) == ["ProtocolVersion", "SecurityTypes", "SecurityResult", "ServerInit"]
    assert names(c) == ["ProtocolVersion", "SecurityChoice", "ClientInit"]
    init = s[-1]
    assert isinstance(init, rfb.ServerInit)
    assert (init.width, init.height, init.name, init.pixel_format) == (1024, 768, "plant-hmi", PF)


def test_handshake_38_vnc_auth_refused_with_reason_then_nothing_more() -> None:
    s, c = run_handshake(
        [rfb.protocol_version(8), rfb.security_types([2, 19]), b"C" * 16,
         rfb.security_result(False, "Authentication failure")],
        [rfb.protocol_version(8), rfb.security_choice(2), b"R" * 16],
    )  # fmt: skip
    assert names(s) == ["ProtocolVersion", "SecurityTypes", "VncAuthChallenge", "SecurityResult"]
    result = s[-1]
    assert isinstance(result, rfb.SecurityResult)
    assert not result.ok and result.reason == "Authentication failure"
    assert names(c) == ["ProtocolVersion", "SecurityChoice", "VncAuthResponse"]
    assert "CCCC" not in repr(s[2]) and "RRRR" not in repr(c[2])  # not in logs by accident


def test_handshake_37_failure_has_no_reason_and_33_server_chooses() -> None:
    s, _ = run_handshake(
        [rfb.protocol_version(7), rfb.security_types([2]), b"C" * 16, b"\x00\x00\x00\x01"],
        [rfb.protocol_version(7), rfb.security_choice(2), b"R" * 16],
    )
    result = s[-1]
    assert isinstance(result, rfb.SecurityResult) and not result.ok and result.reason == ""
    s, c = run_handshake(
        [
            rfb.protocol_version(3),
            b"\x00\x00\x00\x02" + b"C" * 16,
            b"\x00\x00\x00\x00" + SERVER_INIT,
        ],
        [rfb.protocol_version(3), b"R" * 16, rfb.client_init(False)],
    )
    assert names(s) == ["ProtocolVersion", "SecurityTypes", "VncAuthChallenge",
                        "SecurityResult", "ServerInit"]  # fmt: skip
    assert isinstance(s[1], rfb.SecurityTypes) and s[1].chosen_by_server
    assert names(c) == ["ProtocolVersion", "VncAuthResponse", "ClientInit"]


def test_handshake_connection_failed_in_33_and_38() -> None:
    s, _ = run_handshake([rfb.protocol_version(3), b"\x00\x00\x00\x00" + struct.pack(">I", 4)
                          + b"busy"], [rfb.protocol_version(3)])  # fmt: skip
    assert isinstance(s[-1], rfb.ConnectionFailed) and s[-1].reason == "busy"
    parser = ServerStreamParser()
    parser.feed(rfb.protocol_version(8))
    parser.note_client(rfb.ClientStreamParser().feed(rfb.protocol_version(8))[0])  # type: ignore[arg-type]
    (failed,) = parser.feed(rfb.connection_failed("too many connections"))
    assert isinstance(failed, rfb.ConnectionFailed) and failed.reason == "too many connections"
    with pytest.raises(RFBError, match="after the end"):
        parse_all(parser, b"x")


def test_handshake_vencrypt_x509_vnc() -> None:
    s, c = run_handshake(
        [rfb.protocol_version(8), rfb.security_types([19]), b"\x00\x02", b"\x00",
         b"\x02" + struct.pack(">II", 261, 260), b"\x01", b"C" * 16,
         rfb.security_result(True) + SERVER_INIT],
        [rfb.protocol_version(8), rfb.security_choice(19), rfb.vencrypt_version(),
         rfb.vencrypt_subtype(261), b"", b"", b"R" * 16, rfb.client_init(True)],
    )  # fmt: skip
    assert names(s) == ["ProtocolVersion", "SecurityTypes", "VeNCryptVersion",
                        "VeNCryptVersionAck", "VeNCryptSubtypes", "VeNCryptSubtypeAck",
                        "VncAuthChallenge", "SecurityResult", "ServerInit"]  # fmt: skip
    assert names(c) == ["ProtocolVersion", "SecurityChoice", "VeNCryptVersion",
                        "VeNCryptSubtypeChoice", "VncAuthResponse", "ClientInit"]  # fmt: skip


def test_handshake_refusals() -> None:
    with pytest.raises(RFBError, match="not an RFB version"):
        parse_all(ServerStreamParser(), b"HTTP/1.1 200")
    with pytest.raises(RFBError, match="4.0 is not supported"):
        parse_all(ServerStreamParser(), b"RFB 004.000\n")
    with pytest.raises(RFBError, match="not offered"):
        run_handshake([rfb.protocol_version(8), rfb.security_types([2])],
                      [rfb.protocol_version(8), rfb.security_choice(1)])  # fmt: skip
    with pytest.raises(RFBError, match="security type 30 is not supported"):
        parse_all(ClientStreamParser(), rfb.protocol_version(8) + b"\x1e")
    client_side = [rfb.protocol_version(8), rfb.security_choice(1), rfb.client_init(True)]
    too_big = struct.pack(">HH", 20000, 10) + PF.pack()
    with pytest.raises(RFBError, match="framebuffer 20000x10"):
        run_handshake([rfb.protocol_version(8), rfb.security_types([1]),
                       rfb.security_result(True) + too_big], client_side)  # fmt: skip
    long_name = struct.pack(">HH", 10, 10) + PF.pack() + struct.pack(">I", rfb.MAX_NAME_BYTES + 1)
    with pytest.raises(RFBError, match="desktop name"):
        run_handshake([rfb.protocol_version(8), rfb.security_types([1]),
                       rfb.security_result(True) + long_name], client_side)  # fmt: skip


def test_gateway_serializers_for_the_browser_side() -> None:
    """What the gateway says to the browser parses as the RFB 3.8 handshake it means."""
    s, _ = run_handshake(
        [rfb.protocol_version(), rfb.security_types([rfb.SEC_NONE]),
         rfb.security_result(False, "no desktop for you")],
        [rfb.protocol_version(), rfb.security_choice(rfb.SEC_NONE)],
    )  # fmt: skip
    result = s[-1]
    assert isinstance(result, rfb.SecurityResult) and result.reason == "no desktop for you"
    with pytest.raises(RFBError, match="over the limit"):
        rfb.security_result(False, "x" * (rfb.MAX_REASON_BYTES + 1))


# -- a real Xvnc session ------------------------------------------------------------------------
def test_real_xvnc_transcript_parses_byte_exact_in_every_encoding() -> None:
    chunks = load_transcript(TRANSCRIPT)
    s, c = replay(chunks)
    assert b"".join(m.raw for m in s) == b"".join(d for k, d in chunks if k == "S")
    assert b"".join(m.raw for m in c) == b"".join(d for k, d in chunks if k == "C")  # type: ignore[attr-defined]
    init = next(m for m in s if isinstance(m, rfb.ServerInit))
    assert (init.width, init.height) == (320, 240)
    seen = {r.encoding for m in s if isinstance(m, rfb.FramebufferUpdate) for r in m.rectangles}
    assert {rfb.ENC_RAW, rfb.ENC_RRE, rfb.ENC_HEXTILE, rfb.ENC_ZRLE, rfb.ENC_TIGHT,
            rfb.ENC_COPYRECT, rfb.ENC_CURSOR, rfb.ENC_EXTENDED_DESKTOP_SIZE,
            rfb.ENC_LAST_RECT} <= seen  # fmt: skip
    # The Raw frame shows the red the capture painted on the root window.
    raw_update = next(m for m in s if isinstance(m, rfb.FramebufferUpdate)
                      and any(r.encoding == rfb.ENC_RAW for r in m.rectangles))  # fmt: skip
    rect = next(r for r in raw_update.rectangles if r.encoding == rfb.ENC_RAW)
    pixels = raw_update.payload(rect)
    assert init.pixel_format.rgb(bytes(pixels[:4])) == (255, 0, 0)
    assert len(pixels) == 320 * 240 * 4


def after_init(chunks: list[tuple[str, bytes]]) -> tuple[rfb.PixelFormat, bytes]:
    """The server's bytes after ServerInit, and its pixel format."""
    s, _ = replay(chunks)
    index = next(i for i, m in enumerate(s) if isinstance(m, rfb.ServerInit))
    init = s[index]
    assert isinstance(init, rfb.ServerInit)
    return init.pixel_format, b"".join(m.raw for m in s[index + 1 :])


REAL_PF, REAL_STREAM = after_init(load_transcript(TRANSCRIPT))
REAL_MESSAGES = ServerStreamParser(REAL_PF).feed(REAL_STREAM)


def fragments(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=40))
def test_real_stream_parses_the_same_in_any_fragmentation(cuts: list[int]) -> None:
    parser = ServerStreamParser(REAL_PF)
    out: list[object] = []
    for piece in fragments(REAL_STREAM, cuts):
        out += parser.feed(piece)
    assert out == REAL_MESSAGES and parser.buffered == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=len(REAL_STREAM) - 1), st.binary(min_size=1, max_size=8))
def test_real_stream_with_bytes_damaged_raises_only_the_protocol_error(
    at: int, junk: bytes
) -> None:
    damaged = REAL_STREAM[:at] + junk + REAL_STREAM[at + len(junk) :]
    try:
        server(damaged, REAL_PF)
    except RFBError:
        pass


# -- fuzzing -------------------------------------------------------------------------------------
def outcome(
    parser: ServerStreamParser | ClientStreamParser, pieces: list[bytes]
) -> tuple[list[object], str]:
    out: list[object] = []
    try:
        for piece in [*pieces, b""]:
            out += parser.feed(piece)
    except RFBError as exc:
        return out, exc.reason
    return out, ""


PARSERS = {
    "server after init": lambda: ServerStreamParser(PF),
    "server after init 16bpp": lambda: ServerStreamParser(PF16),
    "server handshake": ServerStreamParser,
    "client after init": lambda: ClientStreamParser(handshake=False),
    "client handshake": ClientStreamParser,
}


@pytest.mark.parametrize("kind", list(PARSERS))
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_random_bytes_raise_only_rfberror_and_fragmentation_changes_nothing(
    kind: str, data: bytes, cuts: list[int]
) -> None:
    whole = outcome(PARSERS[kind](), [data])
    pieces = outcome(PARSERS[kind](), fragments(data, cuts))
    assert whole == pieces


def _rect_strategy() -> st.SearchStrategy[tuple[int, int, int, int, int, bytes]]:
    cases = encoding_cases(PF)
    return st.builds(
        lambda i, x, y: (x, y, cases[i][2], cases[i][3], cases[i][1], cases[i][4]),
        st.integers(min_value=0, max_value=len(cases) - 1),
        st.integers(min_value=0, max_value=2000),
        st.integers(min_value=0, max_value=2000),
    )


SERVER_MESSAGE = st.one_of(
    st.just(rfb.bell()),
    st.text(alphabet=st.characters(max_codepoint=255), max_size=40).map(rfb.server_cut_text),
    st.lists(_rect_strategy(), max_size=4).map(rfb.framebuffer_update),
)


@settings(max_examples=80, deadline=None)
@given(
    messages=st.lists(SERVER_MESSAGE, min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_valid_server_streams_parse_to_their_messages_in_any_fragmentation(
    messages: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(messages)
    out, error = outcome(ServerStreamParser(PF), fragments(data, cuts))
    assert error == ""
    assert [m.raw for m in out] == messages  # type: ignore[attr-defined]


FRAMED = sorted(e for e in rfb.SUPPORTED_ENCODINGS if e not in rfb.ENC_JPEG_QUALITY
                and e not in rfb.ENC_COMPRESS_LEVEL)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    rects=st.lists(
        st.tuples(st.sampled_from(FRAMED), st.integers(0, 40), st.integers(0, 40),
                  st.binary(max_size=300)),
        min_size=1, max_size=4,
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)  # fmt: skip
def test_supported_encodings_with_random_payloads(
    rects: list[tuple[int, int, int, bytes]], cuts: list[int]
) -> None:
    """Rectangle headers that name encodings we frame, with random payloads: framed or
    refused with RFBError, the same whatever the fragmentation."""
    data = update(*[(0, 0, w, h, e, p) for e, w, h, p in rects]) + rfb.bell()
    assert outcome(ServerStreamParser(PF), [data]) == outcome(
        ServerStreamParser(PF), fragments(data, cuts)
    )


# Valid starts of each handshake path: (server chunks, client chunks), alternated by
# run_handshake; the fuzz below appends random bytes to one side.
HANDSHAKE_STARTS = {
    "3.8 none": ([rfb.protocol_version(8), rfb.security_types([1])],
                 [rfb.protocol_version(8), rfb.security_choice(1), rfb.client_init(True)]),
    "3.8 vnc auth": ([rfb.protocol_version(8), rfb.security_types([2, 19])],
                     [rfb.protocol_version(8), rfb.security_choice(2), b"R" * 16]),
    "3.3": ([rfb.protocol_version(3)], [rfb.protocol_version(3), b"R" * 16]),
    "vencrypt": ([rfb.protocol_version(8), rfb.security_types([19]), b"\x00\x02", b"\x00"],
                 [rfb.protocol_version(8), rfb.security_choice(19), rfb.vencrypt_version(),
                  rfb.vencrypt_subtype(261), b"R" * 16]),
}  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    start=st.sampled_from(sorted(HANDSHAKE_STARTS)),
    junk=st.binary(max_size=200),
    server_side=st.booleans(),
)
def test_random_bytes_inside_a_handshake_raise_only_rfberror(
    start: str, junk: bytes, server_side: bool
) -> None:
    server_chunks, client_chunks = HANDSHAKE_STARTS[start]
    if server_side:
        server_chunks = [*server_chunks, junk]
    else:
        client_chunks = [*client_chunks, junk]
    try:
        run_handshake(list(server_chunks), list(client_chunks))
    except RFBError:
        pass
