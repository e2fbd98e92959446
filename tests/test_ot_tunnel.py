"""Protocol-aware Modbus tunnels with real peers: the issue's acceptance.

The PLC is a pymodbus TCP server on 127.0.0.1 (``gateway.demo.plc``: known values, device
identification set), asset ``plc`` of protocol ``modbus``. The vendor's tool is a pymodbus
client through a real OpenSSH ``ssh -N -L`` tunnel into a real ``conduit serve``. What the
PLC holds is read back directly from it, never through the gateway. Every wait polls with a
deadline.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.pdu import ModbusPDU

from gateway.config import Overrides, load_settings
from gateway.demo import plc as demo_plc
from gateway.identity.accounts import create_user
from gateway.keys import load_keyring
from gateway.ot.modbus import FrameReader, encode_frame
from gateway.services import Services
from tests.sshd_target import free_port
from tests.support import conduit, init_data_dir, serving
from tests.test_ssh_jump import PASSWORD, Gateway
from tests.test_ssh_tunnel import connect, forwarding

# alice may read; bob may read and write holding registers 100-119 of unit 1 in a window.
GRANTS = {
    "alice": ("modbus-read",),
    "bob": ("modbus-read", "modbus-write:unit=1:hr=100-119"),
}


async def _populate(data: Path, plc_port: int, secrets: dict[str, str]) -> None:
    settings = load_settings(None, Overrides(data_dir=data), environ={})
    keys = load_keyring(settings)
    services = Services.build(settings, keys)
    try:
        async with services.sessions() as db, db.begin():
            for user, secret in secrets.items():
                await create_user(
                    db, username=user, roles=["vendor"], now=services.clock(),
                    master_key=keys.master_key, password=PASSWORD, totp_secret=secret,
                    status="active", organisation="acme",
                )  # fmt: skip
        await services.authz.add_asset("plc", "127.0.0.1", plc_port, "modbus", actor="test")
        for user, actions in GRANTS.items():
            for action in actions:
                await services.authz.add_grant(
                    subject_kind="user", subject=user, object_kind="asset", obj="plc",
                    action=action, actor="test",
                )  # fmt: skip
    finally:
        await services.close()


@pytest.fixture(scope="module")
def plc() -> Iterator[demo_plc.PLCThread]:
    with demo_plc.running_plc(free_port()) as device:
        yield device


@pytest.fixture(scope="module")
def gateway(plc: demo_plc.PLCThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("ot")
    data = root / "data"
    init_data_dir(data)
    secrets = {name: pyotp.random_base32() for name in GRANTS}
    asyncio.run(_populate(data, plc.port, secrets))
    with serving(data) as (server, ssh_port):
        work = root / "client"
        work.mkdir()
        yield Gateway(data, server, ssh_port, secrets, work)


def direct(plc: demo_plc.PLCThread) -> ModbusTcpClient:
    client = ModbusTcpClient(plc.host, port=plc.port, timeout=10)
    assert client.connect()
    return client


def holding(plc: demo_plc.PLCThread, address: int) -> int:
    """Register ``address`` as the PLC holds it, read without the gateway."""
    client = direct(plc)
    try:
        value: int = client.read_holding_registers(address, count=1, device_id=1).registers[0]
        return value
    finally:
        client.close()


def set_holding(plc: demo_plc.PLCThread, address: int, value: int) -> None:
    client = direct(plc)
    try:
        assert not client.write_register(address, value, device_id=1).isError()
    finally:
        client.close()


def tunnel_client(port: int, proc: object) -> ModbusTcpClient:
    """The vendor's pymodbus client on ssh's forwarded port, once ssh listens."""
    connect(port, proc).close()  # type: ignore[arg-type]
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=10, retries=0)
    assert client.connect()
    return client


def exception_code(response: ModbusPDU) -> int:
    assert response.isError(), response
    return int(response.exception_code)


def audit_events(gateway: Gateway, action: str, count: int = 1) -> list[dict[str, object]]:
    end = time.monotonic() + 15
    while True:
        found = [e for e in gateway.audit() if e["action"] == action]
        if len(found) >= count or time.monotonic() > end:
            return found
        time.sleep(0.2)


def live_session(gateway: Gateway, user: str) -> str:
    """The id of ``user``'s live Modbus session (``conduit sessions list``)."""
    end = time.monotonic() + 15
    while time.monotonic() < end:
        listed = conduit("sessions", "list", "--data-dir", str(gateway.data))
        for line in listed.stdout.splitlines()[1:]:
            fields = line.split()
            if fields[1] == user and fields[3] == "modbus":
                return fields[0]
        time.sleep(0.2)
    raise AssertionError(f"no live Modbus session of {user}")


