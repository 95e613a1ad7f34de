"""ADD of remote sources: HTTP(S) URLs and git repositories, against servers on 127.0.0.1.

The HTTP server runs in a thread of the test process; git repositories are served over
git's "dumb" HTTP protocol (a bare repository after `git update-server-info`, served as
plain files), which is what a static file server can offer and needs no git daemon.
Each build writes its filesystem with `--output type=tar` so the test can read modes,
owners and mtimes exactly as the layer recorded them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

LAST_MODIFIED = 1_600_000_000  # 2020-09-13T12:26:40Z


class _Handler(SimpleHTTPRequestHandler):
    """Static files, plus /redirect/<path> -> 302 to /<path>."""

    requests: list[str] = []  # paths asked for, reset by the fixture

    def do_GET(self):  # http.server calls it by this name
        _Handler.requests.append(self.path)
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect"):])
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """(directory served, base URL) of an HTTP server on 127.0.0.1 for this test."""
    root = tmp_path / "www"
    root.mkdir()
    _Handler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _serve(root: Path, name: str, data: bytes) -> str:
    p = root / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, (LAST_MODIFIED, LAST_MODIFIED))  # SimpleHTTPRequestHandler sends it as Last-Modified
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _context(tmp_path: Path, dockerfile: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def _build_tar(cli, ctx: Path, tmp_path: Path, *extra: str) -> dict[str, tarfile.TarInfo]:
    out = tmp_path / "fs.tar"
    cli("build", "--progress", "plain", "-o", f"type=tar,dest={out}", *extra, str(ctx), check=True)
    with tarfile.open(out) as tf:
        return {m.name.lstrip("./").rstrip("/"): m for m in tf.getmembers()}


def _read(tmp_path: Path, name: str) -> bytes:
    with tarfile.open(tmp_path / "fs.tar") as tf:
        for m in tf.getmembers():
            if m.name.lstrip("./") == name:
                return tf.extractfile(m).read()
    raise KeyError(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- HTTP ---------------------------------------------------------------------------------------

def test_add_url_is_downloaded_not_extracted_with_buildkit_metadata(cli, tmp_path, http_root):
    """Reference, "Adding files from a URL": the destination has permissions of 600; the
    Last-Modified header sets the mtime; a remote tar archive is not extracted; with a
    trailing slash the file name comes from the URL path. --chown/--chmod still apply."""
    root, base = http_root
    tar_bytes = tmp_path / "payload.tar.gz"
    with tarfile.open(tar_bytes, "w:gz") as tf:
        info = tarfile.TarInfo("inside.txt")
        tf.addfile(info)
    _serve(root, "files/payload.tar.gz", tar_bytes.read_bytes())
    _serve(root, "files/tool", b"#!/bin/sh\necho tool\n")
    ctx = _context(tmp_path, f"FROM scratch\nADD {base}/files/payload.tar.gz /dl/\n"
                             f"ADD --chown=5:6 --chmod=755 {base}/files/tool /usr/bin/renamed\n")
    members = _build_tar(cli, ctx, tmp_path)
    assert "dl/payload.tar.gz" in members and "dl/inside.txt" not in members
    archive = members["dl/payload.tar.gz"]
    assert (archive.mode, archive.uid, archive.gid, archive.mtime) == (0o600, 0, 0, LAST_MODIFIED)
    assert _read(tmp_path, "dl/payload.tar.gz") == tar_bytes.read_bytes()
    tool = members["usr/bin/renamed"]
    assert (tool.mode, tool.uid, tool.gid) == (0o755, 5, 6)


def test_add_url_unpack_true_extracts(cli, tmp_path, http_root):
    """Reference, ADD --unpack: `ADD --unpack=true https://example.com/archive.tar.gz /download`
    downloads and unpacks."""
    root, base = http_root
    src = tmp_path / "a.tar"
    with tarfile.open(src, "w") as tf:
        data = tmp_path / "x.txt"
        data.write_text("x\n")
        tf.add(data, arcname="sub/x.txt")
    _serve(root, "a.tar", src.read_bytes())
    ctx = _context(tmp_path, f"FROM scratch\nADD --unpack=true {base}/a.tar /download\n")
    members = _build_tar(cli, ctx, tmp_path)
    assert "download/sub/x.txt" in members and "download/a.tar" not in members


def test_add_url_checksum_verified_and_mismatch_names_the_line(cli, tmp_path, http_root):
    """Reference, ADD --checksum: "For HTTP sources, the checksum is the SHA-256 content
    digest, formatted as sha256:<hash>". A mismatch fails the build and tags nothing."""
    root, base = http_root
    digest = _serve(root, "blob.bin", b"the right bytes")
    ok = _context(tmp_path, f"FROM scratch\nADD --checksum={digest} {base}/blob.bin /blob\n")
    _build_tar(cli, ok, tmp_path)
    assert _read(tmp_path, "blob") == b"the right bytes"

    wrong = "sha256:" + "0" * 64
    (ok / "Dockerfile").write_text(f"FROM scratch\n\nADD --checksum={wrong} {base}/blob.bin /blob\n")
    res = cli("build", "-t", "bad:1", str(ok))
    assert res.code == 1
    col = len(f"ADD --checksum={wrong} ") + 1  # the URL's
    assert re.search(rf"Dockerfile:3:{col}: ADD {re.escape(base)}/blob.bin failed: .*checksum mismatch: "
                     rf"expected {wrong}, downloaded content is {digest}", res.stderr), res.stderr
    assert "bad:1" not in cli("images").stdout


