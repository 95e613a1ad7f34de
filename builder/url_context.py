"""Build contexts named by a URL: `pybuild build URL`, as `docker build` and BuildKit take them.

* A git repository: what `fetch.is_git_source` calls one (`git@host:repo.git`, `git://`,
  `ssh://`, an http(s) URL whose path ends in `.git`), plus `file://` URLs (git's own local
  transport). Docker's fragment `#REF:SUBDIR` picks a branch, tag or commit and the directory
  inside the repository that is the context. `fetch.checkout` (the fetcher `ADD <git url>`
  uses) checks it out; `.git` is not part of the context unless the build arg
  `BUILDKIT_CONTEXT_KEEP_GIT_DIR` is true, as for BuildKit.
* Any other http(s) URL is downloaded with `fetch.download` (the code `ADD <url>` uses). A tar
  (plain, gzip, bzip2, xz or zstd) is unpacked with tarsafe as a `-` context is
  (`unpack_context_tar`, shared with stdin); anything else is the Dockerfile itself, with an
  empty context ("if the URL is a text file, it's the Dockerfile", as docker puts it).

Everything is written under a directory the caller owns and removes, before the store is
touched. Errors are one line naming the URL with its credentials removed (`redact`): a
malformed URL is a `UsageError` (exit 2), anything the fetch meets a `PybuildError` (exit 1).
The context's content, never its temporary path, reaches the cache keys, so a second build of
the same URL and ref is fully cached.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pybuild.errors import PybuildError, UsageError

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
    """Unpack `archive` into `dest` with tarsafe (members escaping `dest`, device files and links
    pointing out are refused) when it is a tar, plain or gzip, bzip2, xz or zstd compressed;
    False (nothing written) when it is not one. A tar that cannot be unpacked: NotUsableTar."""
    import tarsafe

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
        with tarsafe.open(archive, "r:*") as tar:
            for m in tar.getmembers():  # tarsafe would refuse it as "returns true for isblk() or ischr()"
                if m.isblk() or m.ischr():
                    raise NotUsableTar(f"it holds a device file ({m.name!r}), which a build context may not")
            tar.extractall(dest)
    except (tarfile.TarError, tarsafe.TarSafeException, OSError, EOFError) as exc:
        raise NotUsableTar(str(exc)) from None
    return True


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (EOFError, OSError) as exc:  # a truncated gzip/bzip2/xz stream
        raise NotUsableTar(str(exc) or type(exc).__name__) from None
