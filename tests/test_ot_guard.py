"""The Modbus guard of one connection, sans-io: what passes, what the gateway answers, the
evidence, and a write window that ends by itself (a clock passed in, never a sleep)."""

from __future__ import annotations

import datetime as dt

from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.pdu import bit_message as bits
from pymodbus.pdu import mei_message as mei
from pymodbus.pdu import register_message as regs

from gateway.ot.guard import MAX_PENDING, Grants, ModbusGuard
from gateway.ot.modbus import FrameReader, encode_frame

FRAMER = FramerSocket(DecodePDU(True))
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def wire(message: object) -> bytes:
    return FRAMER.buildFrame(message)  # type: ignore[arg-type]


class Session:
    def __init__(self, *actions: str, until: dt.datetime | None = None) -> None:
        self.grants: Grants = tuple((a, until) for a in actions)
        self.write_until: dt.datetime | None = None
        self.now = T0
        self.guard = ModbusGuard(lambda: self.grants, lambda: self.write_until, lambda: self.now)


def exception_of(reply: bytes) -> int:
    (frame,) = FrameReader().feed(reply)
    assert frame.function & 0x80
    return frame.pdu[1]


def test_reads_pass_writes_get_exception_01_and_never_reach_the_plc() -> None:
    s = Session("modbus-read")
    read = wire(regs.ReadHoldingRegistersRequest(address=0, count=125, dev_id=1, transaction_id=1))
    write = wire(regs.WriteSingleRegisterRequest(address=100, registers=[7], dev_id=1,
                                                 transaction_id=2))  # fmt: skip
    out = s.guard.from_client(read + write)
    assert out.forward == read
    assert exception_of(out.reply) == 1
    (evidence,) = out.evidence
    assert evidence.kind == "write"
    assert evidence.detail | {"reason": ""} == {
        "unit": 1, "function": 6, "space": "hr", "address": 100, "quantity": 1, "values": [7],
        "transaction_id": 2, "result": "exception 01", "reason": "", "by": "gateway",
    }  # fmt: skip


def test_write_window_opens_writes_in_range_and_ends_by_itself() -> None:
    s = Session("modbus-write:unit=1:hr=100-119")
    w100 = wire(regs.WriteSingleRegisterRequest(address=100, registers=[4242], dev_id=1,
                                                transaction_id=5))  # fmt: skip
    w200 = wire(regs.WriteSingleRegisterRequest(address=200, registers=[1], dev_id=1,
                                                transaction_id=6))  # fmt: skip
    assert exception_of(s.guard.from_client(w100).reply) == 1  # no window yet
    s.write_until = T0 + dt.timedelta(minutes=5)
    out = s.guard.from_client(w100 + w200)
    assert out.forward == w100
    assert exception_of(out.reply) == 2
    answered = s.guard.from_asset(wire(regs.WriteSingleRegisterResponse(
        address=100, registers=[4242], dev_id=1, transaction_id=5)))  # fmt: skip
    assert answered.forward.startswith(b"\x00\x05")
    (write,) = answered.evidence
    assert (write.kind, write.detail["values"], write.detail["result"]) == ("write", [4242], "ok")
    s.now = T0 + dt.timedelta(minutes=5)  # the window's end: nobody closed it
    assert exception_of(s.guard.from_client(w100).reply) == 1


def test_always_grant_needs_no_window_and_an_ended_grant_covers_nothing() -> None:
    s = Session("modbus-write:hr=0-9:always", until=T0 + dt.timedelta(hours=1))
    write = wire(regs.WriteMultipleRegistersRequest(address=0, registers=[1, 2], dev_id=3,
                                                    transaction_id=1))  # fmt: skip
    assert s.guard.from_client(write).forward == write
    s.now = T0 + dt.timedelta(hours=1)
    assert exception_of(s.guard.from_client(write).reply) == 1


def test_pipelined_and_byte_by_byte_requests_go_to_the_plc_one_at_a_time() -> None:
    s = Session("modbus-read")
    frames = [
        wire(regs.ReadHoldingRegistersRequest(address=i, count=1, dev_id=1, transaction_id=i))
        for i in range(20)
    ]
    requests = b"".join(frames)
    to_plc = b""
    for i in range(len(requests)):
        to_plc += s.guard.from_client(requests[i : i + 1]).forward
    assert to_plc == frames[0]  # the rest wait for the PLC's answer
    to_client = b""
    for i in range(20):
        out = s.guard.from_asset(
            wire(regs.ReadHoldingRegistersResponse(registers=[i], dev_id=1, transaction_id=i))
        )
        to_client += out.forward
        assert out.to_asset == (frames[i + 1] if i < 19 else b"")
    assert [f.transaction_id for f in FrameReader().feed(to_client)] == list(range(20))
    (reads,) = s.guard.finish()
    assert (reads.kind, reads.detail["requests"], reads.detail["ranges_total"]) == ("reads", 20, 20)