def test_add_url_with_checksum_is_keyed_by_the_checksum_without_downloading(cli, tmp_path, http_root):
    """With --checksum the checksum alone can key the step (BuildKit's HTTP source uses it as
    the cache key): a rebuild hits the cache even when the server no longer has the file;
    only a step that must run downloads it."""
    root, base = http_root
    digest = _serve(root, "pinned.bin", b"pinned content\n")
    ctx = _context(tmp_path, f"FROM busybox:latest\nADD --checksum={digest} {base}/pinned.bin /p.bin\n"
                             "RUN cat /p.bin\n")
    cli("build", "--progress", "plain", "-t", "pin:1", str(ctx), check=True)
    (root / "pinned.bin").unlink()
    again = cli("build", "--progress", "plain", "-t", "pin:1", str(ctx), check=True)
    assert re.search(r"#\d+ \[2/3\] ADD .*\n#\d+ CACHED", again.stderr), again.stderr
    res = cli("build", "--progress", "plain", "--no-cache", "-t", "pin:1", str(ctx))
    assert res.code == 1 and "HTTP 404" in res.stderr, res.stderr
    assert cli("run", "pin:1", "cat", "/p.bin", check=True).stdout == "pinned content\n"


@pytest.mark.parametrize("flag, message", [
    ("--checksum=md5:abc", r"--checksum=md5:abc: expected sha256:<64 lowercase hex digits>"),
    ("--checksum=", r"ADD --checksum needs a value"),
])
def test_add_url_bad_checksum_syntax(cli, tmp_path, http_root, flag, message):
    root, base = http_root
    _serve(root, "f", b"f")
    ctx = _context(tmp_path, f"FROM scratch\nADD {flag} {base}/f /f\n")
    res = cli("build", str(ctx))
    assert res.code == 1 and re.search(r"Dockerfile:2:16: .*" + message, res.stderr), res.stderr


def test_add_checksum_on_a_local_file_is_refused(cli, tmp_path):
    """BuildKit: "checksum can't be specified for non-HTTP(S) sources" (local files are not checked)."""
    ctx = _context(tmp_path, "FROM scratch\nADD --checksum=sha256:" + "a" * 64 + " Dockerfile /x\n")
    res = cli("build", str(ctx))
    assert res.code == 1 and "Dockerfile:2:5: ADD --checksum needs exactly one source, a URL" in res.stderr


