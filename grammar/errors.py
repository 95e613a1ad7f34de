"""The one exception type the Dockerfile parser raises."""

from __future__ import annotations

__all__ = ["DockerfileError"]


class DockerfileError(Exception):
    """A Dockerfile could not be parsed.

    ``str(err)`` is ``"<file>:<line>:<col>: <message>"`` followed by the offending source line and a
    caret line pointing at ``col`` (1-based).  ``line`` is 1-based; ``line == 0`` never happens: an
    empty file is reported at line 1, col 1.
    """

    def __init__(self, filename: str, line: int, col: int, message: str, source_line: str = "") -> None:
        self.filename = filename
        self.line = line
        self.col = col
        self.message = message
        self.source_line = source_line
        super().__init__(filename, line, col, message, source_line)

    def __str__(self) -> str:
        head = f"{self.filename}:{self.line}:{self.col}: {self.message}"
        src = self.source_line
        if not src.strip():
            return head  # nothing to point at (an empty file, a missing line)
        # keep tabs in the caret's indentation so it lines up under tab-indented source
        pad = "".join("\t" if c == "\t" else " " for c in src[: max(self.col - 1, 0)])
        pad += " " * max(self.col - 1 - len(src), 0)
        return f"{head}\n{src}\n{pad}^"

    def __repr__(self) -> str:
        return (
            f"DockerfileError(filename={self.filename!r}, line={self.line}, col={self.col}, "
            f"message={self.message!r})"
        )
