"""Modbus actions: the grammar (one spelling per meaning) and what a set of them covers."""

from __future__ import annotations

import pytest

from rbac.errors import PolicyNameError
from rbac.modbus import READ, WRITE, Access, judge, parse_modbus_action
from rbac.names import check_action


@pytest.mark.parametrize(
    "action",
    [
        "modbus-read",
        "modbus-write",
        "modbus-read:unit=0",
        "modbus-read:unit=255:co=0-15:di=0-0:hr=100-119:ir=0-65535",
        "modbus-write:unit=1:hr=100-119",
        "modbus-write:co=0-7:hr=0-9:always",
        "modbus-write:always",
        "modbus-fc:8",
        "modbus-fc:43",
        "modbus-fc:127",
    ],
)
def test_valid_modbus_actions(action: str) -> None:
    assert check_action(action) == action


@pytest.mark.parametrize(
    "action,why",
    [
        ("modbus-read:always", "in this order"),  # reads need no window
        ("modbus-write:di=0-1", "in this order"),  # discrete inputs cannot be written
        ("modbus-write:hr=100-119:unit=1", "in this order"),  # not canonical
        ("modbus-write:unit=1:unit=1", "in this order"),
        ("modbus-write:unit=256", "unit is 0-255"),
        ("modbus-write:unit=01", "unit is 0-255"),
        ("modbus-write:hr=119-100", "FIRST <= LAST"),
        ("modbus-write:hr=0-65536", "FIRST <= LAST"),
        ("modbus-write:hr=1", "FIRST-LAST"),
        ("modbus-write:always=1", "no value"),
        ("modbus-fc:3", "other than"),
        ("modbus-fc:128", "other than"),
        ("modbus-fc:0", "not a modbus action"),
        ("modbus-erase", "not a modbus action"),
        ("modbus-read:" + "co=0-1" * 20, "longer than"),
    ],
)
def test_invalid_modbus_actions_say_why(action: str, why: str) -> None:
    with pytest.raises(PolicyNameError, match=why):
        check_action(action)


def scopes(*actions: str) -> list:  # type: ignore[type-arg]
    return [parse_modbus_action(a) for a in actions]


HR100 = [Access(WRITE, 1, "hr", 100, 100)]


@pytest.mark.parametrize(
    "granted,function,accesses,window,allowed,code",
    [
        (["modbus-read"], 3, [Access(READ, 1, "hr", 0, 124)], False, True, 0),
        (["modbus-read"], 43, [Access(READ, 9)], False, True, 0),
        (["modbus-read"], 6, HR100, True, False, 1),
        (["modbus-write:unit=1:hr=100-119"], 6, HR100, False, False, 1),  # no window
        (["modbus-write:unit=1:hr=100-119"], 6, HR100, True, True, 0),
        (["modbus-write:unit=1:hr=100-119"], 6, [Access(WRITE, 1, "hr", 200, 200)], True,
         False, 2),
        (["modbus-write:unit=1:hr=100-119"], 16, [Access(WRITE, 1, "hr", 118, 120)], True,
         False, 2),  # runs past the range
        (["modbus-write:unit=1:hr=100-119"], 5, [Access(WRITE, 1, "co", 100, 100)], True,
         False, 2),  # another address space
        (["modbus-write:unit=1:hr=100-119"], 6, [Access(WRITE, 2, "hr", 100, 100)], True,
         False, 1),  # another unit
        (["modbus-write:hr=100-119:always"], 6, HR100, False, True, 0),
        (["modbus-write:hr=100-119:always", "modbus-write"], 6,
         [Access(WRITE, 1, "hr", 300, 300)], False, False, 1),  # only the windowed one covers
        (["modbus-write"], 23, [Access(READ, 1, "hr", 0, 9), Access(WRITE, 1, "hr", 5, 5)],
         True, False, 1),  # 23 reads too
        (["modbus-read:hr=0-9", "modbus-write"], 23,
         [Access(READ, 1, "hr", 0, 9), Access(WRITE, 1, "hr", 5, 5)], True, True, 0),
        (["modbus-read"], 8, [], True, False, 1),  # diagnostics: by number only
        (["modbus-fc:8"], 8, [], False, True, 0),
        ([], 3, [Access(READ, 1, "hr", 0, 0)], True, False, 1),
    ],
)  # fmt: skip
def test_judge(
    granted: list[str], function: int, accesses: list[Access], window: bool, allowed: bool,
    code: int,
) -> None:  # fmt: skip
    verdict = judge(scopes(*granted), function, accesses, window)
    assert (verdict.allowed, verdict.exception) == (allowed, code), verdict.reason
