"""COPY: resolve sources in a read-only view, checksum them, and write them into a new layer dir.

No sandbox is needed: sources are read through a `LayeredView` (the build
context as a one-layer view, or another stage's snapshot chain), and the
destination is a fresh directory that becomes the layer. Every path is resolved
inside its view, so neither a symlink in the context nor one in the image can
make COPY read or write outside its root.

Cache keys use `content_digest`, which hashes names, types, modes, link targets
and file contents, never mtimes (the copied files keep their mtimes, as docker's do).
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from pybuild.cache.layers import LayerError, unpack_tar_stream
from pybuild.cache.view import Entry, LayeredView

_GLOB_CHARS = set("*?[")
_CHUNK = 1 << 20


class CopyError(Exception):
    """A COPY that cannot be done as written; the message says why and what is near."""


@dataclass(frozen=True)
class Source:
    pattern: str        # as written (after variable expansion)
    name: str           # the matched name, which a file keeps at the destination
    entry: Entry        # what it resolves to: symlinks followed inside the view, as BuildKit does for sources


def _has_glob(s: str) -> bool:
    return any(c in _GLOB_CHARS for c in s)


def _norm(path: str) -> str:
    parts: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/" + "/".join(parts)


def match_sources(view: LayeredView, patterns: Iterable[str], what: str) -> list[Source]:
    """Each pattern's matches, in order; a pattern that matches nothing is an error naming near matches."""
    out: list[Source] = []
    for pattern in patterns:
        # An absolute source is relative to the view's root, as BuildKit does; ".." never climbs above it.
        rel = pattern
        if what == "build context" and _escapes_root(rel):
            raise CopyError(f"{pattern!r} is outside the build context")
        matches = _glob(view, rel) if _has_glob(rel) else [rel]
        found = False
        for m in matches:
            entry = view.lookup(m, follow_final=True)
            if entry is None:
                continue
            found = True
            out.append(Source(pattern, PurePosixPath(m).name or "/", entry))
        if not found:
            raise CopyError(_not_found_message(view, pattern, what))
    return out


def _escapes_root(path: str) -> bool:
    depth = 0
    for p in path.split("/"):
        if p == "..":
            depth -= 1
            if depth < 0:
                return True
        elif p not in ("", "."):
            depth += 1
    return False


def _glob(view: LayeredView, pattern: str) -> list[str]:
    results = ["/"]
    for part in [p for p in pattern.split("/") if p not in ("", ".")]:
        nxt: list[str] = []
        for base in results:
            if _has_glob(part):
                try:
                    names = view.listdir(base)
                except OSError:
                    continue
                nxt.extend(_norm(f"{base}/{n}") for n in names if fnmatch.fnmatchcase(n, part))
            else:
                nxt.append(_norm(f"{base}/{part}"))
        results = nxt
    return sorted(results)


def _not_found_message(view: LayeredView, pattern: str, what: str) -> str:
    why_missing = getattr(view, "why_missing", None)
    reason = why_missing(pattern) if why_missing else None
    if reason:
        return f"{pattern!r} is not available in the {what}: {reason}"
    parent = _norm(str(PurePosixPath("/" + pattern).parent))
    try:
        names = view.listdir(parent)
    except OSError:
        names = []
    name = PurePosixPath(pattern).name
    if name in names:  # it is there, but resolving it (a symlink) led outside or nowhere
        return f"{pattern!r} is a symlink whose target is not in the {what}"
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(_norm(parent + '/' + n).lstrip('/')) for n in near)}?)" if near else ""
    return f"{pattern!r} not found in the {what}{hint}"


def content_manifest(view: LayeredView, sources: list[Source]) -> list[tuple[str, str, str]]:
    """(source pattern, path, sha256 of the entry's name, type, mode, link target and content) for
    everything COPY would write, mtimes excluded."""
    out = []
    for src in sources:
        for rel, entry in _entries_of(view, src):
            h = hashlib.sha256()
            _hash_entry(h, rel, entry)
            path = entry.path.strip("/") if rel is None else f"{entry.path.strip('/')}/{rel}".lstrip("/")
            out.append((src.pattern, path, h.hexdigest()))
    return out


