"""The one exception type the Dockerfile parser raises."""

from __future__ import annotations

__all__ = ["DockerfileError", "caret_padding", "printable"]

# Bidirectional embedding/override/isolate controls: they reorder how a terminal shows the line.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape_char(c: str) -> str:
    """``c`` as shown in a message: a control character (C0, DEL, C1; not tab), a line or
    paragraph separator or a bidi control as Go's %q writes it (``\\x00``, ``\\u2028``), else itself."""
    import unicodedata

    if c == "\t" or not (unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI_CONTROLS):
        return c
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x80 else f"\\u{n:04x}"


def printable(text: str) -> str:
    """``text`` safe to echo on a terminal: control characters (but tab), line and paragraph
    separators and bidi controls escaped (``\\x00``, ``\\x1b``, ``\\u0085``); ordinary UTF-8 text,
    tabs included, unchanged.  Newlines are escaped too: pass one line at a time."""
    if text.isprintable():  # the common case, cheaply (tab is not "printable": it takes the slow path)
        return text
    return "".join(_escape_char(c) for c in text)


def caret_padding(src: str, col: int) -> str:
    """What goes before a ``^`` that points at column ``col`` (1-based) of ``printable(src)``:
    tabs kept (so that the caret lines up under tab-indented source), an escaped character as
    wide as its escape, and spaces past the end of ``src``."""
    pad = "".join("\t" if c == "\t" else " " * len(_escape_char(c)) for c in src[: max(col - 1, 0)])
    return pad + " " * max(col - 1 - len(src), 0)


class DockerfileError(Exception):
    """A Dockerfile could not be parsed.

    ``str(err)`` is ``"<file>:<line>:<col>: <message>"`` followed by the offending source line and a
    caret line pointing at ``col`` (1-based).  ``line`` is 1-based; ``line == 0`` never happens: an
    empty file is reported at line 1, col 1.  Control characters of the Dockerfile (a binary file
    read as one) are escaped in ``str(err)`` (see :func:`printable`); ``message`` and
    ``source_line`` keep the raw text.
    """

    def __init__(self, filename: str, line: int, col: int, message: str, source_line: str = "") -> None:
        self.filename = filename
        self.line = line
        self.col = col
        self.message = message
        self.source_line = source_line
        super().__init__(filename, line, col, message, source_line)

    @property
    def headline(self) -> str:
        """The first line of ``str(err)``: ``"<file>:<line>:<col>: <message>"``, escaped."""
        return f"{self.filename}:{self.line}:{self.col}: {printable(self.message)}"

    def __str__(self) -> str:
        head = self.headline
        src = self.source_line
        if not src.strip():
            return head  # nothing to point at (an empty file, a missing line)
        return f"{head}\n{printable(src)}\n{caret_padding(src, self.col)}^"

    def __repr__(self) -> str:
        return (
            f"DockerfileError(filename={self.filename!r}, line={self.line}, col={self.col}, "
            f"message={self.message!r})"
        )
