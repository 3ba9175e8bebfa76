"""Printing for people: tables at their natural width (a name or a number is never cut off) and text
from data (class names, file names) shown as it is, never read as markup or terminal escapes."""

from __future__ import annotations

import contextlib
import re
import sys

from rich.console import Console
from rich.measure import Measurement
from rich.text import Text

# Control characters (a tab too, which cuts a table cell short; not the newline, which cells may hold) and
# the bidirectional overrides and isolates, which reorder what follows them on screen.
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _code(char: str) -> str:
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def plain(value) -> Text:
    """``value`` as literal text: rich markup is not interpreted and control characters (terminal escape
    sequences among them) are shown as visible codes such as ``\\x1b``."""
    return Text(_CONTROL.sub(lambda m: _code(m.group()), str(value)))


def one_line(text: str) -> str:
    """``text`` with control characters (newlines and terminal escapes among them) shown as codes."""
    return _CONTROL.sub(lambda m: _code(m.group()), str(text).replace("\n", " "))


def print_table(console: Console, table) -> None:
    """Print ``table`` at least as wide as it needs: on a narrow terminal the lines run long (the
    terminal wraps them) rather than folding or cutting a cell."""
    needed = Measurement.get(console, console.options.update(max_width=1 << 20), table).maximum
    if needed <= console.width:
        console.print(table)
        return
    width = console.width  # print() can only narrow the output, so widen the console for this table
    console.width = needed
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


_held: list[str] | None = None  # notices of a running command, said once it succeeds


def notice(line: str) -> None:
    """One line for the user on stderr, beside a command's output (what was assumed, what was fetched).
    Inside ``held_notices`` it waits for the command to succeed: a command that refuses its input says
    that in one line, not after what it assumed on the way."""
    if _held is not None:
        _held.append(one_line(line))
    else:
        print(one_line(line), file=sys.stderr)


@contextlib.contextmanager
def held_notices():
    global _held
    outer, _held = _held, []
    try:
        yield
        for line in _held:
            print(line, file=sys.stderr)
    finally:
        _held = outer
