"""COPY/ADD --chmod values: an octal mode, or (BuildKit's dockerfile frontend 1.14+) a
chmod(1)-style symbolic mode applied to each copied file's own mode.

Octal is what Go's strconv.ParseUint(s, 8, 32) takes, at most 07777: digits 0-7 only, so
no "0o" prefix, sign, underscore or blank. Symbolic modes follow BSD setmode (BuildKit uses
github.com/tonistiigi/dchapes-mode, a port of it) with no umask: comma-separated clauses
of `[ugoa]*` then one or more `[+-=]` each followed by `[rwxXst]*` or one of `u`, `g`, `o`
(copy that class's current bits). `X` is x only for a directory or a file that already
has an x bit; `s` and `t` are ignored for "o" alone, as chmod(1) does.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass

_OCTAL = re.compile(r"[0-7]+")
_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)")
_ACTION = re.compile(r"([-+=])([ugo]|[rwxXst]*)")

_WHO = {"u": stat.S_ISUID | stat.S_IRWXU, "g": stat.S_ISGID | stat.S_IRWXG, "o": stat.S_IRWXO}
_ALL = _WHO["u"] | _WHO["g"] | _WHO["o"]
_EXEC = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


class ChmodError(ValueError):
    pass


@dataclass(frozen=True)
class SymbolicMode:
    """A parsed symbolic mode; `spec` is what was written (it is also the cache-key value)."""
    spec: str
    clauses: tuple[tuple[int, bool, tuple[tuple[str, str], ...]], ...]  # (who mask, who given, actions)

    def apply(self, mode: int, is_dir: bool) -> int:
        mode = stat.S_IMODE(mode)
        for who, given, actions in self.clauses:
            for op, perms in actions:
                bits = 0
                if perms in ("u", "g", "o"):  # copy a class's current rwx bits to every class
                    shift = {"u": 6, "g": 3, "o": 0}[perms]
                    rwx = (mode >> shift) & 0o7
                    bits = rwx << 6 | rwx << 3 | rwx
                else:
                    for p in perms:
                        if p == "r":
                            bits |= 0o444
                        elif p == "w":
                            bits |= 0o222
                        elif p == "x":
                            bits |= _EXEC
                        elif p == "X":
                            if is_dir or mode & _EXEC:
                                bits |= _EXEC
                        elif p == "s":
                            if not given or who & ~stat.S_IRWXO:
                                bits |= stat.S_ISUID | stat.S_ISGID
                        elif p == "t":
                            if not given or who & ~stat.S_IRWXO:
                                bits |= stat.S_ISVTX
                mask = who | (stat.S_ISVTX if (not given or who & ~stat.S_IRWXO) else 0)
                bits &= mask
                if op == "+":
                    mode |= bits
                elif op == "-":
                    mode &= ~bits
                else:
                    mode = (mode & ~mask) | bits
        return mode


def parse_chmod(spec: str) -> int | SymbolicMode:
    """The mode `spec` means: an int for octal, else a SymbolicMode; ChmodError if neither."""
    if spec[:1].isdigit():
        if not _OCTAL.fullmatch(spec):
            raise ChmodError("expected an octal mode such as 0755 or a symbolic one such as u+x")
        mode = int(spec, 8)
        if mode > 0o7777:
            raise ChmodError("mode out of range")
        return mode
    clauses = []
    for clause in spec.split(","):
        m = _CLAUSE.fullmatch(clause)
        if not m:
            raise ChmodError("expected an octal mode such as 0755 or a symbolic one such as u+x")
        who_s, acts = m.groups()
        who = 0
        for w in who_s:
            who |= _ALL if w == "a" else _WHO[w]
        given = bool(who_s)
        clauses.append((who if given else _ALL, given, tuple(_ACTION.findall(acts))))
    return SymbolicMode(spec, tuple(clauses))


def apply_chmod(chmod: int | SymbolicMode | None, mode: int, is_dir: bool) -> int:
    """The permission bits a copied entry with `mode` gets under --chmod `chmod`."""
    if chmod is None:
        return stat.S_IMODE(mode)
    if isinstance(chmod, SymbolicMode):
        return chmod.apply(mode, is_dir)
    return chmod
