"""Modbus/TCP, sans-io: MBAP framing, request and response PDUs, exceptions, with limits.

``FrameReader.feed(data) -> list[Frame]`` cuts a TCP byte stream (fragmented or coalesced
any way) into MBAP frames; ``decode_request`` and ``decode_response`` turn a frame's PDU into
what it asks or answers, for the public function codes (1-6, 15, 16, 22, 23 and 43/14 device
identification); ``exception_frame`` builds the answer a gateway gives in a server's place.

Two kinds of bad input, per the Modbus Messaging on TCP/IP Implementation Guide:
- ``FramingError``: the MBAP header itself is wrong (protocol id not 0, length outside
  2..254). The stream cannot be re-synchronised after it, so the connection must end.
- ``PduError``: a well-framed PDU whose body does not fit its function code (a quantity out
  of range, a byte count that disagrees, a body too short or too long). The frame boundary
  is intact, so a server answers with exception ``code`` (03 Illegal Data Value or 02
  Illegal Data Address) and the connection goes on.

Imports nothing but the standard library: does no I/O, knows no policy, keeps no clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

MBAP_BYTES = 7  # transaction id, protocol id, length (2 bytes each), unit id
# The MBAP length counts the unit id and the PDU; a PDU is 1..253 bytes (the serial line's
# 256-byte ADU less address and CRC), so the length is 2..254.
MIN_LENGTH, MAX_LENGTH = 2, 254
MAX_PDU = MAX_LENGTH - 1
ADDRESS_SPACE = 0x10000


class Function(IntEnum):
    READ_COILS = 1
    READ_DISCRETE_INPUTS = 2
    READ_HOLDING_REGISTERS = 3
    READ_INPUT_REGISTERS = 4
    WRITE_SINGLE_COIL = 5
    WRITE_SINGLE_REGISTER = 6
    WRITE_MULTIPLE_COILS = 15
    WRITE_MULTIPLE_REGISTERS = 16
    MASK_WRITE_REGISTER = 22
    READ_WRITE_MULTIPLE_REGISTERS = 23
    ENCAPSULATED_INTERFACE = 43


class ExceptionCode(IntEnum):
    ILLEGAL_FUNCTION = 1
    ILLEGAL_DATA_ADDRESS = 2
    ILLEGAL_DATA_VALUE = 3
    SERVER_DEVICE_FAILURE = 4


READ_FUNCTIONS = frozenset({1, 2, 3, 4})
WRITE_FUNCTIONS = frozenset({5, 6, 15, 16, 22, 23})
MEI_DEVICE_IDENTIFICATION = 14
# Address spaces, by the short names policy uses: coils, discrete inputs, holding and input
# registers.
SPACE_OF_READ = {1: "co", 2: "di", 3: "hr", 4: "ir"}
SPACE_OF_WRITE = {5: "co", 15: "co", 6: "hr", 16: "hr", 22: "hr", 23: "hr"}
# Quantity limits of the specification (V1.1b3), per function code.
MAX_READ_QUANTITY = {1: 2000, 2: 2000, 3: 125, 4: 125}
MAX_WRITE_COILS = 1968
MAX_WRITE_REGISTERS = 123
MAX_RW_READ, MAX_RW_WRITE = 125, 121
COIL_ON, COIL_OFF = 0xFF00, 0x0000
# Device identification objects a gateway keeps (basic category): vendor, product, revision.
DEVICE_ID_NAMES = {0: "vendor", 1: "product", 2: "revision"}


class ModbusError(Exception):
    """Input that is not Modbus/TCP."""


class FramingError(ModbusError):
    """The MBAP header is invalid: the stream has lost its frame boundaries."""


class PduError(ModbusError):
    """A well-framed PDU that does not fit its function code; ``code`` is the exception a
    server answers it with."""

    def __init__(self, message: str, code: ExceptionCode = ExceptionCode.ILLEGAL_DATA_VALUE):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Frame:
    """One MBAP frame: header fields and the PDU (function code first)."""

    transaction_id: int
    unit: int
    pdu: bytes
    wire: bytes = b""  # the frame as received (FrameReader), forwarded unchanged

    @property
    def function(self) -> int:
        return self.pdu[0]

    def encode(self) -> bytes:
        return self.wire or encode_frame(self.transaction_id, self.unit, self.pdu)


def encode_frame(transaction_id: int, unit: int, pdu: bytes) -> bytes:
    if not 1 <= len(pdu) <= MAX_PDU:
        raise ValueError(f"a PDU is 1..{MAX_PDU} bytes, not {len(pdu)}")
    return struct.pack(">HHHB", transaction_id, 0, len(pdu) + 1, unit) + pdu


class FrameReader:
    """Cuts a byte stream into frames. Holds at most one incomplete frame (261 bytes)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Every frame ``data`` completes, in order; ``FramingError`` on a bad header (the
        frames before it in ``data`` are lost with the connection it ends)."""
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        pos, size = 0, len(buffer)
        while size - pos >= 6:
            tid, protocol, length = struct.unpack_from(">HHH", buffer, pos)
            if protocol != 0:
                raise FramingError(f"MBAP protocol id {protocol} is not 0 (Modbus)")
            if not MIN_LENGTH <= length <= MAX_LENGTH:
                raise FramingError(f"MBAP length {length} is outside {MIN_LENGTH}..{MAX_LENGTH}")
            end = pos + 6 + length
            if end > size:
                break
            wire = bytes(buffer[pos:end])
            frames.append(Frame(tid, wire[6], wire[7:], wire))
            pos = end
        if pos:
            del buffer[:pos]
        return frames


# -- requests ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Request:
    """What a request asks. ``space``/``address``/``quantity`` describe the range read (a
    read) or written (a write); function 23 also reads ``read_address``/``read_quantity``.
    ``values`` are the written values (coils as 0/1, registers as 0..65535); function 22
    carries its ``and_mask``/``or_mask`` there instead."""

    function: int
    space: str = ""
    address: int = 0
    quantity: int = 0
    values: tuple[int, ...] = ()
    read_address: int = 0
    read_quantity: int = 0
    mei_type: int = 0
    device_id_code: int = 0
    object_id: int = 0
    raw: bytes = field(default=b"", repr=False)

    @property
    def is_write(self) -> bool:
        return self.function in WRITE_FUNCTIONS

    @property
    def is_read(self) -> bool:
        return self.function in READ_FUNCTIONS or self.is_device_identification

    @property
    def is_device_identification(self) -> bool:
        return self.function == 43 and self.mei_type == MEI_DEVICE_IDENTIFICATION

    @property
    def last(self) -> int:
        """The last address written (or read, for functions 1-4)."""
        return self.address + max(self.quantity, 1) - 1


def _range(address: int, quantity: int, limit: int, what: str) -> None:
    if not 1 <= quantity <= limit:
        raise PduError(f"{what} quantity {quantity} is outside 1..{limit}")
    if address + quantity > ADDRESS_SPACE:
        raise PduError(
            f"{what} {address}+{quantity} runs past the address space",
            ExceptionCode.ILLEGAL_DATA_ADDRESS,
        )


def _length(pdu: bytes, expected: int, function: int) -> None:
    if len(pdu) != expected:
        raise PduError(f"function {function} request is {len(pdu)} bytes, not {expected}")


def _bits(data: bytes, count: int) -> tuple[int, ...]:
    return tuple((data[i >> 3] >> (i & 7)) & 1 for i in range(count))


def _registers(data: bytes) -> tuple[int, ...]:
    return struct.unpack(f">{len(data) // 2}H", data)


def decode_request(pdu: bytes) -> Request:
    """What ``pdu`` asks; ``PduError`` (with the exception a server would send) otherwise.
    An unknown function code decodes to a bare ``Request(function)``: whether it may pass is
    policy's question, not the codec's."""
    if not pdu:
        raise PduError("empty PDU")
    fc = pdu[0]
    if fc in READ_FUNCTIONS:
        _length(pdu, 5, fc)
        address, quantity = struct.unpack_from(">HH", pdu, 1)
        _range(address, quantity, MAX_READ_QUANTITY[fc], "read")
        return Request(fc, SPACE_OF_READ[fc], address, quantity, raw=pdu)
    if fc in (5, 6):
        _length(pdu, 5, fc)
        address, value = struct.unpack_from(">HH", pdu, 1)
        if fc == 5:
            if value not in (COIL_ON, COIL_OFF):
                raise PduError(f"coil value {value:#06x} is neither 0xFF00 nor 0x0000")
            value = int(value == COIL_ON)
        return Request(fc, SPACE_OF_WRITE[fc], address, 1, (value,), raw=pdu)
    if fc in (15, 16):
        if len(pdu) < 6:
            raise PduError(f"function {fc} request is {len(pdu)} bytes, too short")
        address, quantity, count = struct.unpack_from(">HHB", pdu, 1)
        limit = MAX_WRITE_COILS if fc == 15 else MAX_WRITE_REGISTERS
        _range(address, quantity, limit, "write")
        expected = (quantity + 7) // 8 if fc == 15 else 2 * quantity
        if count != expected:
            raise PduError(f"byte count {count} does not match quantity {quantity}")
        _length(pdu, 6 + count, fc)
        data = pdu[6:]
        values = _bits(data, quantity) if fc == 15 else _registers(data)
        return Request(fc, SPACE_OF_WRITE[fc], address, quantity, values, raw=pdu)
    if fc == 22:
        _length(pdu, 7, fc)
        address, and_mask, or_mask = struct.unpack_from(">HHH", pdu, 1)
        return Request(fc, "hr", address, 1, (and_mask, or_mask), raw=pdu)
    if fc == 23:
        if len(pdu) < 10:
            raise PduError(f"function 23 request is {len(pdu)} bytes, too short")
        r_addr, r_qty, w_addr, w_qty, count = struct.unpack_from(">HHHHB", pdu, 1)
        _range(r_addr, r_qty, MAX_RW_READ, "read")
        _range(w_addr, w_qty, MAX_RW_WRITE, "write")
        if count != 2 * w_qty:
            raise PduError(f"byte count {count} does not match quantity {w_qty}")
        _length(pdu, 10 + count, fc)
        return Request(fc, "hr", w_addr, w_qty, _registers(pdu[10:]), r_addr, r_qty, raw=pdu)
    if fc == 43 and len(pdu) >= 2 and pdu[1] == MEI_DEVICE_IDENTIFICATION:
        _length(pdu, 4, fc)
        code, object_id = pdu[2], pdu[3]
        if not 1 <= code <= 4:
            raise PduError(f"read device id code {code} is outside 1..4")
        return Request(fc, mei_type=14, device_id_code=code, object_id=object_id, raw=pdu)
    if fc == 0 or fc >= 0x80:
        raise PduError(f"function code {fc} is not a request", ExceptionCode.ILLEGAL_FUNCTION)
    return Request(fc, mei_type=pdu[1] if fc == 43 and len(pdu) > 1 else 0, raw=pdu)


# -- responses -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Response:
    """What a response answers: ``exception`` (0 for none), the values read (bits or
    registers), or the device identification objects (id -> bytes)."""

    function: int
    exception: int = 0
    values: tuple[int, ...] = ()
    objects: tuple[tuple[int, bytes], ...] = ()

    @property
    def ok(self) -> bool:
        return self.exception == 0


def decode_response(pdu: bytes, request: Request) -> Response:
    """The answer ``pdu`` gives to ``request``; ``PduError`` when it does not fit it (a
    response to another function, a wrong byte count)."""
    if not pdu:
        raise PduError("empty PDU")
    fc = pdu[0]
    if fc == request.function | 0x80:
        if len(pdu) != 2:
            raise PduError(f"exception response is {len(pdu)} bytes, not 2")
        return Response(request.function, exception=pdu[1])
    if fc != request.function:
        raise PduError(f"response function {fc} answers no request {request.function}")
    if fc in READ_FUNCTIONS or fc == 23:
        if len(pdu) < 2 or len(pdu) != 2 + pdu[1]:
            raise PduError(f"function {fc} response byte count disagrees with its length")
        data = pdu[2:]
        quantity = request.read_quantity if fc == 23 else request.quantity
        if fc in (1, 2):
            if len(data) != (quantity + 7) // 8:
                raise PduError(f"{len(data)} bytes do not hold {quantity} bits")
            return Response(fc, values=_bits(data, quantity))
        if len(data) != 2 * quantity:
            raise PduError(f"{len(data)} bytes do not hold {quantity} registers")
        return Response(fc, values=_registers(data))
    if fc in (5, 6, 15, 16, 22):
        expected = 7 if fc == 22 else 5
        if len(pdu) != expected:
            raise PduError(f"function {fc} response is {len(pdu)} bytes, not {expected}")
        return Response(fc)
    if request.is_device_identification:
        return Response(fc, objects=_device_objects(pdu))
    return Response(fc)


def _device_objects(pdu: bytes) -> tuple[tuple[int, bytes], ...]:
    # 43, 14, read code, conformity, more follows, next object id, count, then objects of
    # (id, length, value).
    if len(pdu) < 7 or pdu[1] != MEI_DEVICE_IDENTIFICATION:
        raise PduError("device identification response too short")
    count, pos = pdu[6], 7
    objects = []
    for _ in range(count):
        if pos + 2 > len(pdu):
            raise PduError("device identification object runs past the PDU")
        object_id, size = pdu[pos], pdu[pos + 1]
        value = pdu[pos + 2 : pos + 2 + size]
        if len(value) != size:
            raise PduError("device identification object runs past the PDU")
        objects.append((object_id, bytes(value)))
        pos += 2 + size
    if pos != len(pdu):
        raise PduError("bytes after the last device identification object")
    return tuple(objects)


def device_identity(response: Response) -> dict[str, str]:
    """Vendor, product code and revision from a device identification response (printable
    text only, at most 64 characters each; what is missing is left out)."""
    out = {}
    for object_id, value in response.objects:
        name = DEVICE_ID_NAMES.get(object_id)
        if name is None:
            continue
        text = value.decode("latin-1")[:64]
        text = "".join(c if c.isprintable() else "?" for c in text).strip()
        if text:
            out[name] = text
    return out


def exception_pdu(function: int, code: ExceptionCode) -> bytes:
    return bytes((function & 0x7F | 0x80, code))


def exception_frame(frame: Frame, code: ExceptionCode) -> bytes:
    """The exception response a server gives to ``frame``: same transaction and unit."""
    return encode_frame(frame.transaction_id, frame.unit, exception_pdu(frame.function, code))