def test_overdue_request_is_given_up_and_the_next_one_sent() -> None:
    s = Session("modbus-write:always")
    first = wire(regs.WriteSingleRegisterRequest(address=1, registers=[5], dev_id=9,
                                                 transaction_id=1))  # fmt: skip
    second = wire(regs.WriteSingleRegisterRequest(address=2, registers=[6], dev_id=1,
                                                  transaction_id=2))  # fmt: skip
    assert s.guard.from_client(first + second).forward == first
    assert s.guard.overdue(s.guard.sent + 1).to_asset == b""  # not that one: nothing happens
    out = s.guard.overdue(1)
    assert out.to_asset == second
    (write,) = out.evidence
    assert (write.detail["unit"], write.detail["result"]) == (9, "no response")
    late = s.guard.from_asset(wire(regs.WriteSingleRegisterResponse(
        address=1, registers=[5], dev_id=9, transaction_id=1)))  # fmt: skip
    assert late.forward == b"" and late.evidence[0].kind == "refused"  # given up: dropped


def test_malformed_body_gets_03_unknown_function_01_bad_header_closes() -> None:
    s = Session("modbus-read")
    out = s.guard.from_client(encode_frame(1, 1, b"\x03\x00\x00\x00\x00"))  # 0 registers
    assert exception_of(out.reply) == 3 and out.forward == b"" and not out.close
    out = s.guard.from_client(encode_frame(2, 1, b"\x41\x00"))
    assert exception_of(out.reply) == 1 and not out.close
    out = s.guard.from_client(b"\x00\x03\x00\x00\xff\xff\x01\x03")
    assert out.close.startswith("malformed request") and out.forward == b""


def test_function_granted_by_number_passes() -> None:
    s = Session("modbus-read", "modbus-fc:8")
    diagnostics = encode_frame(1, 1, b"\x08\x00\x00\x12\x34")
    assert s.guard.from_client(diagnostics).forward == diagnostics


def test_device_identification_answer_is_evidence() -> None:
    s = Session("modbus-read:unit=1:hr=0-9")  # narrowed reads still cover 43/14
    ask = wire(mei.ReadDeviceInformationRequest(read_code=1, dev_id=1, transaction_id=9))
    assert s.guard.from_client(ask).forward == ask
    answer = wire(mei.ReadDeviceInformationResponse(
        read_code=1, information={0: b"Acme", 1: b"PLC-9", 2: b"4.2"}, dev_id=1,
        transaction_id=9))  # fmt: skip
    out = s.guard.from_asset(answer)
    assert out.forward == answer
    assert [(e.kind, e.detail) for e in out.evidence] == [
        ("identity", {"vendor": "Acme", "product": "PLC-9", "revision": "4.2"})
    ]


def test_unsolicited_response_is_dropped_and_too_many_in_flight_closes() -> None:
    s = Session("modbus-read")
    stray = wire(regs.ReadHoldingRegistersResponse(registers=[1], dev_id=1, transaction_id=77))
    out = s.guard.from_asset(stray)
    assert out.forward == b"" and out.evidence[0].kind == "refused"
    flood = b"".join(
        wire(bits.ReadCoilsRequest(address=0, count=1, dev_id=1, transaction_id=i % 65536))
        for i in range(MAX_PENDING + 1)
    )
    assert "awaiting answers" in s.guard.from_client(flood).close


def test_write_without_answer_is_evidence_at_the_end() -> None:
    s = Session("modbus-write:always")
    s.guard.from_client(wire(bits.WriteSingleCoilRequest(address=3, bits=[True], dev_id=1,
                                                         transaction_id=4)))  # fmt: skip
    (write,) = s.guard.finish()  # no reads, no refusals: no summary
    assert (write.detail["values"], write.detail["result"]) == ([1], "no response")


def test_a_remembered_read_verdict_follows_a_grant_change() -> None:
    s = Session("modbus-read:hr=0-9")
    read = wire(regs.ReadHoldingRegistersRequest(address=0, count=10, dev_id=1, transaction_id=1))
    assert s.guard.from_client(read).forward == read
    s.guard.from_asset(wire(regs.ReadHoldingRegistersResponse(registers=[0] * 10, dev_id=1,
                                                               transaction_id=1)))  # fmt: skip
    s.grants = (("modbus-read:hr=100-109", None),)  # a new tuple: the broker re-read policy
    assert exception_of(s.guard.from_client(read).reply) == 2
    s.grants = (("modbus-read", T0 + dt.timedelta(minutes=1)),)
    assert s.guard.from_client(read).forward == read
    s.guard.from_asset(wire(regs.ReadHoldingRegistersResponse(registers=[0] * 10, dev_id=1,
                                                               transaction_id=1)))  # fmt: skip
    s.now = T0 + dt.timedelta(minutes=1)  # that grant ended: nothing covers the read now
    assert exception_of(s.guard.from_client(read).reply) == 1
