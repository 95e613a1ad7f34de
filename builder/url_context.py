"""Build contexts named by a URL: `pybuild build URL`, as `docker build` and BuildKit take them.

* A git repository: what `fetch.is_git_source` calls one (`git@host:repo.git`, `git://`,
  `ssh://`, an http(s) URL whose path ends in `.git`), plus `file://` URLs (git's own local
  transport). Docker's fragment `#REF:SUBDIR` picks a branch, tag or commit and the directory
  inside the repository that is the context. `fetch.checkout` (the fetcher `ADD <git url>`
  uses) checks it out; `.git` is not part of the context unless the build arg
  `BUILDKIT_CONTEXT_KEEP_GIT_DIR` is true, as for BuildKit.
* Any other http(s) URL is downloaded with `fetch.download` (the code `ADD <url>` uses). A tar
  (plain, gzip, bzip2, xz or zstd) is unpacked as a `-` context is (`unpack_context_tar`,
  shared with stdin: symlinks kept with any target, nothing followed on the host); anything
  else is the Dockerfile itself, with an empty context ("if the URL is a text file, it's the
  Dockerfile", as docker puts it).

Everything is written under a directory the caller owns and removes, before the store is
touched. Errors are one line naming the URL with its credentials removed (`redact`): a
malformed URL is a `UsageError` (exit 2), anything the fetch meets a `PybuildError` (exit 1).
The context's content, never its temporary path, reaches the cache keys, so a second build of
the same URL and ref is fully cached.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pybuild.errors import PybuildError, UsageError
from pybuild.fdio import write_all

from .fetch import redact

URL_PREFIXES = ("http://", "https://", "git://", "ssh://", "git@", "file://")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SCP_LIKE = re.compile(r"git@[^\s:/@]+:[^\s]+")
_TRUE = ("1", "t", "T", "true", "TRUE", "True")  # Go's strconv.ParseBool, which BuildKit uses


class NotUsableTar(Exception):
    """A tar (or zstd data) that cannot be unpacked safely; the message says why."""


@dataclass(frozen=True)
class FetchedContext:
    directory: Path              # the context, inside the caller's temporary directory
    dockerfile: bytes | None     # a URL to a plain file: the Dockerfile itself (the context is empty)
    kind: str                    # "git" or "tar" or "dockerfile"
    commit: str | None = None    # the commit a git context was checked out at


def is_url_context(text: str) -> bool:
    """A context argument that names a URL rather than a directory (or `-`)."""
    return text.startswith(URL_PREFIXES)


def is_git_context(url: str) -> bool:
    from pybuild.builder import fetch

    return url.startswith("file://") or fetch.is_git_source(url)


def keep_git_dir(build_args: dict[str, str]) -> bool:
    """BuildKit's `--build-arg BUILDKIT_CONTEXT_KEEP_GIT_DIR=1` keeps `.git` in a git context."""
    return build_args.get("BUILDKIT_CONTEXT_KEEP_GIT_DIR", "") in _TRUE


def check_url(url: str) -> None:
    """A UsageError (exit 2) when `url` cannot name a context at all; nothing is fetched."""
    from pybuild.builder import fetch

    shown = redact(url)
    if any(c.isspace() for c in url):
        raise UsageError(f"build context {shown!r}: a URL cannot contain white space")
    if url.startswith("git@"):
        if not _SCP_LIKE.fullmatch(url.partition("#")[0]):
            raise UsageError(f"build context {shown!r}: expected git@HOST:PATH[#REF[:SUBDIR]]")
    else:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError as exc:
            # the parser's message may quote part of the user info (a password read as a port)
            why = "bad host or port" if "@" in url else str(exc)
            raise UsageError(f"build context {shown!r}: not a valid URL: {why}") from None
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise UsageError(f"build context {shown!r}: expected file:///ABSOLUTE/PATH[#REF[:SUBDIR]]")
        elif not parts.hostname:
            raise UsageError(f"build context {shown!r}: the URL names no host")
    if is_git_context(url):
        try:
            fetch.parse_git_ref(url)
        except fetch.FetchError as exc:
            raise UsageError(f"build context {shown!r}: {_reason(exc, url)}") from None


def fetch_context(url: str, dest: Path, *, keep_git: bool = False) -> FetchedContext:
    """Fetch the context `url` names into the existing empty directory `dest` (the caller's to
    remove, also on failure). Call `check_url` first."""
    from pybuild.builder import fetch

    shown = redact(url)
    if is_git_context(url):
        ref = fetch.parse_git_ref(url)
        into = dest / "git"
        into.mkdir()
        try:
            commit = fetch.checkout(ref, into, keep_git_dir=keep_git)
        except fetch.FetchError as exc:
            raise PybuildError(f"build context {shown}: {_reason(exc, ref.remote)}") from None
        return FetchedContext(into / "tree", None, "git", commit)
    into = dest / "download"
    into.mkdir()
    try:
        got = fetch.download(url, into, filename="context")
    except fetch.FetchError as exc:
        raise PybuildError(f"build context {shown}: {_reason(exc, url)}") from None
    context = dest / "context"
    context.mkdir()
    try:
        if unpack_context_tar(got.path, context):
            return FetchedContext(context, None, "tar")
    except NotUsableTar as exc:
        raise PybuildError(f"build context {shown}: not a usable tar: {exc}") from None
    data = got.path.read_bytes()
    if b"\0" in data[:8192]:
        raise PybuildError(f"build context {shown}: neither a tar (plain, gzip, bzip2, xz or zstd) "
                           "nor a text Dockerfile")
    return FetchedContext(context, data, "dockerfile")


