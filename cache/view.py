"""A read-only, merged view of a snapshot chain, resolved the way overlayfs would, without mounting.

`LayeredView([top, ..., bottom])` answers lookups on the union of layer dirs in
overlay form: a 0/0 character device hides the name below it, a directory with
the `trusted.overlay.opaque` (or `user.overlay.opaque`) xattr hides everything
below it. Symlinks met while resolving a path are followed *inside* the view
(an absolute target restarts at the view's root, `..` never climbs above it),
so a hostile layer or build context can never make a lookup leave its root.

It serves COPY (from the context, a one-layer view, or from another stage) and
the lookups of existing parent directories; nothing here writes.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

MAX_SYMLINKS = 40
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


class ViewError(OSError):
    pass


@dataclass(frozen=True)
class Entry:
    path: str              # the path inside the view, normalised, "/"-rooted
    real: Path             # where the winning inode lives on disk
    st: os.stat_result     # lstat of `real`


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) in (b"y", b"Y"):
                return True
        except OSError:
            continue
    return False


class LayeredView:
    def __init__(self, layers: Sequence[Path]):
        self.layers = [Path(p) for p in layers]   # top-most first, like overlay's lowerdir
        self._dirs: dict[tuple[str, ...], list[Path]] = {}  # layers are immutable while viewed

    # -- raw, no symlink following -------------------------------------------------------------
    def _dir_layers(self, parts: Sequence[str]) -> list[Path]:
        """The layer copies of directory `parts` that contribute to the merged dir, top first."""
        key = tuple(parts)
        cached = self._dirs.get(key)
        if cached is not None:
            return cached
        if not parts:
            found = [layer for layer in self.layers if os.path.isdir(layer)]
        else:
            found = []
            for parent in self._dir_layers(parts[:-1]):
                candidate = parent / parts[-1]
                try:
                    st = os.lstat(candidate)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    break  # a file, link or whiteout here hides any directory below
                found.append(candidate)
                if _is_opaque(candidate):
                    break
        self._dirs[key] = found
        return found

    def _lookup_raw(self, parts: Sequence[str]) -> tuple[Path, os.stat_result] | None:
        if not parts:
            if not self.layers:
                return None
            return self.layers[0], os.lstat(self.layers[0])
        for parent in self._dir_layers(parts[:-1]):
            candidate = parent / parts[-1]
            try:
                st = os.lstat(candidate)
            except FileNotFoundError:
                continue
            if _is_whiteout(st):
                return None
            return candidate, st
        return None

    # -- resolution -----------------------------------------------------------------------------
    def resolve(self, path: str, follow_final: bool = True) -> list[str]:
        """The components of `path` with every symlink resolved inside the view."""
        pending = [p for p in path.split("/") if p not in ("", ".")]
        pending.reverse()
        done: list[str] = []
        hops = 0
        while pending:
            name = pending.pop()
            if name == "..":
                if done:
                    done.pop()
                continue
            hit = self._lookup_raw(done + [name])
            if hit is not None and stat.S_ISLNK(hit[1].st_mode) and (pending or follow_final):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise ViewError(errno.ELOOP, f"too many levels of symbolic links: {path}")
                target = os.readlink(hit[0])
                if target.startswith("/"):
                    done = []
                more = [p for p in target.split("/") if p not in ("", ".")]
                pending.extend(reversed(more))
                continue
            done.append(name)
        return done

    def lookup(self, path: str, follow_final: bool = True) -> Entry | None:
        parts = self.resolve(path, follow_final)
        hit = self._lookup_raw(parts)
        if hit is None:
            return None
        return Entry("/" + "/".join(parts), hit[0], hit[1])

    def listdir(self, path: str) -> list[str]:
        """Merged, sorted names of directory `path` (symlinks resolved), whiteouts applied."""
        parts = self.resolve(path)
        names: dict[str, bool] = {}
        for layer_dir in self._dir_layers(parts):
            for name in os.listdir(layer_dir):
                if name in names:
                    continue
                st = os.lstat(layer_dir / name)
                names[name] = not _is_whiteout(st)
        return sorted(n for n, visible in names.items() if visible)

    def walk(self, path: str) -> Iterator[Entry]:
        """Every entry under directory `path` (not following symlinks below it), in a fixed order:
        a directory's children sorted by their bytes, then each subdirectory's, depth first."""
        stack = [self.resolve(path)]
        while stack:
            parts = stack.pop()
            subdirs = []
            for name in sorted(self.listdir("/" + "/".join(parts)), key=os.fsencode):
                child = parts + [name]
                hit = self._lookup_raw(child)
                if hit is None:
                    continue
                yield Entry("/" + "/".join(child), hit[0], hit[1])
                if stat.S_ISDIR(hit[1].st_mode):
                    subdirs.append(child)
            stack.extend(reversed(subdirs))  # pop order = sorted order
