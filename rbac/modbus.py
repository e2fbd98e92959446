"""Modbus actions: what ``modbus-read``, ``modbus-write`` and ``modbus-fc:<n>`` grant, and
whether a set of them covers one request.

Grammar (one canonical spelling per meaning, since policy matches action strings exactly)::

    modbus-read[:unit=N][:co=A-B][:di=A-B][:hr=A-B][:ir=A-B]
    modbus-write[:unit=N][:co=A-B][:hr=A-B][:always]
    modbus-fc:N          another function code, granted by number (not 1-6, 15, 16, 22, 23)

``modbus-read`` covers function codes 1-4 and 43/14 (device identification); ``modbus-write``
covers 5, 6, 15, 16, 22 and 23 (whose read part needs ``modbus-read``). Without ``unit`` a
scope covers every unit id; without ranges every address; with ranges only the address
spaces named (co coils, di discrete inputs, hr holding registers, ir input registers), each
range inclusive. A write scope without ``always`` covers a write only while a person has
armed a write window on the session. Pure: takes the write window as a flag; does not know
Modbus framing (``gateway.ot.modbus``) or who holds which grant (``rbac.policy``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from rbac.errors import PolicyNameError

READ, WRITE, BY_NUMBER = "modbus-read", "modbus-write", "modbus-fc"
PREFIX = "modbus-"
SPACES = {READ: ("co", "di", "hr", "ir"), WRITE: ("co", "hr")}
PUBLIC_FUNCTIONS = frozenset({1, 2, 3, 4, 5, 6, 15, 16, 22, 23})
MAX_ACTION_CHARS = 96  # the grants table's column
ILLEGAL_FUNCTION, ILLEGAL_DATA_ADDRESS = 1, 2
_RANGE_RE = re.compile(r"(co|di|hr|ir)=(0|[1-9][0-9]{0,4})-(0|[1-9][0-9]{0,4})")
_UNIT_RE = re.compile(r"unit=(0|[1-9][0-9]{0,2})")
_FC_RE = re.compile(r"modbus-fc:([1-9][0-9]{0,2})")


@dataclass(frozen=True)
class ModbusScope:
    """One Modbus action, parsed."""

    kind: str  # READ, WRITE or BY_NUMBER
    unit: int | None = None
    ranges: tuple[tuple[str, int, int], ...] = ()  # (space, first, last)
    always: bool = False
    function: int = 0  # BY_NUMBER only

    def reaches(self, unit: int) -> bool:
        return self.unit is None or self.unit == unit

    def covers(self, space: str, first: int, last: int) -> bool:
        """Whether the addresses ``first..last`` of ``space`` are inside this scope ("" is
        a request without addresses: device identification)."""
        if not self.ranges or not space:
            return True
        return any(s == space and lo <= first and last <= hi for s, lo, hi in self.ranges)


def is_modbus_action(action: str) -> bool:
    return action.startswith(PREFIX)


def parse_modbus_action(action: str) -> ModbusScope:
    """``action`` parsed, or ``PolicyNameError`` naming what is wrong with it."""
    if len(action) > MAX_ACTION_CHARS:
        raise PolicyNameError(f"modbus action longer than {MAX_ACTION_CHARS} characters")
    by_number = _FC_RE.fullmatch(action)
    if by_number:
        function = int(by_number.group(1))
        if function > 127 or function in PUBLIC_FUNCTIONS:
            raise PolicyNameError(
                f"{action!r}: modbus-fc takes a function code 1-127 other than 1-6, 15, 16, 22,"
                " 23 (those are modbus-read and modbus-write)"
            )
        return ModbusScope(BY_NUMBER, function=function)
    kind, *parts = action.split(":")
    if kind not in (READ, WRITE):
        raise PolicyNameError(f"{action[:MAX_ACTION_CHARS]!r} is not a modbus action")
    unit: int | None = None
    ranges: list[tuple[str, int, int]] = []
    always = False
    order = ["unit", *SPACES[kind], *(["always"] if kind == WRITE else [])]
    position = -1
    for part in parts:
        name = part.split("=", 1)[0]
        if name not in order or order.index(name) <= position:
            raise PolicyNameError(
                f"{action!r}: qualifiers of {kind} are, in this order and each at most once: "
                + ", ".join(order)
            )
        position = order.index(name)
        if name == "always":
            if part != "always":
                raise PolicyNameError(f"{action!r}: 'always' takes no value")
            always = True
        elif name == "unit":
            match = _UNIT_RE.fullmatch(part)
            if match is None or int(match.group(1)) > 255:
                raise PolicyNameError(f"{action!r}: unit is 0-255")
            unit = int(match.group(1))
        else:
            match = _RANGE_RE.fullmatch(part)
            if match is None:
                raise PolicyNameError(f"{action!r}: a range is {name}=FIRST-LAST")
            first, last = int(match.group(2)), int(match.group(3))
            if not first <= last <= 0xFFFF:
                raise PolicyNameError(f"{action!r}: a range is FIRST <= LAST within 0-65535")
            ranges.append((name, first, last))
    return ModbusScope(kind, unit, tuple(ranges), always)


@dataclass(frozen=True)
class Access:
    """One part of a request: reading or writing ``first..last`` of ``space`` on ``unit``
    (function 23 has two parts; device identification reads space "")."""

    kind: str  # READ or WRITE
    unit: int
    space: str = ""
    first: int = 0
    last: int = 0


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    exception: int = 0  # the Modbus exception code a refusal is answered with
    reason: str = ""
    needs_window: bool = False  # allowed only because a write window is open


def judge(
    scopes: Iterable[ModbusScope], function: int, accesses: list[Access], window_open: bool
) -> Verdict:
    """Whether ``scopes`` cover a request of ``function`` made of ``accesses`` (none for a
    function granted only by number). Refusals say Illegal Function when nothing covers the
    function on that unit (or a write needs a window that is not open), and Illegal Data
    Address when something does, but not at these addresses."""
    scopes = list(scopes)
    if not accesses:
        if any(s.kind == BY_NUMBER and s.function == function for s in scopes):
            return Verdict(True)
        return Verdict(False, ILLEGAL_FUNCTION, f"function {function} is not granted")
    windowed = False
    for access in accesses:
        reaching = [s for s in scopes if s.kind == access.kind and s.reaches(access.unit)]
        if not reaching:
            return Verdict(
                False, ILLEGAL_FUNCTION, f"no {access.kind} grant for unit {access.unit}"
            )
        covering = [s for s in reaching if s.covers(access.space, access.first, access.last)]
        if not covering:
            return Verdict(
                False,
                ILLEGAL_DATA_ADDRESS,
                f"{access.space} {access.first}-{access.last} on unit {access.unit} is outside"
                f" the granted {access.kind} ranges",
            )
        if access.kind == WRITE and not any(s.always for s in covering):
            if not window_open:
                return Verdict(False, ILLEGAL_FUNCTION, "no write window is armed")
            windowed = True
    return Verdict(True, needs_window=windowed)