def _reason(exc: Exception, prefix: str) -> str:
    """The FetchError's message without the leading `URL: ` (the caller names the URL once), and
    without credentials, also where a tool quoted them outside a URL."""
    text = str(exc)
    for shown in (prefix, redact(prefix)):  # fetch names the remote by its redacted form
        if text.startswith(shown + ": "):
            text = text[len(shown) + 2:]
            break
    text = redact(text)
    try:
        parts = urlsplit(prefix)
        secrets = [parts.password] + ([parts.username] if parts.scheme in ("http", "https") else [])
    except ValueError:
        secrets = []
    for secret in filter(None, secrets):
        text = text.replace(secret, "xxxxx")
    return text


def unpack_context_tar(archive: Path, dest: Path) -> bool:
    """Unpack `archive` into `dest` when it is a tar, plain or gzip, bzip2, xz or zstd
    compressed; False (nothing written) when it is not one. A tar that cannot be unpacked
    safely: NotUsableTar, whose message names the offending member.

    As `docker build -`: symlinks are stored as symlinks whatever they point at (`/etc/passwd`,
    `../../outside`) and are never followed on the host. Refused before anything is written:
    device files, members whose name is absolute or climbs out of `dest` with `..`, hard links
    whose target does; refused while unpacking: a member whose parent is a symlink (or not a
    directory) and a hard link whose target goes through one (`_ContextExtractor`).
    """
    with open(archive, "rb") as f:
        head = f.read(4)
    if head == _ZSTD_MAGIC:  # tarfile reads the other compressions itself ("r:*")
        plain = archive.with_name(archive.name + ".tar")
        try:
            import zstandard
        except ImportError:
            raise NotUsableTar("it is zstd-compressed, which needs the 'zstandard' Python package") from None
        try:
            with open(archive, "rb") as src, open(plain, "wb") as out:
                zstandard.ZstdDecompressor().copy_stream(src, out)
        except zstandard.ZstdError as exc:
            raise NotUsableTar(f"zstd: {exc}") from None
        if not _is_tar(plain):
            raise NotUsableTar("zstd-compressed data that is not a tar")
        archive = plain
    elif not _is_tar(archive):
        return False
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:  # every check that needs no file system, before anything is written
                if m.isblk() or m.ischr():
                    raise NotUsableTar(f"it holds a device file ({m.name!r}), which a build context may not")
                _ContextExtractor.plan(m)
            extractor = _ContextExtractor(dest)
            try:
                for m in members:
                    try:
                        extractor.member(tar, m)
                    except OSError as exc:
                        raise NotUsableTar(f"member {m.name!r}: {exc.strerror or exc}") from None
                    except (OverflowError, ValueError) as exc:  # e.g. an mtime out of range
                        raise NotUsableTar(f"member {m.name!r}: {exc}") from None
                extractor.finish()
            finally:
                extractor.close()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise NotUsableTar(str(exc)) from None
    return True


_O_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _context_parts(name: str, what: str) -> tuple[str, ...]:
    """The components of a member name (or hard link target) below the context root, `a/../b`
    read as `b` (docker cleans names lexically too); NotUsableTar for an absolute name or one
    whose `..` climbs out of the root."""
    if name.startswith("/"):
        raise NotUsableTar(f"{what} is an absolute path, which a build context tar may not hold")
    parts: list[str] = []
    for c in name.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if not parts:
                raise NotUsableTar(f"{what} climbs out of the context with '..'")
            parts.pop()
        else:
            parts.append(c)
    return tuple(parts)