def write_until(client: ModbusTcpClient, address: int, value: int, want_error: bool) -> ModbusPDU:
    """Write until the answer is (or is not) an exception: a write window binds on the
    owner node within half a second of being armed or closed."""
    end = time.monotonic() + 10
    while True:
        response = client.write_register(address, value, device_id=1)
        if response.isError() == want_error or time.monotonic() > end:
            return response
        time.sleep(0.2)


def test_read_grant_reads_everything_and_every_write_is_refused_by_the_gateway(
    gateway: Gateway, plc: demo_plc.PLCThread
) -> None:
    local = free_port()
    with forwarding(gateway, "alice+plc", [(local, "plc", plc.port)]) as proc:
        client = tunnel_client(local, proc)
        try:
            assert client.read_coils(0, count=4, device_id=1).bits[:4] == demo_plc.COILS[:4]
            inputs = client.read_discrete_inputs(0, count=8, device_id=1).bits[:8]
            assert inputs == demo_plc.DISCRETE_INPUTS[:8]
            registers = client.read_holding_registers(0, count=125, device_id=1).registers
            assert registers == demo_plc.HOLDING[:125]
            assert client.read_input_registers(0, count=5, device_id=1).registers == [0, 1, 2, 3, 4]
            before = holding(plc, 100)
            assert exception_code(client.write_register(100, 9999, device_id=1)) == 1
            assert holding(plc, 100) == before  # never reached the PLC
            assert client.read_holding_registers(100, count=1, device_id=1).registers == [before]
            info = client.read_device_information(device_id=1)
            assert info.information[0] == demo_plc.VENDOR.encode()
        finally:
            client.close()
    (refused,) = audit_events(gateway, "modbus.write")
    detail = refused["detail"]
    assert isinstance(detail, dict)
    assert refused["result"] == "denied"
    assert (detail["address"], detail["values"], detail["result"]) == (100, [9999], "exception 01")
    (reads,) = audit_events(gateway, "modbus.reads")
    assert isinstance(reads["detail"], dict) and reads["detail"]["requests"] >= 6
    end = time.monotonic() + 15
    while True:  # the device's own answer to the vendor's 43/14 read, stored on the asset
        listed = conduit("asset", "list", "--json", "--data-dir", str(gateway.data))
        (asset,) = [json.loads(line) for line in listed.stdout.splitlines()]
        if asset["ot_vendor"] or time.monotonic() > end:
            break
        time.sleep(0.2)
    assert (asset["ot_vendor"], asset["ot_product"], asset["ot_revision"]) == (
        demo_plc.VENDOR, demo_plc.PRODUCT, demo_plc.REVISION,
    )  # fmt: skip
    assert asset["ot_seen_at"]


def test_write_window_lets_granted_writes_through_until_it_ends(
    gateway: Gateway, plc: demo_plc.PLCThread
) -> None:
    set_holding(plc, 100, 1100)
    local = free_port()
    data = ["--data-dir", str(gateway.data)]
    with forwarding(gateway, "bob+plc", [(local, "plc", plc.port)]) as proc:
        client = tunnel_client(local, proc)
        try:
            assert exception_code(client.write_register(100, 1, device_id=1)) == 1  # no window
            session = live_session(gateway, "bob")
            armed = conduit("sessions", "write-window", session, "--minutes", "5",
                            "--reason", "retune PID loop 3", *data)  # fmt: skip
            assert armed.returncode == 0, armed.stderr
            assert not write_until(client, 100, 4242, want_error=False).isError()
            assert holding(plc, 100) == 4242
            assert exception_code(client.write_register(200, 5, device_id=1)) == 2
            assert holding(plc, 200) == 7
            closed = conduit("sessions", "write-window", session, "--close", *data)
            assert closed.returncode == 0, closed.stderr
            # the same value again until the closed window binds, then another one
            assert exception_code(write_until(client, 100, 4242, want_error=True)) == 1
            assert exception_code(client.write_register(100, 5151, device_id=1)) == 1
            assert holding(plc, 100) == 4242
            assert client.read_holding_registers(100, count=1, device_id=1).registers == [4242]
        finally:
            client.close()
    ok = [e for e in audit_events(gateway, "modbus.write", 4) if e["result"] == "success"]
    assert {(e["detail"]["address"], tuple(e["detail"]["values"])) for e in ok} == {  # type: ignore[index]
        (100, (4242,))
    }
    (arm,) = audit_events(gateway, "modbus.window_armed")
    assert arm["detail"]["reason"] == "retune PID loop 3"  # type: ignore[index]
    starts = [e for e in audit_events(gateway, "session.end", 2)
              if e["detail"]["session_id"] == session]  # type: ignore[index]  # fmt: skip
    recording = starts[0]["detail"]["recording_id"]  # type: ignore[index]
    exported = conduit("recordings", "export", str(recording), "--format", "jsonl", *data)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    writes = [x for x in lines if x["event"] == "modbus" and x["kind"] == "write"]
    shown = {(w["address"], tuple(w["values"]), w["result"]) for w in writes}
    assert {
        (100, (1,), "exception 01"), (100, (4242,), "ok"), (200, (5,), "exception 02"),
        (100, (4242,), "exception 01"), (100, (5151,), "exception 01"),
    } <= shown  # fmt: skip
    requests = [x for x in lines if x["event"] == "request" and x["function"] == 6]
    assert {tuple(r["values"]) for r in requests} == {(4242,)}  # only what reached the PLC
    assert any(x["event"] == "response" and x["function"] == 6 for x in lines)
    end = time.monotonic() + 15
    while True:  # indexed once the recording is closed and verified
        found = conduit("recordings", "search", "4242", *data)
        if recording in found.stdout or time.monotonic() > end:
            break
        time.sleep(0.3)
    assert recording in found.stdout and "result ok" in found.stdout
    by_address = conduit("recordings", "search", "address", "100", "4242", *data)
    assert recording in by_address.stdout


