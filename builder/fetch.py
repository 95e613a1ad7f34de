"""Remote ADD sources: HTTP(S) downloads and git repositories, fetched into a local staging dir.

The solver stages each remote source in a temporary directory it owns (and removes), then
copies from there like any other source; this module only fetches:

* `download(url, dest_dir, ...)` writes one file as BuildKit's HTTP source does: mode 0600,
  mtime from `Last-Modified`, named after the URL path; `--checksum=sha256:` is verified
  before the file is kept. Redirects are followed.
* `checkout(ref, dest_dir, ...)` clones a git ref with the git CLI (shallow when the server
  allows it), keeps only `subdir`, drops `.git` unless asked to keep it, and returns the
  resolved commit, which the cache key names.

Nothing here is silent: an unreachable host, an HTTP error, a checksum mismatch or a git
failure raises `FetchError` with the reason. Parsing (`is_git_source`, `parse_git_ref`,
`url_filename`) is pure.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

_CHUNK = 1 << 20
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
GIT_TIMEOUT_S = 600


class FetchError(Exception):
    """A remote source could not be fetched or verified; the message says which and why."""


@dataclass(frozen=True)
class GitRef:
    remote: str          # what `git fetch` is given
    ref: str | None      # branch, tag or commit after '#'; None means the remote's HEAD
    subdir: str | None   # the part after ':' in the fragment


@dataclass(frozen=True)
class Downloaded:
    path: Path
    digest: str          # "sha256:<hex>" of the content
    mtime: int | None    # from Last-Modified, when the server sent one


def is_http_source(src: str) -> bool:
    return src.startswith(("http://", "https://"))


_URL_TOKEN = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"]*)")


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it removed: all user info of an http(s) URL
    (a token is often the user name), the password of any other (`ssh://git@host` keeps `git`).

    The user info ends at the URL's *last* `@`, so a password holding `@ / # ?` is removed
    whole; when in doubt (an `@` in a path after `host:port`, or in a fragment) more is
    removed, never less."""
    def strip(m: re.Match) -> str:
        scheme, rest = m["scheme"], m["rest"]
        at = rest.rfind("@")
        if at == -1:
            return m[0]
        userinfo = rest[:at]
        if "/" in userinfo and ":" not in userinfo.split("/", 1)[0]:
            return m[0]  # `host/path@x`: an @ in the path, no user info
        user = userinfo.split(":", 1)[0]
        if scheme.lower() in ("http://", "https://") or "/" in user or "#" in user or "?" in user:
            return scheme + rest[at + 1:]
        return f"{scheme}{user}@{rest[at + 1:]}"
    return _URL_TOKEN.sub(strip, text)


def is_git_source(src: str) -> bool:
    """BuildKit's rule of thumb: git@ / git:// / ssh:// addresses, and http(s) URLs whose
    path ends in `.git` (a `#ref:subdir` fragment allowed)."""
    if src.startswith(("git@", "git://", "ssh://")):
        return True
    if is_http_source(src):
        return urlsplit(src).path.rstrip("/").endswith(".git")
    return False


def parse_git_ref(src: str) -> GitRef:
    """`remote#ref:subdir` -> GitRef; an empty ref means the default branch."""
    remote, _, fragment = src.partition("#")
    ref, _, subdir = fragment.partition(":")
    if ref.startswith("-") or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in ref):
        # a ref reaches git's command line: "--upload-pack=..." would be an option, run on the host
        raise FetchError(f"{redact(remote)}: {ref!r} is not a branch, tag or commit name")
    subdir = subdir.strip("/") or None
    if subdir is not None and ".." in subdir.split("/"):
        raise FetchError(f"{src}: subdirectory {subdir!r} climbs out of the repository")
    return GitRef(remote=remote, ref=ref or None, subdir=subdir)


def url_filename(url: str) -> str:
    """The file name BuildKit's Dockerfile frontend gives a download: the URL path's last
    component, "__unnamed__" when the path is empty or "/"."""
    path = unquote(urlsplit(url).path)
    if path in ("", "/"):
        return "__unnamed__"
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name if name not in ("", ".", "..") else "__unnamed__"


def check_checksum_syntax(checksum: str) -> None:
    if not _SHA256.fullmatch(checksum):
        raise FetchError(f"--checksum={checksum}: expected sha256:<64 lowercase hex digits>")