class _ContextExtractor:
    """Writes members under a directory without ever following a symlink on the host: every
    parent is opened component by component from a directory fd with O_NOFOLLOW (a symlink or
    a non-directory there refuses the member), files are created with O_EXCL|O_NOFOLLOW after
    whatever held the name was unlinked (never written through), metadata is set on fds or with
    follow_symlinks=False. Symlinks are made as they are, with any target. The tarsafe package
    used before cannot do this: it refuses every symlink whose target, joined to the root,
    leaves it (each absolute link), and then lets tarfile.extractall write by path, following
    links; Python's extraction filters refuse the same links."""

    def __init__(self, dest: Path):
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.is_root = os.geteuid() == 0
        self.dirs: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []

    @staticmethod
    def plan(m: tarfile.TarInfo) -> tuple[str, ...]:
        """The member's components; NotUsableTar for what is refused by its header alone."""
        parts = _context_parts(m.name, f"member {m.name!r}")
        if not parts and not m.isdir():
            raise NotUsableTar(f"member {m.name!r} names the context root but is not a directory")
        if m.islnk():
            target = _context_parts(m.linkname, f"member {m.name!r}: its hard link target {m.linkname!r}")
            if not target:
                raise NotUsableTar(f"member {m.name!r}: its hard link target {m.linkname!r} is the context root")
        return parts

    def _open_dir(self, parts: tuple[str, ...], what: str, *, create: bool) -> int:
        """A new fd of the directory root/parts, created as needed with ``create``."""
        from pybuild.cache.layers import PathComponentError, open_dir_beneath

        try:
            return open_dir_beneath(self.root_fd, parts, create=create, flags=_O_DIR_NOFOLLOW)
        except PathComponentError as e:
            if e.kind == "missing":
                raise NotUsableTar(f"{what}: {e.path!r} does not exist") from None
            if e.kind == "symlink":
                raise NotUsableTar(f"{what} goes through the symlink {e.path!r}, which a build context "
                                   "tar may not write through") from None
            raise NotUsableTar(f"{what}: {e.path!r} is not a directory") from None

    def _chown(self, m: tarfile.TarInfo, base: str, pfd: int) -> None:
        if self.is_root:  # as tarfile did (numeric ids here: no look-up of the host's names)
            os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)

    def member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self.plan(m)
        if not parts:
            return  # "./": the context root itself keeps its mode
        base = parts[-1]
        pfd = self._open_dir(parts[:-1], f"member {m.name!r}", create=True)
        try:
            try:
                existing = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None and not (m.isdir() and stat.S_ISDIR(existing.st_mode)):
                if stat.S_ISDIR(existing.st_mode):  # a later member replaces a directory
                    shutil.rmtree(base, dir_fd=pfd)
                else:
                    os.unlink(base, dir_fd=pfd)  # a symlink is removed, never followed
            mtime = int(m.mtime)
            if m.isdir():
                if existing is None or not stat.S_ISDIR(existing.st_mode):
                    os.mkdir(base, 0o700, dir_fd=pfd)
                self.dirs.append((parts, m))  # mode and mtime once its content is written
            elif m.issym():
                os.symlink(m.linkname, base, dir_fd=pfd)
                self._chown(m, base, pfd)
                os.utime(base, (mtime, mtime), dir_fd=pfd, follow_symlinks=False)
            elif m.islnk():
                target = _context_parts(m.linkname, "")
                tfd = self._open_dir(target[:-1], f"member {m.name!r}: its hard link target {m.linkname!r}",
                                     create=False)
                try:
                    try:
                        tst = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
                    except FileNotFoundError:
                        raise NotUsableTar(f"member {m.name!r}: its hard link target {m.linkname!r} "
                                           "is not in the tar before it") from None
                    if stat.S_ISDIR(tst.st_mode):
                        raise NotUsableTar(f"member {m.name!r}: its hard link target {m.linkname!r} is a directory")
                    # a target that is a symlink is linked itself (linkat without AT_SYMLINK_FOLLOW)
                    os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
                finally:
                    os.close(tfd)
            elif m.isfifo():
                os.mkfifo(base, 0o600, dir_fd=pfd)
                self._chown(m, base, pfd)
                os.chmod(base, m.mode & 0o7777, dir_fd=pfd)  # just made, not a symlink
                os.utime(base, (mtime, mtime), dir_fd=pfd, follow_symlinks=False)
            else:  # regular (tarfile reads unknown types as regular files, as GNU tar does)
                fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=pfd)
                try:
                    src = tar.extractfile(m)
                    if src is not None:
                        while chunk := src.read(1 << 20):
                            write_all(fd, chunk)
                    if self.is_root:
                        os.fchown(fd, m.uid, m.gid)
                    os.fchmod(fd, m.mode & 0o7777)  # after the chown, which clears set-user-ID
                    os.utime(fd, (mtime, mtime))
                finally:
                    os.close(fd)
        finally:
            os.close(pfd)

    def finish(self) -> None:
        """Directories' owners, modes and mtimes, deepest last-written first, after their content;
        one a later member replaced (by a file or a symlink) is skipped."""
        for parts, m in reversed(self.dirs):
            try:
                fd = self._open_dir(parts, "", create=False)
            except NotUsableTar:
                continue
            try:
                if self.is_root:
                    os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, m.mode & 0o7777)
                os.utime(fd, (int(m.mtime), int(m.mtime)))
            finally:
                os.close(fd)

    def close(self) -> None:
        os.close(self.root_fd)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (EOFError, OSError) as exc:  # a truncated gzip/bzip2/xz stream
        raise NotUsableTar(str(exc) or type(exc).__name__) from None