def _exchange(sock: socket.socket, data: bytes, frames: int) -> list[tuple[int, bytes]]:
    sock.sendall(data)
    reader, got = FrameReader(), []
    while len(got) < frames:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        got += [(f.transaction_id, f.pdu) for f in reader.feed(chunk)]
    return got


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def read_hr(tid: int, address: int = 0, count: int = 1) -> bytes:
    return encode_frame(tid, 1, struct.pack(">BHH", 3, address, count))


def test_framing_pipelining_and_malformed_input_as_the_spec_says(
    gateway: Gateway, plc: demo_plc.PLCThread
) -> None:
    local = free_port()
    with forwarding(gateway, "alice+plc", [(local, "plc", plc.port)]) as proc:
        with connect(local, proc) as sock:
            # 20 pipelined requests in one segment: 20 answers, each to its transaction
            answers = _exchange(sock, b"".join(read_hr(i, i) for i in range(20)), 20)
            assert sorted(tid for tid, _ in answers) == list(range(20))
            assert all(pdu == struct.pack(">BBH", 3, 2, demo_plc.HOLDING[tid])
                       for tid, pdu in answers)  # fmt: skip
            # one request split byte by byte across segments
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for byte in read_hr(77, 5)[:-1]:
                sock.send(bytes((byte,)))
            assert _exchange(sock, read_hr(77, 5)[-1:], 1)[0][0] == 77
            # an unknown function code: Illegal Function from the gateway; still connected
            assert _exchange(sock, encode_frame(78, 1, b"\x41\x00\x01"), 1) == [(78, b"\xc1\x01")]
            # a PDU shorter than its function needs (the declared length cuts it): 03
            assert _exchange(sock, encode_frame(79, 1, b"\x03\x00\x00"), 1) == [(79, b"\x83\x03")]
            assert _exchange(sock, read_hr(80), 1)[0][0] == 80
            # a PDU longer than the declared length: the rest is read as the next header,
            # which is not Modbus, so this connection ends
            longer = bytearray(read_hr(81))
            longer[5] = 4
            sock.sendall(bytes(longer) + read_hr(82))
            assert _closed(sock)
        for length in (0, 65535):  # MBAP lengths outside 2..254 end the connection
            with connect(local, proc) as sock:
                sock.sendall(struct.pack(">HHHB", 1, 0, length, 1) + b"\x03\x00\x00\x00\x01")
                assert _closed(sock)
        with connect(local, proc) as sock:  # the tunnel and the gateway are still there
            assert _exchange(sock, read_hr(90, 100), 1)[0][0] == 90
    ends = audit_events(gateway, "session.end", 1)
    assert sum(e["detail"]["reason"] == "protocol_error" for e in ends) >= 3  # type: ignore[index]
    denied = [e for e in gateway.audit() if e["action"] == "operation.denied"]
    reasons = " ".join(str(e["detail"]) for e in denied)
    assert "function 65 is not granted" in reasons and "MBAP length 0" in reasons
    assert "MBAP length 65535" in reasons
