"""Line reader that runs before lark: directives, comments, continuations, heredoc bodies.

Mirrors moby/buildkit frontend/dockerfile/parser/parser.go ``Parse``:

* a UTF-8 BOM at the start is dropped; lines end at ``\\n`` and trailing ``\\r`` is removed;
* parser directives (``# escape=``, ``# syntax=``, ``# check=``) are only recognised before the
  first line that is not a directive (a blank line, a plain comment or an instruction ends them);
* comment lines start with ``#`` after optional leading whitespace; they are dropped, also
  inside a continuation, as are blank lines inside a continuation;
* a line ending in the escape character (followed only by spaces/tabs) continues on the next line.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from .errors import DockerfileError

__all__ = ["LogicalLine", "LineReader", "KNOWN_DIRECTIVES"]

KNOWN_DIRECTIVES = ("syntax", "escape", "check")
_RE_DIRECTIVE = re.compile(r"^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*\Z")


@dataclass(frozen=True)
class LogicalLine:
    """One instruction's text with continuations joined.

    ``segments`` maps offsets in ``text`` back to the source: ``(offset, line, col)`` means
    ``text[offset]`` is at ``line:col`` (1-based) and following characters follow on that line.
    """

    text: str
    start_line: int
    end_line: int
    segments: tuple[tuple[int, int, int], ...]

    def position(self, offset: int) -> tuple[int, int]:
        offsets = [seg[0] for seg in self.segments]
        i = max(bisect.bisect_right(offsets, offset) - 1, 0)
        start, line, col = self.segments[i]
        return line, col + (offset - start)


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


class LineReader:
    """Iterate logical lines with :meth:`next_line`; read heredoc bodies with :meth:`read_heredoc`."""

    def __init__(self, text: str, filename: str = "Dockerfile") -> None:
        if text.startswith("\ufeff"):
            text = text[1:]
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.filename = filename
        self.lines = [ln.rstrip("\r") for ln in lines]
        self.pos = 0  # index of the next physical line to read
        self.directives: dict[str, str] = {}
        self.escape = "\\"
        self._directives_done = False
        self._set_escape("\\")

    # -- helpers ---------------------------------------------------------------------------------
    def source_line(self, line: int) -> str:
        return self.lines[line - 1] if 1 <= line <= len(self.lines) else ""

    def error(self, line: int, col: int, message: str) -> DockerfileError:
        return DockerfileError(self.filename, line, col, message, self.source_line(line))

    def _set_escape(self, esc: str) -> None:
        self.escape = esc
        self._continuation = re.compile(re.escape(esc) + r"[ \t]*\Z")

    def _directive(self, stripped: str, lineno: int) -> None:
        if self._directives_done:
            return
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
            self._set_escape(value)
        self.directives[key] = value

    def _trim_continuation(self, line: str) -> tuple[str, bool]:
        m = self._continuation.search(line)
        if m is not None:
            return line[: m.start()], False
        return line, True

    # -- public ----------------------------------------------------------------------------------
    def next_line(self) -> LogicalLine | None:
        """Next logical (instruction) line, or ``None`` at end of file."""
        while self.pos < len(self.lines):
            raw = self.lines[self.pos]
            self.pos += 1
            lineno = self.pos
            stripped = raw.lstrip()
            self._directive(stripped, lineno)
            if stripped.startswith("#"):
                continue
            self._directives_done = True
            col = len(raw) - len(stripped) + 1
            text, eol = self._trim_continuation(stripped)
            if eol and text.strip() == "":
                continue
            segments = [(0, lineno, col)]
            while not eol and self.pos < len(self.lines):
                raw = self.lines[self.pos]
                self.pos += 1
                if _is_comment(raw) or raw.strip() == "":
                    continue
                piece, eol = self._trim_continuation(raw)
                segments.append((len(text), self.pos, 1))
                text += piece
            if text.strip() == "":
                continue
            return LogicalLine(text, lineno, self.pos, tuple(segments))
        return None

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