def test_add_url_errors_are_clear(cli, tmp_path, http_root):
    """An HTTP error or an unreachable server fails the step, naming the URL and the line."""
    _, base = http_root
    ctx = _context(tmp_path, f"FROM scratch\nADD {base}/missing.bin /x\n")
    res = cli("build", str(ctx))
    assert res.code == 1
    assert re.search(rf"Dockerfile:2:5: ADD {re.escape(base)}/missing.bin failed: .*HTTP 404", res.stderr), res.stderr

    dead = f"http://127.0.0.1:{_free_port()}/file"
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD {dead} /x\n")
    res = cli("build", str(ctx))
    assert res.code == 1
    assert re.search(rf"Dockerfile:2:5: ADD {re.escape(dead)} failed: .*connection refused", res.stderr), res.stderr


def test_add_url_follows_redirects_and_names_file_after_the_written_url(cli, tmp_path, http_root):
    """BuildKit's frontend names the file after the URL in the Dockerfile (path.Base of its
    path), not after the redirect's target."""
    root, base = http_root
    _serve(root, "real/target.txt", b"target\n")
    ctx = _context(tmp_path, f"FROM scratch\nADD {base}/redirect/real/target.txt /r/\n")
    members = _build_tar(cli, ctx, tmp_path)
    assert "r/target.txt" in members
    assert _read(tmp_path, "r/target.txt") == b"target\n"


def test_add_url_cache_key_is_the_content(cli, tmp_path, http_root):
    """BuildKit re-checks the URL on every build and reuses the step while the content's
    digest is the same; new content is a miss."""
    root, base = http_root
    _serve(root, "v.txt", b"one\n")
    ctx = _context(tmp_path, f"FROM busybox:latest\nADD {base}/v.txt /v.txt\nRUN cat /v.txt\n")
    cli("build", "--progress", "plain", "-t", "u:1", str(ctx), check=True)
    again = cli("build", "--progress", "plain", "-t", "u:1", str(ctx), check=True)
    assert re.search(r"#\d+ \[2/3\] ADD .*\n#\d+ CACHED", again.stderr), again.stderr
    _serve(root, "v.txt", b"two\n")
    changed = cli("build", "--progress", "plain", "-t", "u:1", str(ctx), check=True)
    assert not re.search(r"#\d+ \[2/3\] ADD .*\n#\d+ CACHED", changed.stderr), changed.stderr
    assert cli("run", "u:1", "cat", "/v.txt", check=True).stdout == "two\n"


# -- git ----------------------------------------------------------------------------------------

def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_AUTHOR_DATE": "2021-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2021-01-01T00:00:00Z"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def git_remote(tmp_path, http_root):
    """A repository served over dumb HTTP: (work tree, bare repo, URL, publish())."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed (.ci/run installs it)")
    root, base = http_root
    work = tmp_path / "work"
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    (work / "docs").mkdir()
    (work / "docs" / "guide.md").write_text("guide v1\n")
    (work / "build.sh").write_text("#!/bin/sh\necho build\n")
    os.chmod(work / "build.sh", 0o700)
    (work / "README").write_text("readme\n")
    os.chmod(work / "README", 0o600)
    _git(work, "add", ".")
    _git(work, "commit", "-qm", "one")
    _git(work, "tag", "-a", "v1", "-m", "v1")
    bare = root / "repo.git"

    def publish() -> None:
        if not bare.exists():
            _git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
        else:
            _git(work, "push", "-q", "--tags", str(bare), "main")
        _git(bare, "update-server-info")

    publish()
    return work, bare, f"{base}/repo.git", publish


def test_add_git_default_branch_modes_and_no_git_dir(cli, tmp_path, git_remote):
    """Reference, "Adding files from a Git repository": files are 644, or 755 when executable
    in git; directories 755; the .git directory is excluded by default."""
    _, _, url, _ = git_remote
    ctx = _context(tmp_path, f"FROM scratch\nADD {url} /src/\n")
    members = _build_tar(cli, ctx, tmp_path)
    assert members["src/build.sh"].mode == 0o755
    assert members["src/README"].mode == 0o644
    assert members["src/docs"].mode == 0o755 and members["src/docs/guide.md"].mode == 0o644
    assert not any(name.startswith("src/.git") for name in members)
    assert _read(tmp_path, "src/docs/guide.md") == b"guide v1\n"


def test_add_git_ref_and_subdir_fragment(cli, tmp_path, git_remote):
    """Reference: `ADD git@github.com:moby/buildkit.git#v0.14.1:docs /buildkit-docs` adds the
    docs directory of the v0.14.1 tag. A later commit on main does not change the tag's tree."""
    work, _, url, publish = git_remote
    (work / "docs" / "guide.md").write_text("guide v2\n")
    _git(work, "commit", "-qam", "two")
    publish()
    ctx = _context(tmp_path, f"FROM scratch\nADD {url}#v1:docs /tagged\nADD {url}#main:docs /main\n")
    members = _build_tar(cli, ctx, tmp_path)
    assert "tagged/guide.md" in members and "tagged/build.sh" not in members
    assert _read(tmp_path, "tagged/guide.md") == b"guide v1\n"
    assert _read(tmp_path, "main/guide.md") == b"guide v2\n"


