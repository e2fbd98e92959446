"""The Connect page's command lines for a Modbus grant: a tunnel to the asset's Modbus port."""

from __future__ import annotations

from gateway.web.connect import _gather, command_lines


def test_modbus_grant_gives_one_tunnel_line_to_the_modbus_port() -> None:
    found = [
        ("plc", "modbus-read", None),
        ("plc", "modbus-write:unit=1:hr=100-119", None),
        ("plc", "tunnel:502", None),  # the same port: one line, the Modbus one
        ("rtu", "modbus-read", None),  # no Modbus port known: nothing to show
    ]
    entries = _gather(found, {"plc": 502})
    assert list(entries) == ["plc"]
    lines = command_lines(entries["plc"], "alice", "gw.example", 2222)
    assert [label for label, _ in lines] == [
        "Modbus/TCP to port 502, checked by the gateway (then use 127.0.0.1:15502)"
    ]
    assert lines[0][1].endswith("-N -L 127.0.0.1:15502:localhost:502 alice+plc@gw.example")
    # a blind tunnel grant on a Modbus port opens nothing (the broker refuses it): no line
    assert _gather([("plc", "tunnel:502", None)], {"plc": 502}) == {}
