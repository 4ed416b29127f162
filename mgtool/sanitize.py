"""The one sanitizer for text mgtool prints: user and metadata strings never reach a terminal
as control sequences.

Every C0 and C1 control character (and DEL) is shown as an escape (``\\x1b``, ``\\x07``,
``\\x9b``), so ESC [ (CSI: colours, clear screen), ESC ] (OSC: window titles, hyperlinks) and
ESC P (DCS) sequences are printed as harmless text. ``SafeConsole`` applies it to every string
a rich console renders (table cells and titles included); ``escape`` is for plain writes.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LAYOUT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # every control character but tab and newline
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape(text: str) -> str:
    """``text`` with every C0/C1 control character (and DEL) written as an escape: one line."""
    return _CONTROL.sub(lambda m: _NAMED.get(m[0]) or f"\\x{ord(m[0]):02x}", text)


def escape_keeping_lines(text: str) -> str:
    """``escape`` but for tab and newline, which lay text out and start no terminal sequence."""
    return _LAYOUT.sub(lambda m: _NAMED.get(m[0]) or f"\\x{ord(m[0]):02x}", text)


class SafeConsole(Console):
    """A rich console that escapes control characters in every string it renders (multi-line
    messages keep their lines)."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(escape_keeping_lines(text), **kwargs)


def safe_console(**kwargs: Any) -> SafeConsole:
    """The stderr console of every command: no markup, no highlighting, control characters escaped."""
    return SafeConsole(stderr=True, markup=False, highlight=False, **kwargs)
