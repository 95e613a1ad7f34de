"""A pure-Python ``.dockerignore`` matcher with Docker/BuildKit semantics.

It follows moby/patternmatcher (``ignorefile.ReadAll`` to read the file,
``New`` to clean and validate the patterns, ``Pattern.compile`` to turn them
into regular expressions and ``MatchesOrParentMatches`` to decide):

* a line whose first character is ``#`` is a comment (checked *before*
  whitespace is trimmed, as ReadAll does); blank lines are ignored;
* a leading ``!`` (optionally followed by spaces) makes an exception;
* each pattern is ``filepath.Clean``-ed and a leading ``/`` is dropped, so
  ``/foo/`` and ``foo`` are the same pattern;
* ``*`` matches any run of characters except ``/``, ``?`` one character
  except ``/``, ``[...]`` / ``[^...]`` a character class (as in Go, ``!`` is
  *not* a negation inside a class, and a class can match ``/``), ``\\x``
  the literal ``x``; ``**`` matches any number of directories, zero included;
* a pattern that matches a parent directory of a path matches the path;
* the last pattern that matches a path decides whether it is excluded.

The module does no I/O; every pattern is compiled once, in :meth:`DockerIgnore.parse`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Pattern", "DockerIgnore"]

_EXACT, _PREFIX, _SUFFIX, _REGEX = range(4)

# Characters Go's unicode.IsSpace does not count as space but str.isspace does.
_NOT_GO_SPACE = frozenset("\x1c\x1d\x1e\x1f")


def _go_trim_space(s: str) -> str:
    start, end = 0, len(s)
    while start < end and s[start].isspace() and s[start] not in _NOT_GO_SPACE:
        start += 1
    while end > start and s[end - 1].isspace() and s[end - 1] not in _NOT_GO_SPACE:
        end -= 1
    return s[start:end]


def _clean(path: str) -> str:
    """Go's ``path/filepath.Clean`` for '/'-separated paths."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for comp in path.split("/"):
        if comp == "" or comp == ".":
            continue
        if comp == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(comp)
    out = "/".join(parts)
    if rooted:
        return "/" + out
    return out or "."


# --------------------------------------------------------------------------
# Syntax checking, as filepath.Match(pattern, ".") does.


def _get_esc(p: str, i: int) -> tuple[str, int]:
    """One (possibly escaped) character of a class; returns it and the next index."""
    n = len(p)
    if i >= n or p[i] == "-" or p[i] == "]":
        raise ValueError("syntax error in pattern")
    if p[i] == "\\":
        i += 1
        if i >= n:
            raise ValueError("syntax error in pattern")
    ch = p[i]
    i += 1
    if i >= n:  # a class must be closed
        raise ValueError("syntax error in pattern")
    return ch, i


def _parse_class(p: str, i: int) -> tuple[bool, list[tuple[str, str]], int]:
    """Parse a class whose '[' is at p[i-1]; returns (negated, ranges, next index)."""
    negated = False
    if i < len(p) and p[i] == "^":
        negated = True
        i += 1
    ranges: list[tuple[str, str]] = []
    while True:
        if i < len(p) and p[i] == "]" and ranges:
            return negated, ranges, i + 1
        lo, i = _get_esc(p, i)
        hi = lo
        if p[i] == "-":
            hi, i = _get_esc(p, i + 1)
        ranges.append((lo, hi))


def _check_syntax(p: str) -> None:
    """Raise ValueError where Go's filepath.Match would return ErrBadPattern."""
    i, n = 0, len(p)
    while i < n:
        ch = p[i]
        if ch == "\\":
            if i + 1 >= n:
                raise ValueError("syntax error in pattern")
            i += 2
        elif ch == "[":
            _, _, i = _parse_class(p, i + 1)
        else:
            i += 1


# --------------------------------------------------------------------------
# Translation to a regular expression (patternmatcher's Pattern.compile).


def _class_regex(negated: bool, ranges: list[tuple[str, str]]) -> str:
    items = []
    for lo, hi in ranges:
        if lo > hi:
            raise ValueError(f"invalid character class range {lo}-{hi}")
        items.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
    return "[" + ("^" if negated else "") + "".join(items) + "]"