def test_add_git_keep_git_dir_and_checksum(cli, tmp_path, git_remote):
    """Reference: --keep-git-dir=true preserves .git; --checksum for git is the commit SHA or
    a prefix of it, and a wrong one fails the build."""
    work, _, url, _ = git_remote
    commit = _git(work, "rev-parse", "HEAD")
    ctx = _context(tmp_path, f"FROM scratch\nADD --keep-git-dir=true --checksum={commit[:10]} {url} /repo\n")
    members = _build_tar(cli, ctx, tmp_path)
    assert "repo/.git/HEAD" in members
    # Without the flag, the same commit is another step (no .git), not a cache hit of this one.
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD {url} /repo\n")
    assert not any(name.startswith("repo/.git") for name in _build_tar(cli, ctx, tmp_path))
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD --checksum=0000000 {url} /repo\n")
    res = cli("build", str(ctx))
    assert res.code == 1
    assert re.search(rf"Dockerfile:2:24: ADD {re.escape(url)} failed: .*checksum mismatch: expected commit 0000000, "
                     rf"HEAD is {commit}", res.stderr), res.stderr


def test_add_git_cache_follows_the_commit(cli, tmp_path, git_remote):
    """The step's key comes from the resolved commit (and the tree it checks out): the same
    commit is a hit; a new commit on the branch is a miss."""
    work, _, url, publish = git_remote
    ctx = _context(tmp_path, f"FROM busybox:latest\nADD {url}#main /src\nRUN cat /src/docs/guide.md\n")
    cli("build", "--progress", "plain", "-t", "g:1", str(ctx), check=True)
    again = cli("build", "--progress", "plain", "-t", "g:1", str(ctx), check=True)
    assert re.search(r"#\d+ \[2/3\] ADD .*\n#\d+ CACHED", again.stderr), again.stderr
    (work / "docs" / "guide.md").write_text("guide v3\n")
    _git(work, "commit", "-qam", "three")
    publish()
    changed = cli("build", "--progress", "plain", "-t", "g:1", str(ctx), check=True)
    assert "guide v3" in changed.stderr, changed.stderr


