"""Line reader that runs before lark: directives, comments, continuations, heredoc bodies.

Mirrors moby/buildkit frontend/dockerfile/parser/parser.go ``Parse``:

* a UTF-8 BOM at the start is dropped; lines end at ``\\n`` and trailing ``\\r`` is removed;
* parser directives (``# escape=``, ``# syntax=``, ``# check=``) are only recognised before the
  first line that is not a directive (a blank line, a plain comment or an instruction ends them);
* comment lines start with ``#`` after optional leading whitespace; they are dropped, also
  inside a continuation, as are blank lines inside a continuation (their line numbers are kept in
  :attr:`LogicalLine.empty_continuation_lines` for BuildKit's ``NoEmptyContinuation`` warning);
* a line ending in the escape character (followed only by spaces/tabs) continues on the next line.
"""

from __future__ import annotations

import bisect
import re
from functools import partial
from typing import Iterator, NamedTuple

from .errors import DockerfileError

__all__ = ["LogicalLine", "LineReader", "KNOWN_DIRECTIVES"]

KNOWN_DIRECTIVES = ("syntax", "escape", "check")
_RE_DIRECTIVE = re.compile(r"^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*\Z")


class LogicalLine(NamedTuple):  # a named tuple: one is built per instruction, this is the cheapest
    """One instruction's text with continuations joined.

    ``segments`` maps offsets in ``text`` back to the source: ``(offset, line, col)`` means
    ``text[offset]`` is at ``line:col`` (1-based) and following characters follow on that line.
    ``empty_continuation_lines`` are the blank lines skipped inside the continuation.
    """

    text: str
    start_line: int
    end_line: int
    segments: tuple[tuple[int, int, int], ...]
    empty_continuation_lines: tuple[int, ...] = ()

    def position(self, offset: int) -> tuple[int, int]:
        segments = self.segments
        if len(segments) == 1:
            _, line, col = segments[0]
            return line, col + offset
        offsets = [seg[0] for seg in segments]
        i = max(bisect.bisect_right(offsets, offset) - 1, 0)
        start, line, col = segments[i]
        return line, col + (offset - start)


# LogicalLine(...) goes through a Python-level __new__; the tuple constructor does not (one call
# per instruction)
_new_line = partial(tuple.__new__, LogicalLine)


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


class LineReader:
    """Iterate logical lines with :meth:`logical_lines`; read heredoc bodies with :meth:`read_heredoc`."""

    def __init__(self, text: str, filename: str = "Dockerfile") -> None:
        if text.startswith("\ufeff"):
            text = text[1:]
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.filename = filename
        self.lines = [ln.rstrip("\r") for ln in lines] if "\r" in text else lines
        self.pos = 0  # index of the next physical line to read
        self.directives: dict[str, str] = {}
        self.escape = "\\"
        self._directives_done = False

    # -- helpers ---------------------------------------------------------------------------------
    def source_line(self, line: int) -> str:
        return self.lines[line - 1] if 1 <= line <= len(self.lines) else ""

    def error(self, line: int, col: int, message: str) -> DockerfileError:
        return DockerfileError(self.filename, line, col, message, self.source_line(line))

    def _directive(self, stripped: str, lineno: int) -> None:
        m = _RE_DIRECTIVE.match(stripped)
        if m is None or m.group(1).lower() not in KNOWN_DIRECTIVES:
            self._directives_done = True
            return
        key, value = m.group(1).lower(), m.group(2)
        col = len(self.lines[lineno - 1]) - len(stripped) + 1
        if key in self.directives:
            raise self.error(lineno, col, f"only one {key} parser directive can be used")
        if key == "escape":
            if value not in ("\\", "`"):
                raise self.error(lineno, col, f"invalid escape token {value!r} does not match ^[\\\\`]$")
            self.escape = value
        self.directives[key] = value

    def _trim_continuation(self, line: str) -> tuple[str, bool]:
        """``(line without the continuation marker, True if the instruction ends here)``.

        The marker is the escape character followed only by spaces and tabs.
        """
        trimmed = line.rstrip(" \t")
        if trimmed.endswith(self.escape):
            return trimmed[:-1], False
        return line, True

    # -- public ----------------------------------------------------------------------------------
    def logical_lines(self) -> Iterator[LogicalLine]:
        """The logical (instruction) lines, in order.

        A generator (its locals persist from one line to the next, cheaper than a call per line);
        each line is read from :attr:`pos` on, so what :meth:`read_heredoc` consumed is skipped.
        """
        lines = self.lines
        n = len(lines)
        escape = self.escape
        while self.pos < n:
            raw = lines[self.pos]
            self.pos = lineno = self.pos + 1
            stripped = raw.lstrip()
            if not self._directives_done:  # (any line that is not a directive ends them)
                self._directive(stripped, lineno)
                escape = self.escape
            if stripped[:1] == "#" or not stripped:
                continue
            col = len(raw) - len(stripped) + 1
            # _trim_continuation inlined: most lines do not continue, and this runs once per line
            trimmed = stripped.rstrip(" \t")
            if not trimmed.endswith(escape):
                yield _new_line((stripped, lineno, lineno, ((0, lineno, col),), ()))
                continue
            text = trimmed[:-1]
            segments = [(0, lineno, col)]
            empty: list[int] = []
            eol = False
            while not eol and self.pos < n:
                raw = lines[self.pos]
                self.pos += 1
                if _is_comment(raw):
                    continue
                if raw.strip() == "":
                    empty.append(self.pos)
                    continue
                piece, eol = self._trim_continuation(raw)
                segments.append((len(text), self.pos, 1))
                text += piece
            if text.strip() != "":
                yield LogicalLine(text, lineno, self.pos, tuple(segments), tuple(empty))

    def read_heredoc(self, name: str, chomp: bool) -> tuple[str, int] | None:
        """Read a heredoc body up to its terminator line.

        Returns ``(content, terminator_line)`` or ``None`` if the file ended first.
        """
        parts: list[str] = []
        while self.pos < len(self.lines):
            raw = self.lines[self.pos]
            self.pos += 1
            candidate = raw.lstrip("\t") if chomp else raw
            if candidate == name:
                return "".join(parts), self.pos
            parts.append(raw + "\n")
        return None