def _translate(p: str) -> tuple[int, str]:
    """Return (match kind, regex body) for a cleaned, syntax-checked pattern.

    The kind follows patternmatcher: exact, prefix (``foo**``), suffix
    (``**foo``) or regex; the regex body is always built too.
    """
    out: list[str] = []
    kind = _EXACT
    i, n, first = 0, len(p), True
    while i < n:
        ch = p[i]
        i += 1
        if ch == "*":
            if i < n and p[i] == "*":
                i += 1
                if i < n and p[i] == "/":  # treat "**/" as "**"
                    i += 1
                if i >= n:
                    out.append(".*")
                    kind = _PREFIX if kind == _EXACT else _REGEX
                else:
                    out.append("(?:.*/)?")
                    kind = _REGEX
                if first:
                    kind = _SUFFIX
            else:
                out.append("[^/]*")
                kind = _REGEX
        elif ch == "?":
            out.append("[^/]")
            kind = _REGEX
        elif ch == "\\":
            out.append(re.escape(p[i]))
            i += 1
            kind = _REGEX
        elif ch == "[":
            negated, ranges, i = _parse_class(p, i)
            out.append(_class_regex(negated, ranges))
            kind = _REGEX
        elif ch == "]":
            out.append(r"\]")
            kind = _REGEX
        else:
            out.append(re.escape(ch))
        first = False
    return kind, "".join(out)


_TAIL = r"(?:/[\s\S]*)?"  # "or one of the path's parent directories matches"


def _match_regex(p: str) -> re.Pattern[str]:
    """A regex whose fullmatch is MatchesOrParentMatches for one pattern."""
    kind, body = _translate(p)
    if kind == _EXACT:
        rx = re.escape(p)
    elif kind == _PREFIX:  # strings.HasPrefix(path, p[:-2])
        rx = re.escape(p[:-2]) + r"[\s\S]*"
    elif kind == _SUFFIX:  # strings.HasSuffix(path, p[2:]) or "**/foo" == "foo"
        suffix = p[2:]
        rx = r"[\s\S]*" + re.escape(suffix)
        if suffix.startswith("/"):
            rx = f"(?:{rx}|{re.escape(suffix[1:])})"
    else:
        rx = f"(?:{body})"
    return re.compile(rx + _TAIL)


def _leading_segments(p: str) -> tuple[list[re.Pattern[str]], bool]:
    """Split a pattern into '/'-separated segments that each match exactly one
    path component, stopping at the first one that may not (``**``, an escaped
    '/', a class that can match '/').  Returns (segment regexes, complete),
    complete being True when every segment of the pattern was taken."""
    segs: list[re.Pattern[str]] = []
    start, i, n = 0, 0, len(p)
    while True:
        if i >= n or p[i] == "/":
            seg = p[start:i]
            if "**" in seg:
                return segs, False
            segs.append(re.compile(_translate(seg)[1]))
            if i >= n:
                return segs, True
            start = i + 1
            i += 1
        elif p[i] == "\\":
            if p[i + 1] == "/":
                return segs, False
            i += 2
        elif p[i] == "[":
            negated, ranges, i = _parse_class(p, i + 1)
            if negated or any(lo <= "/" <= hi for lo, hi in ranges):
                return segs, False
        else:
            i += 1


# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """One pattern of a .dockerignore file, as Docker sees it.

    ``text`` is the cleaned pattern without its ``!``; ``line`` the 1-based
    line of the file it came from; ``exclusion`` is True for ``!`` lines
    (exceptions, which re-include what earlier patterns excluded).
    """

    text: str
    line: int
    exclusion: bool

    def __str__(self) -> str:
        return ("!" if self.exclusion else "") + self.text


class _Compiled:
    __slots__ = ("pattern", "regex", "segments", "complete")

    def __init__(self, pattern: Pattern) -> None:
        self.pattern = pattern
        self.regex = _match_regex(pattern.text)
        if pattern.exclusion:
            self.segments, self.complete = _leading_segments(pattern.text)
        else:
            self.segments, self.complete = [], False

    def may_match_below(self, parts: list[str]) -> bool:
        """Could this pattern match some path strictly below directory ``parts``?"""
        segs = self.segments
        if self.complete and len(segs) <= len(parts):
            return False
        return all(rx.fullmatch(c) for rx, c in zip(segs, parts))


def _normalize(path: str) -> str:
    path = _clean(path)
    return path.lstrip("/") or "."


class DockerIgnore:
    """The patterns of one .dockerignore file."""

    __slots__ = ("patterns", "_compiled", "_has_exclusions")

    def __init__(self, patterns: list[Pattern] | tuple[Pattern, ...] = ()) -> None:
        self.patterns: tuple[Pattern, ...] = tuple(patterns)
        compiled = []
        for p in self.patterns:
            try:
                compiled.append(_Compiled(p))
            except ValueError as e:
                raise ValueError(f"line {p.line}: {e}: {str(p)!r}") from None
        self._compiled: tuple[_Compiled, ...] = tuple(compiled)
        self._has_exclusions = any(p.exclusion for p in self.patterns)

    @classmethod
    def empty(cls) -> "DockerIgnore":
        return cls(())

    @classmethod
    def parse(cls, text: str) -> "DockerIgnore":
        """Read .dockerignore content; ValueError("line N: ...") on a bad pattern."""
        patterns: list[Pattern] = []
        if text.startswith("\ufeff"):
            text = text[1:]
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for lineno, raw in enumerate(lines, 1):
            if raw.endswith("\r"):
                raw = raw[:-1]
            if raw.startswith("#"):
                continue
            # ignorefile.ReadAll
            p = _go_trim_space(raw)
            if not p:
                continue
            invert = p[0] == "!"
            if invert:
                p = _go_trim_space(p[1:])
            if p:
                p = _clean(p)
                if len(p) > 1 and p[0] == "/":
                    p = p[1:]
            if invert:
                p = "!" + p
            # patternmatcher.New
            p = _clean(_go_trim_space(p))
            exclusion = p[0] == "!"
            if exclusion:
                if len(p) == 1:
                    raise ValueError(f'line {lineno}: illegal exclusion pattern: "!": {raw.strip()!r}')
                p = p[1:]
            try:
                _check_syntax(p)
            except ValueError as e:
                raise ValueError(f"line {lineno}: {e}: {raw.strip()!r}") from None
            patterns.append(Pattern(p, lineno, exclusion))
        return cls(patterns)

    def __len__(self) -> int:
        return len(self.patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"DockerIgnore({[str(p) for p in self.patterns]!r})"

    def _last_match(self, path: str) -> int:
        """Index of the last pattern matching ``path`` (or a parent), -1 if none."""
        for i in range(len(self._compiled) - 1, -1, -1):
            if self._compiled[i].regex.fullmatch(path):
                return i
        return -1

    def excluding_pattern(self, path: str) -> Pattern | None:
        """The pattern that excludes ``path`` (the last one matching it), or None."""
        path = _normalize(path)
        if path == ".":
            return None  # Docker never excludes the context root
        i = self._last_match(path)
        if i < 0 or self._compiled[i].pattern.exclusion:
            return None
        return self._compiled[i].pattern

    def excluded(self, path: str) -> bool:
        """Is ``path`` (relative to the context root, '/'-separated) excluded?"""
        return self.excluding_pattern(path) is not None

    def may_contain_included(self, dirpath: str) -> bool:
        """False only if ``dirpath`` and everything below it are excluded.

        When ``dirpath`` is excluded by pattern N, a path below it can only
        come back through an exception after N (pattern N matches every path
        below ``dirpath``); each such exception is checked, conservatively,
        for whether it could match a path below ``dirpath``.
        """
        path = _normalize(dirpath)
        if path == ".":
            return True
        i = self._last_match(path)
        if i < 0 or self._compiled[i].pattern.exclusion:
            return True
        if not self._has_exclusions:
            return False
        parts = path.split("/")
        return any(
            c.pattern.exclusion and c.may_match_below(parts)
            for c in self._compiled[i + 1:]
        )
