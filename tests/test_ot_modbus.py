"""The Modbus/TCP codec: framing with limits, every public request and response, against
pymodbus's own encoder, and fuzzed with Hypothesis (only ``ModbusError`` may come out)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu import bit_message as bits
from pymodbus.pdu import mei_message as mei
from pymodbus.pdu import register_message as regs

from gateway.ot.modbus import (
    ExceptionCode,
    Frame,
    FrameReader,
    FramingError,
    ModbusError,
    PduError,
    Request,
    decode_request,
    decode_response,
    device_identity,
    encode_frame,
    exception_frame,
)

SERVER = FramerSocket(DecodePDU(True))
CLIENT = FramerSocket(DecodePDU(False))


def adu(message: object) -> bytes:
    """What pymodbus puts on the wire for ``message`` (MBAP header included)."""
    return SERVER.buildFrame(message)  # type: ignore[arg-type]


def one_frame(data: bytes) -> Frame:
    frames = FrameReader().feed(data)
    assert len(frames) == 1
    return frames[0]


@pytest.mark.parametrize(
    "message,expected",
    [
        (bits.ReadCoilsRequest(address=10, count=2000, dev_id=1),
         Request(1, "co", 10, 2000)),
        (bits.ReadDiscreteInputsRequest(address=0, count=1, dev_id=1),
         Request(2, "di", 0, 1)),
        (regs.ReadHoldingRegistersRequest(address=100, count=125, dev_id=1),
         Request(3, "hr", 100, 125)),
        (regs.ReadInputRegistersRequest(address=65535, count=1, dev_id=1),
         Request(4, "ir", 65535, 1)),
        (bits.WriteSingleCoilRequest(address=7, bits=[True], dev_id=1),
         Request(5, "co", 7, 1, (1,))),
        (bits.WriteSingleCoilRequest(address=7, bits=[False], dev_id=1),
         Request(5, "co", 7, 1, (0,))),
        (regs.WriteSingleRegisterRequest(address=100, registers=[0xBEEF], dev_id=1),
         Request(6, "hr", 100, 1, (0xBEEF,))),
        (bits.WriteMultipleCoilsRequest(address=3, bits=[True, False, True] * 3, dev_id=1),
         Request(15, "co", 3, 9, (1, 0, 1) * 3)),
        (regs.WriteMultipleRegistersRequest(address=100, registers=list(range(123)), dev_id=1),
         Request(16, "hr", 100, 123, tuple(range(123)))),
        (regs.MaskWriteRegisterRequest(address=5, and_mask=0xF0F0, or_mask=0x0101, dev_id=1),
         Request(22, "hr", 5, 1, (0xF0F0, 0x0101))),
        (regs.ReadWriteMultipleRegistersRequest(read_address=1, read_count=125, write_address=200,
                                                write_registers=[1, 2, 3], dev_id=1),
         Request(23, "hr", 200, 3, (1, 2, 3), 1, 125)),
        (mei.ReadDeviceInformationRequest(read_code=1, object_id=0, dev_id=1),
         Request(43, mei_type=14, device_id_code=1)),
    ],
)  # fmt: skip
def test_requests_pymodbus_encodes_decode_to_what_they_ask(
    message: object, expected: Request
) -> None:
    frame = one_frame(adu(message))
    request = decode_request(frame.pdu)
    assert (request.function, request.space, request.address, request.quantity) == (
        expected.function, expected.space, expected.address, expected.quantity,
    )  # fmt: skip
    assert request.values == expected.values
    assert (request.read_address, request.read_quantity) == (
        expected.read_address,
        expected.read_quantity,
    )
    assert (request.mei_type, request.device_id_code) == (
        expected.mei_type,
        expected.device_id_code,
    )
    assert frame.encode() == adu(message)  # our framing is byte-identical to pymodbus's


@pytest.mark.parametrize(
    "request_message,response_message,values",
    [
        (bits.ReadCoilsRequest(address=0, count=10, dev_id=1),
         bits.ReadCoilsResponse(bits=[True, False] * 8, dev_id=1), (1, 0) * 5),
        (regs.ReadHoldingRegistersRequest(address=0, count=3, dev_id=1),
         regs.ReadHoldingRegistersResponse(registers=[1, 0xFFFF, 42], dev_id=1), (1, 0xFFFF, 42)),
        (regs.ReadWriteMultipleRegistersRequest(read_address=0, read_count=2, write_address=9,
                                                write_registers=[5], dev_id=1),
         regs.ReadWriteMultipleRegistersResponse(registers=[7, 8], dev_id=1), (7, 8)),
        (regs.WriteSingleRegisterRequest(address=100, registers=[9], dev_id=1),
         regs.WriteSingleRegisterResponse(address=100, registers=[9], dev_id=1), ()),
        (regs.WriteMultipleRegistersRequest(address=100, registers=[1, 2], dev_id=1),
         regs.WriteMultipleRegistersResponse(address=100, count=2, dev_id=1), ()),
        (regs.MaskWriteRegisterRequest(address=5, dev_id=1),
         regs.MaskWriteRegisterResponse(address=5, dev_id=1), ()),
        (bits.WriteMultipleCoilsRequest(address=1, bits=[True], dev_id=1),
         bits.WriteMultipleCoilsResponse(address=1, count=1, dev_id=1), ()),
    ],
)  # fmt: skip
def test_responses_pymodbus_encodes_decode_to_their_values(
    request_message: object, response_message: object, values: tuple[int, ...]
) -> None:
    request = decode_request(one_frame(adu(request_message)).pdu)
    response = decode_response(one_frame(adu(response_message)).pdu, request)
    assert response.ok
    assert response.values == values


def test_exception_frames_are_what_pymodbus_decodes_as_exceptions() -> None:
    message = regs.WriteSingleRegisterRequest(address=100, registers=[1], dev_id=1,
                                              transaction_id=77)  # fmt: skip
    frame = one_frame(adu(message))
    reply = exception_frame(frame, ExceptionCode.ILLEGAL_FUNCTION)
    used, pdu = CLIENT.handleFrame(reply, 1, 77)
    assert used == len(reply)
    assert isinstance(pdu, ExceptionResponse)
    assert (pdu.exception_code, pdu.transaction_id, pdu.dev_id) == (1, 77, 1)
    assert decode_response(one_frame(reply).pdu, decode_request(frame.pdu)).exception == 1
    pymodbus_exception = adu(ExceptionResponse(6, 2, device_id=1, transaction=77))
    assert reply[:7] == pymodbus_exception[:7]
    assert (
        decode_response(one_frame(pymodbus_exception).pdu, decode_request(frame.pdu)).exception == 2
    )


def test_device_identification_response_gives_vendor_product_revision() -> None:
    request = decode_request(one_frame(adu(mei.ReadDeviceInformationRequest(dev_id=1))).pdu)
    info = {0: b"Acme Controls", 1: b"PLC-9000", 2: b"v4.2\x00", 3: b"https://acme.example"}
    response = decode_response(
        one_frame(adu(mei.ReadDeviceInformationResponse(read_code=1, information=info))).pdu,
        request,
    )
    assert dict(response.objects)[3] == b"https://acme.example"
    assert device_identity(response) == {
        "vendor": "Acme Controls", "product": "PLC-9000", "revision": "v4.2?",
    }  # fmt: skip


def test_pipelined_frames_in_one_segment_and_split_byte_by_byte() -> None:
    stream = b"".join(
        adu(regs.ReadHoldingRegistersRequest(address=i, count=1, dev_id=1, transaction_id=i))
        for i in range(20)
    )
    assert [f.transaction_id for f in FrameReader().feed(stream)] == list(range(20))
    reader = FrameReader()
    got: list[Frame] = []
    for i in range(len(stream)):
        got += reader.feed(stream[i : i + 1])
    assert [decode_request(f.pdu).address for f in got] == list(range(20))
    assert reader.pending == 0


@pytest.mark.parametrize("length", [0, 1, 255, 65535])
def test_mbap_length_outside_the_spec_is_a_framing_error(length: int) -> None:
    with pytest.raises(FramingError, match="length"):
        FrameReader().feed(struct.pack(">HHHB", 1, 0, length, 1) + b"\x03")


def test_protocol_id_other_than_modbus_is_a_framing_error() -> None:
    with pytest.raises(FramingError, match="protocol"):
        FrameReader().feed(struct.pack(">HHHB", 1, 1, 6, 1) + b"\x03\x00\x00\x00\x01")


def test_pdu_longer_than_declared_spills_into_a_bad_next_header() -> None:
    good = encode_frame(1, 1, b"\x03\x00\x00\x00\x01")
    declared_short = bytearray(good)
    declared_short[5] = 3  # length says unit + 2 bytes of PDU; 3 more follow
    frames = []
    with pytest.raises(FramingError):
        frames += FrameReader().feed(bytes(declared_short) + good)
    assert frames == []


@pytest.mark.parametrize(
    "pdu,code",
    [
        (b"\x03\x00\x00\x00\x00", ExceptionCode.ILLEGAL_DATA_VALUE),  # quantity 0
        (b"\x03\x00\x00\x00\x7e", ExceptionCode.ILLEGAL_DATA_VALUE),  # 126 registers
        (b"\x01\x00\x00\x07\xd1", ExceptionCode.ILLEGAL_DATA_VALUE),  # 2001 coils
        (b"\x03\xff\xff\x00\x02", ExceptionCode.ILLEGAL_DATA_ADDRESS),  # past 65535
        (b"\x03\x00\x00\x00\x01\x00", ExceptionCode.ILLEGAL_DATA_VALUE),  # a byte too many
        (b"\x05\x00\x01\x12\x34", ExceptionCode.ILLEGAL_DATA_VALUE),  # coil value
        (b"\x10\x00\x00\x00\x02\x03\x00\x01\x00", ExceptionCode.ILLEGAL_DATA_VALUE),  # count
        (b"\x10\x00\x00\x00\x7c\xf8" + b"\x00" * 248, ExceptionCode.ILLEGAL_DATA_VALUE),  # 124
        (b"\x0f\x00\x00\x07\xb1\xf7" + b"\x00" * 247, ExceptionCode.ILLEGAL_DATA_VALUE),  # 1969
        (b"\x2b\x0e\x05\x00", ExceptionCode.ILLEGAL_DATA_VALUE),  # read device id code 5
        (b"\x83\x02", ExceptionCode.ILLEGAL_FUNCTION),  # a response where a request goes
    ],
)
def test_requests_outside_the_spec_name_the_exception_a_server_answers(
    pdu: bytes, code: ExceptionCode
) -> None:
    with pytest.raises(PduError) as caught:
        decode_request(pdu)
    assert caught.value.code == code


def test_unknown_function_decodes_bare_for_policy_to_judge() -> None:
    request = decode_request(b"\x41\x01\x02")
    assert (request.function, request.is_read, request.is_write) == (0x41, False, False)
    assert decode_request(b"\x2b\x0d\x00").is_device_identification is False


def test_response_that_answers_another_request_is_a_pdu_error() -> None:
    request = decode_request(b"\x03\x00\x00\x00\x02")
    with pytest.raises(PduError):
        decode_response(b"\x04\x04\x00\x01\x00\x02", request)
    with pytest.raises(PduError):
        decode_response(b"\x03\x02\x00\x01", request)  # one register for two


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_stream_gives_frames_or_a_framing_error(chunks: list[bytes]) -> None:
    reader = FrameReader()
    try:
        for chunk in chunks:
            for frame in reader.feed(chunk):
                assert 1 <= len(frame.pdu) <= 253
                try:
                    request = decode_request(frame.pdu)
                except PduError:
                    continue
                try:
                    decode_response(frame.pdu, request)
                except PduError:
                    pass
    except FramingError:
        pass
    assert reader.pending < 6 + 254


@settings(max_examples=500, deadline=None)
@given(st.integers(1, 127), st.binary(max_size=252))
def test_fuzz_pdus_decode_or_name_an_exception(function: int, body: bytes) -> None:
    pdu = bytes((function,)) + body
    try:
        request = decode_request(pdu)
    except PduError as exc:
        assert exc.code in (1, 2, 3)
        return
    except ModbusError:
        raise AssertionError("only PduError may come out of decode_request") from None
    if request.is_write:
        assert 1 <= request.quantity and request.address + request.quantity <= 0x10000
    for answer in (pdu, bytes((function | 0x80, 2)), b"\x2b\x0e\x01\x83\x00\x00\x01\x00\x02ab"):
        try:
            decode_response(answer, request)
        except PduError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.integers(0, 65535 - 123),
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=123),
    st.integers(1, 60),
)
def test_fuzz_pymodbus_writes_round_trip_through_any_segmentation(
    tid: int, unit: int, address: int, registers: list[int], step: int
) -> None:
    wire = adu(regs.WriteMultipleRegistersRequest(address=address, registers=registers,
                                                  dev_id=unit, transaction_id=tid))  # fmt: skip
    reader = FrameReader()
    frames: list[Frame] = []
    for i in range(0, len(wire), step):
        frames += reader.feed(wire[i : i + step])
    (frame,) = frames
    assert (frame.transaction_id, frame.unit) == (tid, unit)
    request = decode_request(frame.pdu)
    assert (request.address, request.values) == (address, tuple(registers))
    assert frame.encode() == wire