def test_add_git_cache_hit_needs_no_clone_and_abbreviated_commits_resolve(cli, tmp_path, git_remote):
    """BuildKit's git source keys the step by the commit `ls-remote` resolves, so a cache hit
    reads the remote's refs but none of its objects. An abbreviated commit can only be
    resolved by fetching, which then happens on every build."""
    work, _, url, _ = git_remote
    ctx = _context(tmp_path, f"FROM busybox:latest\nADD {url}#v1 /src\nRUN cat /src/README\n")
    cli("build", "--progress", "plain", "-t", "g:1", str(ctx), check=True)
    assert any("/objects/" in p for p in _Handler.requests)
    _Handler.requests.clear()
    again = cli("build", "--progress", "plain", "-t", "g:1", str(ctx), check=True)
    assert re.search(r"#\d+ \[2/3\] ADD .*\n#\d+ CACHED", again.stderr), again.stderr
    assert _Handler.requests and not any("/objects/" in p for p in _Handler.requests), _Handler.requests

    short = _git(work, "rev-parse", "--short=9", "v1^{commit}")
    (ctx / "Dockerfile").write_text(f"FROM busybox:latest\nADD {url}#{short} /src\nRUN cat /src/README\n")
    res = cli("build", "--progress", "plain", "-t", "g:2", str(ctx), check=True)
    assert "readme" in res.stderr, res.stderr


def test_add_git_unreachable_or_unknown_ref_is_an_error(cli, tmp_path, git_remote):
    """Never a silent skip: a remote nobody serves, or a ref it does not have, fails the step."""
    _, _, url, _ = git_remote
    dead = f"http://127.0.0.1:{_free_port()}/nothing.git"
    ctx = _context(tmp_path, f"FROM scratch\nADD {dead} /x\n")
    res = cli("build", str(ctx))
    assert res.code == 1 and re.search(rf"Dockerfile:2:5: ADD {re.escape(dead)} failed: .*cannot fetch", res.stderr), \
        res.stderr
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD {url}#no-such-branch /x\n")
    res = cli("build", str(ctx))
    assert res.code == 1 and "no branch, tag or commit named 'no-such-branch'" in res.stderr, res.stderr
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD {url}#main:nodir /x\n")
    res = cli("build", str(ctx))
    assert res.code == 1 and "'nodir' is not a directory" in res.stderr, res.stderr


# -- the fetch module on its own ----------------------------------------------------------------

def test_source_kinds_and_names_are_parsed_as_buildkit_does():
    from pybuild.builder import fetch

    assert fetch.is_git_source("git@github.com:moby/buildkit.git#v0.14.1:docs")
    assert fetch.is_git_source("https://github.com/user/repo.git")
    assert fetch.is_git_source("https://host/repo.git#main:sub/dir")
    assert not fetch.is_git_source("https://example.com/archive.zip")
    assert fetch.parse_git_ref("git@h:r.git#v0.14.1:docs") == fetch.GitRef("git@h:r.git", "v0.14.1", "docs")
    assert fetch.parse_git_ref("https://h/r.git") == fetch.GitRef("https://h/r.git", None, None)
    with pytest.raises(fetch.FetchError):
        fetch.parse_git_ref("https://h/r.git#main:../up")
    # path.Base of the URL path; "__unnamed__" for an empty path, as the Dockerfile frontend does
    assert fetch.url_filename("http://example.com/foobar") == "foobar"
    assert fetch.url_filename("http://example.com/a/b%20c.tar.gz?x=1#f") == "b c.tar.gz"
    assert fetch.url_filename("http://example.com") == "__unnamed__"


def test_checkout_is_shallow_when_the_server_allows_it(tmp_path, git_remote):
    """Over git's smart protocol (here file://, which speaks it) the fetch is --depth=1: the
    kept .git is shallow and holds only the wanted commit."""
    from pybuild.builder import fetch

    work, bare, _, _ = git_remote
    (work / "README").write_text("second\n")
    _git(work, "commit", "-qam", "two")
    _git(work, "push", "-q", str(bare), "main")
    dest = tmp_path / "co"
    dest.mkdir()
    commit = fetch.checkout(fetch.GitRef(f"file://{bare}", "v1", None), dest, keep_git_dir=True)
    assert commit == _git(work, "rev-parse", "v1^{commit}")
    assert (dest / "tree" / ".git" / "shallow").is_file()
    assert _git(dest / "tree", "rev-list", "--count", "HEAD") == "1"
    assert (dest / "tree" / "README").read_text() == "readme\n"