def download(url: str, dest_dir: Path, *, filename: str, checksum: str | None = None,
             timeout_s: float = 60.0) -> Downloaded:
    """GET `url` into `dest_dir/filename` (mode 0600, mtime from Last-Modified).

    The body is streamed to a temporary name and renamed only once complete and, with
    `checksum`, verified; on any failure no file is left behind.
    """
    import requests  # heavy import, only when a build has a URL source

    if checksum is not None:
        check_checksum_syntax(checksum)
    final = dest_dir / filename
    partial = dest_dir / f".{filename}.partial"
    h = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=timeout_s, allow_redirects=True) as resp:
            if resp.status_code >= 400:
                raise FetchError(f"{url}: HTTP {resp.status_code} {resp.reason}")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                for chunk in resp.iter_content(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            last_modified = resp.headers.get("Last-Modified")
    except requests.RequestException as exc:
        partial.unlink(missing_ok=True)
        raise FetchError(f"{url}: {_request_reason(exc)}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    digest = "sha256:" + h.hexdigest()
    if checksum is not None and digest != checksum:
        partial.unlink(missing_ok=True)
        raise FetchError(f"{url}: checksum mismatch: expected {checksum}, downloaded content is {digest}")
    os.chmod(partial, 0o600)
    mtime = _http_date(last_modified)
    if mtime is not None:
        os.utime(partial, (mtime, mtime))
    os.replace(partial, final)
    return Downloaded(final, digest, mtime)


def _request_reason(exc: Exception) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text


def _http_date(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None  # an unparsable header is ignored, as Go's http.ParseTime failure is by BuildKit


def resolve_commit(ref: GitRef) -> str | None:
    """The commit `ref` names on the remote, asked with `git ls-remote` (nothing is cloned), as
    BuildKit's git source computes its cache key; None when only a fetch can tell (an
    abbreviated commit). An unreachable remote or an unknown name is a FetchError."""
    want = ref.ref or "HEAD"
    if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", want):
        return want
    _require_git()
    res = _git(Path("/"), "ls-remote", "origin", check=False, remote=ref.remote)
    if res.returncode != 0:
        raise FetchError(f"{redact(ref.remote)}: cannot fetch: {_last_line(res.stderr)}")
    refs: dict[str, str] = {}
    for line in res.stdout.splitlines():
        sha, _, name = line.partition("\t")
        refs[name.strip()] = sha.strip()
    names = (["HEAD"] if want == "HEAD" else
             [f"refs/tags/{want}^{{}}", f"refs/tags/{want}", f"refs/heads/{want}", f"{want}^{{}}", want])
    for name in names:  # a tag wins over a branch of the same name, as in git's own lookup order
        if name in refs:
            return refs[name]
    if re.fullmatch(r"[0-9a-f]{4,39}", want):
        return None
    raise FetchError(f"{redact(ref.remote)}: no branch, tag or commit named {want!r}")


def _require_git() -> None:
    if shutil.which("git") is None:
        raise FetchError("a git repository (ADD or a build context) needs the git command, which is not installed")


def checkout(ref: GitRef, dest_dir: Path, *, keep_git_dir: bool = False, checksum: str | None = None,
             expect: str | None = None) -> str:
    """Fetch `ref` into the empty dir `dest_dir` and return the resolved commit.

    Afterwards `dest_dir` holds the tree (only `ref.subdir` when given, at the top), files
    0644 or 0755 (executable in git) and directories 0755 as BuildKit's git source writes
    them, every mtime the commit's time so the tree is the same on every machine; `.git`
    is removed unless `keep_git_dir`. `checksum` (ADD --checksum for git) is a commit or a
    prefix of one that the resolved commit must match; `expect` is the commit `resolve_commit`
    found, which the fetched one must still be. On failure the caller removes `dest_dir`.
    """
    _require_git()
    repo = dest_dir / "repo"
    repo.mkdir()
    _git(repo, "init", "--quiet")
    want = ref.ref or "HEAD"
    # Shallow first; the dumb HTTP protocol and servers refusing a bare commit need a full fetch.
    # The remote's URL (which may hold credentials) reaches git through its environment, never
    # a command line (ps shows those) nor .git/config (kept with --keep-git-dir).
    if _git(repo, "fetch", "--quiet", "--depth=1", "--no-tags", "origin", want, check=False,
            remote=ref.remote).returncode != 0:
        full = _git(repo, "fetch", "--quiet", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*",
                    check=False, remote=ref.remote)
        if full.returncode != 0:
            raise FetchError(f"{redact(ref.remote)}: cannot fetch: {_last_line(full.stderr)}")
        commit = _resolve_after_full_fetch(repo, ref)
    else:
        commit = _git(repo, "rev-parse", "FETCH_HEAD^{commit}").stdout.strip()
    if expect is not None and commit != expect:
        raise FetchError(f"{redact(ref.remote)}: {want} moved from {expect} to {commit} during the build; build again")
    if checksum is not None and not commit.startswith(checksum):
        raise FetchError(f"{redact(ref.remote)}: checksum mismatch: expected commit {checksum}, {want} is {commit}")
    _git(repo, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit)
    when = int(_git(repo, "show", "-s", "--format=%ct", commit).stdout.strip())
    tree = repo
    if ref.subdir:
        # Resolved, and checked to stay inside the checkout: a symlink in the repository
        # (`ln -> /etc`) must not make a host directory the context, nor be moved and deleted.
        real_repo, tree = os.path.realpath(repo), Path(os.path.realpath(repo / ref.subdir))
        inside = os.path.commonpath([real_repo, tree]) == real_repo and tree != Path(real_repo)
        if not inside or ".git" in tree.relative_to(real_repo).parts or tree.is_symlink() or not tree.is_dir():
            raise FetchError(f"{redact(ref.remote)}: {ref.subdir!r} is not a directory of the repository "
                             f"at commit {commit}")
    if not keep_git_dir:
        shutil.rmtree(repo / ".git")
    else:
        _git(repo, "remote", "add", "origin", redact(ref.remote))  # as BuildKit keeps it, minus credentials
    out = dest_dir / "tree"
    os.rename(tree, out)
    if out != repo and repo.exists():
        shutil.rmtree(repo)
    _normalise_tree(out, when)
    return commit


def _resolve_after_full_fetch(repo: Path, ref: GitRef) -> str:
    candidates = (["refs/remotes/origin/HEAD", "refs/remotes/origin/main", "refs/remotes/origin/master"]
                  if ref.ref is None else
                  [f"refs/remotes/origin/{ref.ref}", f"refs/tags/{ref.ref}", ref.ref])
    if ref.ref is None:
        head = _git(repo, "ls-remote", "--symref", "origin", "HEAD", check=False, remote=ref.remote)
        m = re.search(r"ref: refs/heads/(\S+)\s+HEAD", head.stdout)
        if m:
            candidates.insert(0, f"refs/remotes/origin/{m.group(1)}")
    for name in candidates:
        res = _git(repo, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", check=False)
        if res.returncode == 0:
            return res.stdout.strip()
    raise FetchError(f"{redact(ref.remote)}: no branch, tag or commit named {ref.ref or 'HEAD'!r}")


def _normalise_tree(root: Path, mtime: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        in_git = ".git" in Path(dirpath).relative_to(root).parts
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not in_git and stat.S_ISREG(st.st_mode):
                os.chmod(p, 0o755 if st.st_mode & 0o100 else 0o644)
            os.utime(p, (mtime, mtime), follow_symlinks=False)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not in_git and not os.path.islink(p):
                os.chmod(p, 0o755)
            os.utime(p, (mtime, mtime), follow_symlinks=False)
    os.chmod(root, 0o755)
    os.utime(root, (mtime, mtime))


def _git(repo: Path, *args: str, check: bool = True, remote: str | None = None) -> subprocess.CompletedProcess:
    """git in ``repo``; with ``remote``, the remote named ``origin`` is that URL, given through
    GIT_CONFIG_* environment variables so it appears in no command line and no config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C",
                "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
                "GIT_CONFIG_COUNT": "0"})
    if remote is not None:
        env.update({"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "remote.origin.url", "GIT_CONFIG_VALUE_0": remote,
                    "GIT_CONFIG_KEY_1": "remote.origin.fetch",
                    "GIT_CONFIG_VALUE_1": "+refs/heads/*:refs/remotes/origin/*"})
    env.pop("GIT_DIR", None)
    try:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env,
                             timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise FetchError(f"git {args[0]} timed out after {GIT_TIMEOUT_S} s") from None
    if check and res.returncode != 0:
        raise FetchError(f"git {args[0]} failed: {_last_line(res.stderr)}")
    return res


def _last_line(text: str) -> str:
    """The line of git's stderr that says why: its first `fatal:`/`error:` line, or, when that is
    the generic "Could not read from remote repository." (an ssh failure, whose stderr ends with
    advice), the transport's own line before it; else the last line."""
    lines = [redact(ln.strip()) for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return "no error output"
    for i, line in enumerate(lines):
        if line.startswith(("fatal:", "error:")):
            if line == "fatal: Could not read from remote repository." and i > 0:
                return lines[i - 1]
            return line
    return lines[-1]
