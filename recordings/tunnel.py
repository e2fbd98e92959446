"""Tunnel recordings: the event types of a ``kind = tunnel`` recording.

A tunnel (``ssh -L`` through the gateway) carries an opaque TCP stream to one port of one
asset. Its recording keeps both directions as raw bytes with timestamps, like a terminal
recording, plus UTF-8 markers for what happened to the connection (connected, half-closed).
The numbers line up with ``recordings.terminal`` (1 from the asset, 2 towards it, 4 marker)
so generic tools read both alike. Does no I/O and does not interpret the bytes (Modbus, S7,
OPC UA... are the engineering software's business).
"""

from __future__ import annotations

from enum import IntEnum


class TunnelEvent(IntEnum):
    FROM_ASSET = 1  # raw bytes the asset sent to the client
    TO_ASSET = 2  # raw bytes the client sent to the asset (off when the asset says so)
    MARKER = 4  # UTF-8 text: "connected 10.0.0.5:502", "eof from client", ...
