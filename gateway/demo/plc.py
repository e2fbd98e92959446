"""A simulated Modbus/TCP PLC: the ``modbus`` asset ``conduit demo`` puts behind the gateway.

A pymodbus TCP server on a loopback address with one unit (id 1) holding a few known values
(coils 0-31, discrete inputs 0-31, holding registers 0-299, input registers 0-49) and
device identification (vendor, product code, revision) for the 43/14 read. Tests use the
same device as their PLC peer (``PLCThread`` runs it in a thread of its own). Not a device
model and it decides nothing: the gateway does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pymodbus.pdu.device import ModbusDeviceIdentification
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

PLC_NAME = "demo-modbus-plc"
UNIT = 1
VENDOR, PRODUCT, REVISION = "Conduit Demo Controls", "CDC-PLC-1", "1.4.2"
COILS = [True, False, True, True] + [False] * 28
DISCRETE_INPUTS = [False, True] * 16
HOLDING = [1000 + i for i in range(200)] + [7] * 100  # 100 holds 1100, 200 holds 7
INPUT = list(range(50))


def device() -> SimDevice:
    """The PLC's unit 1 (separate blocks: one coil per bit address)."""
    return SimDevice(
        id=UNIT,
        simdata=(
            [SimData(0, values=list(COILS), datatype=DataType.BITS)],
            [SimData(0, values=list(DISCRETE_INPUTS), datatype=DataType.BITS)],
            [SimData(0, values=list(HOLDING), datatype=DataType.REGISTERS)],
            [SimData(0, values=list(INPUT), datatype=DataType.REGISTERS)],
        ),
    )


def identity() -> ModbusDeviceIdentification:
    return ModbusDeviceIdentification(  # type: ignore[no-untyped-call]
        info_name={"VendorName": VENDOR, "ProductCode": PRODUCT, "MajorMinorRevision": REVISION}
    )


async def start_plc(host: str, port: int) -> ModbusTcpServer:
    """Listen on host:port (a fixed port: pymodbus does not report one it picked)."""
    server = ModbusTcpServer(device(), identity=identity(), address=(host, port))
    await server.serve_forever(background=True)
    return server


class PLCThread:
    """The PLC in a thread with its own event loop (a peer for tests and benchmarks)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: ModbusTcpServer | None = None
        self._thread = threading.Thread(target=self._run, name="plc", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(start_plc(self.host, self.port))
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> PLCThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the PLC did not start")
        return self

    def stop(self) -> None:
        server = self._server
        if server is not None:
            stop = server.shutdown()  # type: ignore[no-untyped-call]
            asyncio.run_coroutine_threadsafe(stop, self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextmanager
def running_plc(port: int) -> Iterator[PLCThread]:
    plc = PLCThread(port).start()
    try:
        yield plc
    finally:
        plc.stop()