def content_digest(manifest: list[tuple[str, str, str]]) -> str:
    """The content part of a COPY's cache key, from its `content_manifest`."""
    h = hashlib.sha256()
    for pattern, path, digest in manifest:
        h.update(f"{pattern}\0{path}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()


def _entries_of(view: LayeredView, src: Source):
    """(relative name, entry) pairs COPY writes for one source: the entry, or a dir's contents."""
    entry = src.entry
    if stat.S_ISDIR(entry.st.st_mode):
        base = entry.path.rstrip("/")
        for child in view.walk(entry.path):
            yield child.path[len(base) + 1:] if base != "/" else child.path[1:], child
    else:
        yield None, entry


def _hash_entry(h, rel: str | None, entry: Entry) -> None:
    st = entry.st
    h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
    if stat.S_ISREG(st.st_mode):
        h.update(f"{st.st_size}\0".encode())
        with open(entry.real, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    elif stat.S_ISLNK(st.st_mode):
        h.update(os.readlink(entry.real).encode() + b"\0")
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        h.update(f"{st.st_rdev}\0".encode())


def copy_to_layer(
    view: LayeredView,
    sources: list[Source],
    dest: str,
    *,
    image: LayeredView,
    layer_dir: Path,
    owner: tuple[int, int] = (0, 0),
    chmod: int | None = None,
    extract_archives: bool = False,
) -> None:
    """Write `sources` to `dest` (absolute, in the image) as the contents of the fresh dir `layer_dir`.

    Docker's rules: a directory source copies its contents; several sources, or
    a dest ending in "/", need dest to be a directory; a single file onto an
    existing directory lands inside it. Parent directories that exist in the
    image keep their metadata; new ones are 0755 root:root.
    With `extract_archives` (ADD), a local tar archive (plain, gzip, bzip2 or xz) is
    unpacked into dest instead, by the same in-root extractor as image layers.
    """
    archives = {id(s) for s in sources if extract_archives and _is_archive(s.entry)}
    dest_is_dir = dest.endswith("/") or len(sources) > 1 or bool(archives) or any(
        stat.S_ISDIR(s.entry.st.st_mode) for s in sources)
    if len(sources) > 1 and not dest.endswith("/"):
        raise CopyError(f"when copying several sources the destination must end with '/' (got {dest!r})")
    resolved = image.resolve(dest)
    existing = image.lookup("/" + "/".join(resolved))
    if not dest_is_dir and existing is not None and stat.S_ISDIR(existing.st.st_mode):
        dest_is_dir = True
    if dest_is_dir:
        target_dir = resolved
    else:
        target_dir = resolved[:-1]
    _make_parents(image, layer_dir, target_dir, make_last_owned=owner if dest_is_dir else None)

    dir_times: list[tuple[Path, os.stat_result]] = []
    for src in sources:
        if id(src) in archives:
            with open(src.entry.real, "rb") as archive:
                try:
                    unpack_tar_stream(archive, layer_dir.joinpath(*target_dir))
                except LayerError as exc:
                    raise CopyError(f"cannot extract {src.pattern!r}: {exc}") from None
            continue
        for rel, entry in _entries_of(view, src):
            if rel is None:
                name = src.name if dest_is_dir else resolved[-1]
                out = layer_dir.joinpath(*target_dir, name)
            else:
                out = layer_dir.joinpath(*target_dir, *rel.split("/"))
            _write_entry(entry, out, owner, chmod, dir_times)
    for path, st in reversed(dir_times):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _is_archive(entry: Entry) -> bool:
    if not stat.S_ISREG(entry.st.st_mode):
        return False
    try:
        return tarfile.is_tarfile(entry.real)
    except OSError:
        return False


def _make_parents(image: LayeredView, layer_dir: Path, parts: list[str],
                  make_last_owned: tuple[int, int] | None) -> None:
    for i in range(1, len(parts) + 1):
        out = layer_dir.joinpath(*parts[:i])
        if out.exists():
            continue
        existing = image.lookup("/" + "/".join(parts[:i]), follow_final=False)
        if existing is not None and not stat.S_ISDIR(existing.st.st_mode):
            raise CopyError(f"cannot copy into /{'/'.join(parts[:i])}: it exists in the image and is not a directory")
        os.mkdir(out)
        if existing is not None:
            st = existing.st
            os.chmod(out, stat.S_IMODE(st.st_mode))
            os.lchown(out, st.st_uid, st.st_gid)
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            os.chmod(out, 0o755)
            uid, gid = make_last_owned if (make_last_owned and i == len(parts)) else (0, 0)
            os.lchown(out, uid, gid)


def _write_entry(entry: Entry, out: Path, owner: tuple[int, int], chmod: int | None,
                 dir_times: list[tuple[Path, os.stat_result]]) -> None:
    st = entry.st
    mode = stat.S_IMODE(st.st_mode)
    if os.path.lexists(out) and not (stat.S_ISDIR(st.st_mode) and out.is_dir() and not out.is_symlink()):
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        else:
            out.unlink()
    if stat.S_ISDIR(st.st_mode):
        out.mkdir(exist_ok=True)
        os.chmod(out, chmod if chmod is not None else mode)
        dir_times.append((out, st))
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(entry.real, out, follow_symlinks=False)
        os.chmod(out, chmod if chmod is not None else mode)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(entry.real), out)
    elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        os.mknod(out, st.st_mode, st.st_rdev)
    else:
        return  # sockets are not copied, as docker does
    os.lchown(out, *owner)
    if not stat.S_ISDIR(st.st_mode):
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
