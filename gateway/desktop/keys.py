"""X keysyms (RFB KeyEvent keys) as a person reads them: a printable character, or a name.

The desktop player's key track shows what was typed: ``keysym_text(0x61) == "a"``,
``keysym_text(0xFF0D) == "Return"``. Latin-1 keysyms are their character, Unicode keysyms
(``0x01000000 | code point``) theirs; the named table covers the keys a keyboard has. Does
not track modifiers or keyboard layouts (a key track shows keys, not the resulting text).
"""

from __future__ import annotations

import unicodedata

NAMED: dict[int, str] = {
    0xFF08: "BackSpace",
    0xFF09: "Tab",
    0xFF0D: "Return",
    0xFF13: "Pause",
    0xFF14: "Scroll_Lock",
    0xFF1B: "Escape",
    0xFF50: "Home",
    0xFF51: "Left",
    0xFF52: "Up",
    0xFF53: "Right",
    0xFF54: "Down",
    0xFF55: "Page_Up",
    0xFF56: "Page_Down",
    0xFF57: "End",
    0xFF61: "Print",
    0xFF63: "Insert",
    0xFF67: "Menu",
    0xFF7F: "Num_Lock",
    0xFF8D: "KP_Enter",
    0xFFAA: "KP_Multiply",
    0xFFAB: "KP_Add",
    0xFFAD: "KP_Subtract",
    0xFFAE: "KP_Decimal",
    0xFFAF: "KP_Divide",
    **{0xFFB0 + n: f"KP_{n}" for n in range(10)},
    **{0xFFBE + n: f"F{n + 1}" for n in range(12)},
    0xFFE1: "Shift",
    0xFFE2: "Shift",
    0xFFE3: "Ctrl",
    0xFFE4: "Ctrl",
    0xFFE5: "Caps_Lock",
    0xFFE7: "Meta",
    0xFFE8: "Meta",
    0xFFE9: "Alt",
    0xFFEA: "Alt",
    0xFFEB: "Super",
    0xFFEC: "Super",
    0xFE03: "AltGr",
    0xFFFF: "Delete",
}
MODIFIERS = frozenset({"Shift", "Ctrl", "Alt", "Meta", "Super", "AltGr", "Caps_Lock"})


def keysym_text(keysym: int) -> str:
    """One character for a printable key, else the key's name (``0x....`` when unknown)."""
    if keysym in NAMED:
        return NAMED[keysym]
    code = None
    if 0x20 <= keysym <= 0x7E or 0xA0 <= keysym <= 0xFF:
        code = keysym
    elif 0x01000100 <= keysym <= 0x0110FFFF:
        code = keysym & 0x00FFFFFF
    if code is not None and not unicodedata.category(chr(code)).startswith("C"):
        return chr(code)
    return f"0x{keysym:04x}"


def printable(text: str) -> bool:
    """Whether ``keysym_text`` gave a character (rather than a key's name)."""
    return len(text) == 1
