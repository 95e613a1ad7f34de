"""COPY: resolve sources in a read-only view, checksum them, and write them into a new layer dir.

No sandbox is needed: sources are read through a `LayeredView` (the build
context as a one-layer view, or another stage's snapshot chain), and the
destination is a fresh directory that becomes the layer. Every path is resolved
inside its view, so neither a symlink in the context nor one in the image can
make COPY read or write outside its root.

Cache keys use `content_digest`, which hashes names, types, modes, link targets
and file contents, never mtimes (the copied files keep their mtimes, as docker's do).

BuildKit's flags: `--parents` keeps each match's directories below a pivot (the
part of the source before "/./", else the root), `--exclude` drops entries by
.dockerignore-style patterns before they reach the layer or the key, and ADD's
local archives are extracted with Docker's member-name rules (`_docker_tar_names`).
Sources fetched from URLs or git (builder.fetch) arrive as `Source`s with their own view.
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
from typing import Callable, Iterable

from pybuild.builder.chmod import SymbolicMode, apply_chmod
from pybuild.builder.dockerignore import DockerIgnore
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
    view: LayeredView | None = None   # the view `entry` lives in, when not the COPY's own (ADD URL/git)
    parents: tuple[str, ...] = ()     # COPY --parents: the directories kept between dest and the entry
    pivot: str = "/"                  # COPY --parents: where `parents` start in the view
    extract: bool = True              # ADD: may a tar archive be unpacked (never for a URL download)

    @property
    def dest_rel(self) -> str:
        """Where the source lands, relative to the destination directory."""
        return "/".join([*self.parents, self.name])


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


def match_sources(view: LayeredView, patterns: Iterable[str], what: str, *, parents: bool = False) -> list[Source]:
    """Each pattern's matches, in order; a pattern that matches nothing is an error naming near matches.

    With `parents` (COPY --parents) every match keeps the directories between the pivot and
    itself: the pivot is the part of the pattern before its first "/./" (rsync's --relative
    marker), else the view's root; `**` then matches any number of directories.
    """
    out: list[Source] = []
    for pattern in patterns:
        # An absolute source is relative to the view's root, as BuildKit does; ".." never climbs above it.
        rel = pattern
        if what == "build context" and _escapes_root(rel):
            raise CopyError(f"{pattern!r} is outside the build context")
        pivot_depth = 0
        if parents:
            head, marker, tail = rel.partition("/./")
            if marker:
                pivot_depth = len([p for p in head.split("/") if p not in ("", ".")])
                rel = head + "/" + tail
        globbing = _has_glob(rel) or (parents and "**" in rel.split("/"))
        matches = _glob(view, rel, doublestar=parents) if globbing else [_norm(rel) if parents else rel]
        found = False
        for m in matches:
            entry = view.lookup(m, follow_final=True)
            if entry is None:
                continue
            found = True
            parts = [p for p in m.split("/") if p]
            if parents:
                kept = parts[pivot_depth:]
                out.append(Source(pattern, kept[-1] if kept else "/", entry, parents=tuple(kept[:-1]),
                                  pivot="/" + "/".join(parts[:pivot_depth])))
            else:
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


def _glob(view: LayeredView, pattern: str, doublestar: bool = False) -> list[str]:
    """Paths in `view` matching `pattern`, component by component with Go's filepath.Match rules;
    with `doublestar`, a `**` component matches any number of directories, none included."""
    results = ["/"]
    for part in [p for p in pattern.split("/") if p not in ("", ".")]:
        nxt: list[str] = []
        for base in results:
            if doublestar and part == "**":
                nxt.append(base)
                nxt.extend(e.path for e in _safe_walk(view, base) if stat.S_ISDIR(e.st.st_mode))
            elif _has_glob(part):
                try:
                    names = view.listdir(base)
                except OSError:
                    continue
                nxt.extend(_norm(f"{base}/{n}") for n in names if fnmatch.fnmatchcase(n, part))
            else:
                nxt.append(_norm(f"{base}/{part}"))
        results = list(dict.fromkeys(nxt))
    return sorted(results)


def _safe_walk(view: LayeredView, base: str):
    try:
        yield from view.walk(base)
    except OSError:
        return


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


def content_manifest(view: LayeredView, sources: list[Source],
                     exclude: DockerIgnore | None = None) -> list[tuple[str, str, str]]:
    """(source pattern, path, sha256 of the entry's name, type, mode, link target and content) for
    everything COPY would write, mtimes excluded; entries `exclude` drops are not in it."""
    out = []
    for src in sources:
        src_view = src.view or view
        for rel, entry in _entries_of(src_view, src, exclude):
            h = hashlib.sha256()
            _hash_entry(h, rel, entry, getattr(src_view, "file_digest", None))
            if src.parents:  # where it lands is part of what COPY --parents writes
                h.update(_b(f"{src.dest_rel}\0"))
            path = entry.path.strip("/")  # a directory source yields its children: their own paths
            out.append((src.pattern, path, h.hexdigest()))
    return out


def content_digest(manifest: list[tuple[str, str, str]]) -> str:
    """The content part of a COPY's cache key, from its `content_manifest`."""
    h = hashlib.sha256()
    for pattern, path, digest in manifest:
        h.update(_b(f"{pattern}\0{path}\0{digest}\n"))
    return "sha256:" + h.hexdigest()


def exclude_matcher(patterns: Iterable[str]) -> DockerIgnore | None:
    """`--exclude` patterns as a matcher (.dockerignore syntax, `!` exceptions included); ValueError
    names a bad pattern. None when there are no patterns."""
    patterns = list(patterns)
    if not patterns:
        return None
    for p in patterns:
        if "\n" in p:
            raise ValueError(f"--exclude={p!r}: a pattern cannot span lines")
    # One pattern per "line"; a leading "#" would read as a comment there, so escape it.
    return DockerIgnore.parse("\n".join("\\" + p if p.startswith("#") else p for p in patterns))


def _entries_of(view: LayeredView, src: Source, exclude: DockerIgnore | None = None):
    """(relative name, entry) pairs COPY writes for one source: the entry, or a dir's contents.

    `--exclude` patterns are matched as BuildKit's copier does: against a path relative to what
    is copied (a directory source's contents by their path inside it; a matched file or
    directory by its name, or with --parents by its path below the pivot). An excluded
    directory drops everything below it unless a `!` exception may bring something back.
    """
    entry = src.entry
    if _source_excluded(src, exclude):
        return
    prefix = f"{src.dest_rel}/" if src.parents else ""
    if stat.S_ISDIR(entry.st.st_mode):
        base = entry.path.rstrip("/")
        for child in view.walk(entry.path):
            rel = child.path[len(base) + 1:] if base != "/" else child.path[1:]
            if exclude is not None and exclude.excluded(prefix + rel) and not (
                    stat.S_ISDIR(child.st.st_mode) and exclude.may_contain_included(prefix + rel)):
                continue
            yield rel, child
    else:
        yield None, entry


def _source_excluded(src: Source, exclude: DockerIgnore | None) -> bool:
    """Is a matched source itself dropped by --exclude? Only a source found by a wildcard (or
    with --parents) is matched by its name/path; a source named exactly is always copied."""
    if exclude is None or not (src.parents or _has_glob(src.pattern)):
        return False
    top = src.dest_rel if src.parents else src.name
    if top in ("", "/") or not exclude.excluded(top):
        return False
    return not (stat.S_ISDIR(src.entry.st.st_mode) and exclude.may_contain_included(top))


def file_sha256(entry: Entry) -> str:
    """sha256 (hex) of a regular file's content."""
    h = hashlib.sha256()
    with open(entry.real, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _b(text: str) -> bytes:
    """A path (or text holding paths) as the bytes it names: a file name that is not UTF-8 comes
    from os.* as lone surrogates (PEP 383), which plain .encode() refuses."""
    return text.encode("utf-8", "surrogateescape")


def _hash_entry(h, rel: str | None, entry: Entry, file_digest=None) -> None:
    st = entry.st
    h.update(_b(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode):o}\0"))
    if stat.S_ISREG(st.st_mode):
        h.update(f"{st.st_size}\0".encode())
        if file_digest is not None:  # the build context remembers its files' digests (builder/context.py)
            h.update(file_digest(entry).encode())
            return
        with open(entry.real, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    elif stat.S_ISLNK(st.st_mode):
        h.update(_b(os.readlink(entry.real)) + b"\0")
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
    chmod: int | SymbolicMode | None = None,
    extract_archives: bool = False,
    exclude: DockerIgnore | None = None,
    parents: bool = False,
    cancelled: Callable[[], bool] | None = None,
) -> None:
    """Write `sources` to `dest` (absolute, in the image) as the contents of the fresh dir `layer_dir`.

    Docker's rules: a directory source copies its contents; several sources, or
    a dest ending in "/", need dest to be a directory; a single file onto an
    existing directory lands inside it. Parent directories that exist in the
    image keep their metadata; new ones are 0755 root:root.
    With `extract_archives` (ADD), a local tar archive (plain, gzip, bzip2 or xz) is
    unpacked into dest instead, as Docker's archive.Untar does (see `_docker_tar_names`).
    With `parents` (COPY --parents) dest is a directory and each source keeps the
    directories between its pivot and itself, made with their metadata in the source.
    `exclude` drops entries as in `_entries_of`.
    `cancelled` is polled between entries: a big COPY stops soon after Ctrl-C (CopyError).
    """
    archives = {id(s) for s in sources if extract_archives and s.extract and _is_archive(s.entry)}
    dest_is_dir = parents or dest.endswith("/") or len(sources) > 1 or bool(archives) or any(
        stat.S_ISDIR(s.entry.st.st_mode) for s in sources)
    if len(sources) > 1 and not dest.endswith("/") and not parents:
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
        src_view = src.view or view
        if id(src) in archives:
            _extract_archive(src, layer_dir.joinpath(*target_dir))
            continue
        if src.parents and not _source_excluded(src, exclude):
            _make_source_parents(src_view, src, layer_dir.joinpath(*target_dir), owner, dir_times)
        for rel, entry in _entries_of(src_view, src, exclude):
            if cancelled is not None and cancelled():
                raise CopyError("build cancelled")
            if rel is None:
                name = src.dest_rel if (dest_is_dir and src.parents) else (src.name if dest_is_dir else resolved[-1])
                out = layer_dir.joinpath(*target_dir, *name.split("/"))
            else:
                base = src.dest_rel.split("/") if src.parents and src.name != "/" else []
                out = layer_dir.joinpath(*target_dir, *base, *rel.split("/"))
            _write_entry(entry, out, owner, chmod, dir_times)
    for path, st in reversed(dir_times):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _make_source_parents(view: LayeredView, src: Source, target: Path, owner: tuple[int, int],
                         dir_times: list[tuple[Path, os.stat_result]]) -> None:
    """COPY --parents: the kept directories, each with its mode and mtime in the source (as
    BuildKit's copier makes them), owned by --chown's owner."""
    pivot = src.pivot.rstrip("/")
    kept = list(src.parents)
    if stat.S_ISDIR(src.entry.st.st_mode) and src.name != "/":
        kept.append(src.name)  # a directory source is kept too, not only its contents
    for i in range(1, len(kept) + 1):
        out = target.joinpath(*kept[:i])
        if out.is_dir() and not out.is_symlink():
            continue
        entry = view.lookup(f"{pivot}/{'/'.join(kept[:i])}")
        if entry is None or not stat.S_ISDIR(entry.st.st_mode):
            raise CopyError(f"{src.pattern!r}: parent {'/'.join(kept[:i])!r} is not a directory in the source")
        _write_entry(entry, out, owner, None, dir_times)


def _extract_archive(src: Source, target: Path) -> None:
    names = _docker_tar_names(src)
    if not names:
        with open(src.entry.real, "rb") as archive:
            _unpack_or_fail(src, archive, target)
        return
    # Some member names need Docker's normalisation: extract a rewritten copy of the stream.
    tmp = target.parent / f".{target.name}.tar-normalised-{os.getpid()}"
    try:
        with tarfile.open(src.entry.real, "r:*") as tin, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tout:
            for m in tin:
                m.name = names.get(m.name, m.name)
                if m.islnk():
                    m.linkname = names.get(m.linkname, m.linkname)
                tout.addfile(m, tin.extractfile(m) if m.isreg() else None)
        with open(tmp, "rb") as archive:
            _unpack_or_fail(src, archive, target)
    finally:
        tmp.unlink(missing_ok=True)


def _unpack_or_fail(src: Source, archive, target: Path) -> None:
    try:
        unpack_tar_stream(archive, target)
    except LayerError as exc:
        raise CopyError(f"cannot extract {src.pattern!r}: {exc}") from None


def _docker_tar_names(src: Source) -> dict[str, str]:
    """Member names (and hard-link targets) that Docker's archive.Untar rewrites, old -> new.

    Docker cleans each name (`filepath.Clean`) and joins it to the destination, so a
    leading "/" is dropped and "a/../b" is "b"; a name that still climbs out ("../x",
    "a/../../x") is refused as a breakout, and so is a hard link whose target does, or a
    symlink whose relative target leaves the destination (moby pkg/archive createTarFile).
    """
    rewrites: dict[str, str] = {}
    try:
        with tarfile.open(src.entry.real, "r:*") as tf:
            for m in tf:
                clean = _clean_member(m.name, src)
                if clean != m.name:
                    rewrites[m.name] = clean
                if m.islnk():
                    target = _clean_member(m.linkname, src, f"hard link {m.name!r} -> target")
                    if target != m.linkname:
                        rewrites[m.linkname] = target
                elif m.issym() and not m.linkname.startswith("/"):
                    depth = max(0, len([p for p in clean.split("/") if p]) - 1)
                    if _escapes_depth(depth, m.linkname):
                        raise CopyError(f"cannot extract {src.pattern!r}: symlink {m.name!r} -> {m.linkname!r} "
                                        "points outside the destination")
    except tarfile.TarError as exc:
        raise CopyError(f"cannot extract {src.pattern!r}: {exc}") from None
    return rewrites


def _escapes_depth(depth: int, target: str) -> bool:
    """Does a relative symlink `target`, at `depth` directories below the root, climb above it?"""
    for p in target.split("/"):
        if p == "..":
            depth -= 1
            if depth < 0:
                return True
        elif p not in ("", "."):
            depth += 1
    return False


def _clean_member(name: str, src: Source, what: str = "entry") -> str:
    """Docker's normalisation of one member name (unchanged when it needs none); a breakout
    is a CopyError."""
    absolute = name.startswith("/")
    if not absolute and ".." not in name.split("/"):
        return name
    parts: list[str] = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            elif not absolute:  # "/.." is "/" in filepath.Clean; a relative ".." stays and escapes
                raise CopyError(f"cannot extract {src.pattern!r}: {what} {name!r} would be written "
                                "outside the destination")
            continue
        parts.append(p)
    return "/".join(parts) or "."


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


def _write_entry(entry: Entry, out: Path, owner: tuple[int, int], chmod: int | SymbolicMode | None,
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
        dir_times.append((out, st))
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(entry.real, out, follow_symlinks=False)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(entry.real), out)
    elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        os.mknod(out, st.st_mode, st.st_rdev)
    else:
        return  # sockets are not copied, as docker does
    os.lchown(out, *owner)
    if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
        # after the chown, which clears set-user/group-ID bits
        os.chmod(out, apply_chmod(chmod, mode, stat.S_ISDIR(st.st_mode)))
    if not stat.S_ISDIR(st.st_mode):
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
