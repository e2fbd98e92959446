"""Terminal screen interpreter for search: output bytes in, timestamped lines of text out.

A small, bounded model of a VT/xterm screen: a grid of cells, a cursor, printable text
written with overwrite semantics and deferred auto-wrap, CR/LF/BS/TAB, the CSI cursor and
erase commands (CUU/CUD/CUF/CUB/CNL/CPL/CHA/CUP/VPA/ED/EL/ICH/DCH/ECH/IL/DL/SU/SD), the
alternate screen, and ESC 7/8/D/E/M/c. SGR, OSC, DCS and the rest are parsed and ignored.
So ``abc\\b\\bXY`` yields ``aXY`` and a typo fixed with backspaces is indexed as typed.

A row is *emitted* as a :class:`TextLine` when the cursor leaves it (line feed, cursor
movement), when it scrolls off the top, when an erase-display or screen switch clears it,
and at :meth:`Screen.finish` — but only if it changed since it was last emitted. Its
``offset_us`` is the time of the first change since then (when the line began to appear).
Erase-in-line never emits, so characters a line editor rubs out are not indexed.

Memory is bounded whatever the input: the grid is at most ``max_cols`` x ``max_rows``,
escape sequences keep at most a few dozen parameter characters, string sequences (OSC, DCS)
keep nothing. Each character is one cell (wide and combining characters are not measured).
Does no I/O, knows nothing about the container or the database.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from recordings.events import Event
from recordings.terminal import DEFAULT_SIZE, TerminalEvent, parse_resize

MAX_COLS = 512
MAX_ROWS = 256
_MAX_PARAM_CHARS = 64
_MAX_PARAMS = 16
_MAX_PARAM_VALUE = 9999
_TAB = 8

# Runs of printable characters (anything but C0, DEL and C1 controls) are written at once.
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f-\x9f]+")

# A whole CSI sequence with bounded parameters (longer ones take the slow path and are
# dropped there); C0 controls inside a sequence also take the slow path.
_WHOLE_CSI = re.compile(r"\x1b\[([\x20-\x3f]{0,64})([\x40-\x7e])")

# Controls that change nothing on the screen in the ground state (see ``_control``): a run
# of them is skipped at once. Binary output (``cat /dev/zero``) is mostly these, one Python
# step per byte before: 64 MiB of NULs took ~19 s of the indexer's CPU.
_INERT = re.compile(r"[\x00-\x07\x0e-\x1a\x1c-\x1f\x7f-\x8f\x91-\x97\x99\x9a\x9c]+")

_GROUND, _ESC, _ESC_INTER, _CSI, _STRING, _STRING_ESC = range(6)


@dataclass(frozen=True, slots=True)
class TextLine:
    """One line of screen text and when it began to appear (µs since recording start)."""

    offset_us: int
    text: str


class _Row:
    __slots__ = ("cells", "dirty", "since_us")

    def __init__(self, cols: int) -> None:
        self.cells = [" "] * cols
        self.dirty = False
        self.since_us = 0

    def touch(self, now_us: int) -> None:
        if not self.dirty:
            self.dirty = True
            self.since_us = now_us


class Screen:
    """Feed output with :meth:`feed`; collect emitted lines; call :meth:`finish` at the end."""

    def __init__(
        self,
        cols: int = DEFAULT_SIZE[0],
        rows: int = DEFAULT_SIZE[1],
        *,
        max_cols: int = MAX_COLS,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self._max_cols = max(1, max_cols)
        self._max_rows = max(1, max_rows)
        self._cols = self._clamp_cols(cols)
        self._rows = self._clamp_rows(rows)
        self._grid = [_Row(self._cols) for _ in range(self._rows)]
        self._x = 0
        self._y = 0
        self._saved = (0, 0)
        self._wrap_pending = False
        self._now = 0
        self._out: list[TextLine] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._state = _GROUND
        self._params = ""
        self._params_overflow = False
        self._main: tuple[list[_Row], int, int] | None = None

    # -- public ------------------------------------------------------------------------

    @property
    def size(self) -> tuple[int, int]:
        return self._cols, self._rows

    def feed(self, offset_us: int, data: bytes) -> list[TextLine]:
        """Interpret ``data`` written at ``offset_us``; return the lines it completed."""
        self._now = max(0, offset_us)
        self._interpret(self._decoder.decode(data))
        return self._take()

    def resize(self, offset_us: int, cols: int, rows: int) -> list[TextLine]:
        """Emit changed rows, then resize the grid (content kept where it still fits)."""
        self._now = max(0, offset_us)
        self._mode("1049", False)  # a resized alternate page is redrawn anyway
        self._emit_rows(0, self._rows)
        cols, rows = self._clamp_cols(cols), self._clamp_rows(rows)
        for row in self._grid:
            row.cells = (row.cells + [" "] * cols)[:cols]
        if rows < self._rows:
            # Keep the rows nearest the cursor's bottom, as terminals do when shrinking.
            drop = max(0, min(self._y + 1, self._rows) - rows)
            self._grid = self._grid[drop : drop + rows]
            self._y -= drop
        self._grid += [_Row(cols) for _ in range(rows - len(self._grid))]
        self._cols, self._rows = cols, rows
        self._x = min(self._x, cols - 1)
        self._y = min(max(self._y, 0), rows - 1)
        self._wrap_pending = False
        return self._take()

    def finish(self) -> list[TextLine]:
        """Flush a trailing partial character and emit every changed row."""
        self._interpret(self._decoder.decode(b"", final=True))
        self._mode("1049", False)
        self._emit_rows(0, self._rows)
        return self._take()

    # -- helpers -----------------------------------------------------------------------

    def _clamp_cols(self, cols: int) -> int:
        return min(max(1, cols), self._max_cols)

    def _clamp_rows(self, rows: int) -> int:
        return min(max(1, rows), self._max_rows)

    def _take(self) -> list[TextLine]:
        out, self._out = self._out, []
        return out

    def _emit(self, row: _Row) -> None:
        if row.dirty:
            row.dirty = False
            text = "".join(row.cells).rstrip()
            if text:
                self._out.append(TextLine(row.since_us, text))

    def _emit_rows(self, start: int, stop: int) -> None:
        for row in self._grid[start:stop]:
            self._emit(row)

    def _move_to(self, x: int, y: int) -> None:
        y = min(max(y, 0), self._rows - 1)
        if y != self._y:
            self._emit(self._grid[self._y])
        self._x = min(max(x, 0), self._cols - 1)
        self._y = y
        self._wrap_pending = False

    def _scroll_up(self, count: int) -> None:
        for _ in range(min(count, self._rows)):
            self._emit(self._grid.pop(0))
            self._grid.append(_Row(self._cols))

    def _scroll_down(self, count: int) -> None:
        for _ in range(min(count, self._rows)):
            self._emit(self._grid.pop())
            self._grid.insert(0, _Row(self._cols))

    def _line_feed(self) -> None:
        self._emit(self._grid[self._y])
        if self._y == self._rows - 1:
            self._scroll_up(1)
        else:
            self._y += 1
        self._wrap_pending = False

    def _reverse_index(self) -> None:
        if self._y == 0:
            self._scroll_down(1)
        else:
            self._move_to(self._x, self._y - 1)

    def _clear_cells(self, row: _Row, start: int, stop: int) -> None:
        blank = [" "] * (stop - start)
        if start < stop and row.cells[start:stop] != blank:
            row.touch(self._now)
            row.cells[start:stop] = blank

    def _erase_rows(self, start: int, stop: int) -> None:
        """Erase-display semantics: what is cleared is emitted first, so it stays findable."""
        self._emit_rows(start, stop)
        for row in self._grid[start:stop]:
            row.cells = [" "] * self._cols

    # -- interpretation ----------------------------------------------------------------

    def _interpret(self, text: str) -> None:
        pos, end = 0, len(text)
        while pos < end:
            if self._state == _GROUND:
                run = _PRINTABLE.match(text, pos)
                if run is not None:
                    self._write(run.group())
                    pos = run.end()
                    continue
                csi = _WHOLE_CSI.match(text, pos)
                if csi is not None:  # fast path for a complete CSI sequence in one feed
                    if csi.group(2) != "m":  # SGR (colours) is the commonest and a no-op
                        self._csi(csi.group(2), csi.group(1))
                    pos = csi.end()
                    continue
                inert = _INERT.match(text, pos)
                if inert is not None:
                    pos = inert.end()
                    continue
            self._step(text[pos])
            pos += 1

    def _write(self, run: str) -> None:
        while run:
            if self._wrap_pending:
                self._x = 0
                self._line_feed()
            row = self._grid[self._y]
            piece = run[: self._cols - self._x]
            run = run[len(piece) :]
            stop = self._x + len(piece)
            if row.cells[self._x : stop] != list(piece):
                row.touch(self._now)
                row.cells[self._x : stop] = piece
            if stop >= self._cols:
                self._x = self._cols - 1
                self._wrap_pending = True
            else:
                self._x = stop

    def _step(self, char: str) -> None:
        state = self._state
        if state == _GROUND:
            self._control(char)
        elif state == _ESC:
            self._escape(char)
        elif state == _ESC_INTER:
            if not "\x20" <= char <= "\x2f":
                self._state = _GROUND  # final byte of e.g. ESC ( B: a charset, ignored
        elif state == _CSI:
            self._csi_char(char)
        elif state == _STRING:
            if char == "\x07" or char == "\x9c":
                self._state = _GROUND
            elif char == "\x1b":
                self._state = _STRING_ESC
        else:  # _STRING_ESC: ESC \ ends the string; any other ESC starts a new sequence
            self._state = _GROUND if char == "\\" else _ESC
            if char != "\\":
                self._escape(char)

    def _control(self, char: str) -> None:
        if char == "\r":
            self._x = 0
            self._wrap_pending = False
        elif char in "\n\x0b\x0c":
            self._line_feed()
        elif char == "\b":
            self._x = max(0, self._x - 1)
            self._wrap_pending = False
        elif char == "\t":
            self._x = min(self._cols - 1, (self._x // _TAB + 1) * _TAB)
            self._wrap_pending = False
        elif char == "\x1b":
            self._state = _ESC
        elif char == "\x9b":
            self._start_csi()
        elif char in "\x90\x98\x9d\x9e\x9f":  # C1 DCS, SOS, OSC, PM, APC
            self._state = _STRING
        # Anything else (BEL, SO/SI, NUL, other C1) does not change the text.

    def _start_csi(self) -> None:
        self._state = _CSI
        self._params = ""
        self._params_overflow = False

    def _escape(self, char: str) -> None:
        self._state = _GROUND
        if char == "[":
            self._start_csi()
        elif char in "]PX^_":
            self._state = _STRING
        elif "\x20" <= char <= "\x2f":
            self._state = _ESC_INTER
        elif char == "7":
            self._saved = (self._x, self._y)
        elif char == "8":
            self._move_to(*self._saved)
        elif char == "D":
            self._line_feed()
        elif char == "E":
            self._x = 0
            self._line_feed()
        elif char == "M":
            self._reverse_index()
        elif char == "c":
            self._erase_rows(0, self._rows)
            self._move_to(0, 0)
        elif char == "\x1b":
            self._state = _ESC

    def _csi_char(self, char: str) -> None:
        if "\x30" <= char <= "\x3f" or "\x20" <= char <= "\x2f":
            if len(self._params) < _MAX_PARAM_CHARS:
                self._params += char
            else:
                self._params_overflow = True
        elif "\x40" <= char <= "\x7e":
            self._state = _GROUND
            if not self._params_overflow:
                self._csi(char, self._params)
        elif char == "\x1b":
            self._state = _ESC  # an aborted sequence; ESC starts the next one
        elif char in "\x18\x1a":
            self._state = _GROUND  # CAN / SUB cancel the sequence
        else:
            self._control(char)  # C0 controls inside CSI act immediately, as in xterm

    def _csi(self, final: str, raw: str) -> None:
        private = raw[:1] in ("?", ">", "<", "=")
        if private or any("\x20" <= c <= "\x2f" for c in raw):
            if private and final in "hl":
                self._mode(raw[1:], final == "h")
            return
        params = _parse_params(raw)
        first = params[0] if params else 0
        n = max(1, first)
        x, y = self._x, self._y
        if final == "A":
            self._move_to(x, y - n)
        elif final in "Be":
            self._move_to(x, y + n)
        elif final in "Ca":
            self._move_to(x + n, y)
        elif final == "D":
            self._move_to(x - n, y)
        elif final == "E":
            self._move_to(0, y + n)
        elif final == "F":
            self._move_to(0, y - n)
        elif final in "G`":
            self._move_to(n - 1, y)
        elif final in "Hf":
            col = params[1] if len(params) > 1 else 0
            self._move_to(max(1, col) - 1, n - 1)
        elif final == "d":
            self._move_to(x, n - 1)
        elif final == "J":
            self._erase_display(first)
        elif final == "K":
            self._erase_line(first)
        else:
            self._edit(final, n)

    def _edit(self, final: str, n: int) -> None:
        row, x = self._grid[self._y], self._x
        if final == "@":  # ICH: insert blanks, the rest of the line moves right
            row.touch(self._now)
            row.cells[x:x] = [" "] * min(n, self._cols - x)
            del row.cells[self._cols :]
        elif final == "P":  # DCH: delete characters, the rest moves left
            count = min(n, self._cols - x)
            if row.cells[x:] != row.cells[x + count :] + [" "] * count:
                row.touch(self._now)
            del row.cells[x : x + count]
            row.cells += [" "] * count
        elif final == "X":  # ECH
            self._clear_cells(row, x, min(self._cols, x + n))
        elif final in "LM":  # IL / DL at the cursor row
            count = min(n, self._rows - self._y)
            if final == "L":
                for _ in range(count):
                    self._emit(self._grid.pop())
                    self._grid.insert(self._y, _Row(self._cols))
            else:
                for _ in range(count):
                    self._emit(self._grid.pop(self._y))
                    self._grid.append(_Row(self._cols))
            self._x = 0
        elif final == "S":
            self._scroll_up(n)
        elif final == "T":
            self._scroll_down(n)
        # SGR (m), scroll margins (r), device queries and the rest do not change the text.

    def _erase_display(self, mode: int) -> None:
        # The cursor row is treated like erase-in-line (line editors use ED 0 to redraw);
        # whole rows that are cleared are emitted first.
        if mode == 0:
            self._erase_line(0)
            self._erase_rows(self._y + 1, self._rows)
        elif mode == 1:
            self._erase_line(1)
            self._erase_rows(0, self._y)
        elif mode in (2, 3):
            self._erase_rows(0, self._rows)

    def _erase_line(self, mode: int) -> None:
        row = self._grid[self._y]
        if mode == 0:
            self._clear_cells(row, self._x, self._cols)
        elif mode == 1:
            self._clear_cells(row, 0, self._x + 1)
        elif mode == 2:
            self._clear_cells(row, 0, self._cols)

    def _mode(self, raw: str, enable: bool) -> None:
        # The alternate screen is another page: what it showed is emitted when it is left,
        # and the main page (kept aside, same bounds) comes back with its cursor.
        if not {"47", "1047", "1049"} & set(raw.split(";")):
            return
        if enable and self._main is None:
            self._emit_rows(0, self._rows)
            self._main = (self._grid, self._x, self._y)
            self._grid = [_Row(self._cols) for _ in range(self._rows)]
            self._move_to(0, 0)
        elif not enable and self._main is not None:
            self._emit_rows(0, self._rows)
            grid, x, y = self._main
            self._main = None
            self._grid = grid
            self._x, self._y = min(x, self._cols - 1), min(y, self._rows - 1)
            self._wrap_pending = False


def _parse_params(raw: str) -> list[int]:
    params: list[int] = []
    for part in raw.replace(":", ";").split(";")[:_MAX_PARAMS]:
        digits = part if part.isascii() and part.isdigit() else ""
        params.append(min(int(digits), _MAX_PARAM_VALUE) if digits else 0)
    return params


def screen_lines(
    events: Iterable[Event],
    cols: int = DEFAULT_SIZE[0],
    rows: int = DEFAULT_SIZE[1],
    *,
    max_output_bytes: int | None = None,
) -> Iterator[TextLine]:
    """Lines of text from a terminal recording's events (output and resize; input ignored).

    With ``max_output_bytes``, output beyond that many bytes is not interpreted (the index
    of a huge recording is cut rather than unbounded in time); events are still consumed.
    """
    screen = Screen(cols, rows)
    budget = max_output_bytes
    for event in events:
        if event.type == TerminalEvent.OUTPUT:
            payload = event.payload
            if budget is not None:
                payload = payload[: max(0, budget)]
                budget -= len(payload)
                if not payload:
                    continue  # keep consuming: the caller's reader verifies to the end
            yield from screen.feed(event.offset_us, payload)
        elif event.type == TerminalEvent.RESIZE:
            try:
                new_cols, new_rows = parse_resize(event.payload)
            except ValueError:
                continue
            yield from screen.resize(event.offset_us, new_cols, new_rows)
    yield from screen.finish()
