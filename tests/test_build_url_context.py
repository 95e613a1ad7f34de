"""`pybuild build URL`: git repositories and http(s) tarballs or Dockerfiles as the build context.

As `docker build` / BuildKit: a git URL with `#REF:SUBDIR` is checked out (by builder/fetch.py,
the fetcher `ADD <git url>` uses) and SUBDIR is the context, `-f` a path inside it; an http(s)
URL is a context tar (unpacked as a `-` context is) or, when it is a plain file, the Dockerfile
with an empty context. Servers run on 127.0.0.1 only: the git repository is served over
`file://` (git's smart protocol) and over dumb HTTP by the ADD tests' fixtures; tarballs by the
same HTTP server. The context lives in a temporary directory that is gone after every build,
failed or interrupted ones included.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import lzma
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from test_build_copy_remote import _free_port, _git, _serve, git_remote, http_root  # noqa: F401 (fixtures)

APP_DOCKERFILE = "FROM busybox:latest\nCOPY . /src\nRUN cat /src/hello.txt && ls -a /src\n"


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch) -> Path:
    """The store's tmp dir, where a URL or stdin context lives during a build (TMPDIR is set to
    an empty dir too, to show nothing goes there)."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp_path / "store" / "tmp"


def _leftovers(store_tmp: Path) -> list[str]:
    """Whatever a build left in the store's tmp dir, or in TMPDIR."""
    tmpdir = store_tmp.parent.parent / "tmpdir"
    left = [p.name for p in store_tmp.iterdir()] if store_tmp.exists() else []
    return sorted(left + [p.name for p in tmpdir.iterdir()])


@pytest.fixture
def app_repo(git_remote):
    """The ADD tests' repository with an app/ directory (the context) tagged v2, then a newer
    commit on main: (work tree, bare repo, http URL, publish())."""
    work, bare, url, publish = git_remote
    (work / "app" / "ci").mkdir(parents=True)
    (work / "app" / "Dockerfile").write_text(APP_DOCKERFILE)
    (work / "app" / "hello.txt").write_text("hello v2\n")
    (work / "app" / "ci" / "Dockerfile.ci").write_text("FROM scratch\nCOPY hello.txt /from-ci\n")
    _git(work, "add", ".")
    _git(work, "commit", "-qm", "app")
    _git(work, "tag", "-a", "v2", "-m", "v2")
    (work / "app" / "hello.txt").write_text("hello main\n")
    _git(work, "commit", "-qam", "later")
    publish()
    return work, bare, url, publish


def _steps_cached(stderr: str) -> bool:
    """Every step of the build (`#N [i/n] ...`) was followed by `#N CACHED`."""
    steps = re.findall(r"^#(\d+) \[\d+/\d+\] ", stderr, re.M)
    return bool(steps) and all(re.search(rf"^#{n} CACHED$", stderr, re.M) for n in steps)


def _tar_members(path: Path) -> dict[str, bytes | None]:
    with tarfile.open(path) as tf:
        return {m.name.removeprefix("./").rstrip("/"): (tf.extractfile(m).read() if m.isfile() else None)
                for m in tf.getmembers()}


# -- git ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["file", "http"])
def test_git_context_tag_and_subdir_is_cached_on_the_second_build(cli, tmp_path, app_repo, tmpdir_env,
                                                                    transport):
    """`URL#v2:app`: the v2 tag's app/ directory is the context and its Dockerfile the default;
    .git and the rest of the repository are not in it. The context's checksums come from its
    content, so building the same URL and ref again runs nothing."""
    _, bare, http_url, _ = app_repo
    url = (f"file://{bare}" if transport == "file" else http_url) + "#v2:app"
    first = cli("build", "--progress", "plain", "-t", "g:1", url, check=True)
    assert "hello v2" in first.stderr and "hello main" not in first.stderr, first.stderr
    listing = re.search(r"hello v2\n((?:#\d+ [\d.]+ .*\n)+)", first.stderr).group(1)
    names = {line.split()[-1] for line in listing.splitlines()}
    assert {"Dockerfile", "hello.txt", "ci"} <= names and ".git" not in names and "docs" not in names, names
    again = cli("build", "--progress", "plain", "-t", "g:1", url, check=True)
    assert _steps_cached(again.stderr) and "cache miss" not in again.stderr, again.stderr
    assert cli("run", "g:1", "cat", "/src/hello.txt", check=True).stdout == "hello v2\n"
    assert _leftovers(tmpdir_env) == []


def test_git_context_branch_dockerfile_flag_and_keep_git_dir(cli, tmp_path, app_repo):
    """`-f` is a path inside the context (the SUBDIR), as for docker; no ref means the default
    branch; BuildKit's BUILDKIT_CONTEXT_KEEP_GIT_DIR build arg keeps .git in the context."""
    work, bare, _, _ = app_repo
    out = tmp_path / "fs.tar"
    cli("build", "-f", "ci/Dockerfile.ci", "-o", f"type=tar,dest={out}", f"file://{bare}#main:app", check=True)
    assert _tar_members(out) == {"from-ci": b"hello main\n"}

    (work / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    _git(work, "add", "Dockerfile")
    _git(work, "commit", "-qm", "top-level Dockerfile")
    _git(work, "push", "-q", str(bare), "main")
    cli("build", "-o", f"type=tar,dest={out}", f"file://{bare}", check=True)
    members = _tar_members(out)
    assert members["app/hello.txt"] == b"hello main\n" and not any(m.startswith(".git") for m in members)
    cli("build", "--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1", "-o", f"type=tar,dest={out}",
        f"file://{bare}", check=True)
    assert ".git/HEAD" in _tar_members(out)


def test_git_context_errors_are_one_line_naming_the_url(cli, app_repo, tmpdir_env):
    """A ref the remote does not have, a SUBDIR that is not there, a context without a Dockerfile,
    an -f naming nothing, an unreachable remote: exit 1, one `ERROR:` line naming the URL (its
    credentials removed), no image, no temporary directory left."""
    _, bare, http_url, _ = app_repo
    repo = f"file://{bare}"
    dead = f"http://builder:s3cret@127.0.0.1:{_free_port()}/nothing.git#main"
    cases = [
        ([f"{repo}#no-such-ref:app"], f"ERROR: build context {repo}#no-such-ref:app: "
                                      "no branch, tag or commit named 'no-such-ref'"),
        ([f"{http_url}#v2:nodir"], f"ERROR: build context {http_url}#v2:nodir: 'nodir' is not a directory of the repository at commit "),
        ([f"{repo}#v2:app/ci"], f"ERROR: build context {repo}#v2:app/ci: no Dockerfile in app/ci/ of the repository "
                                "(name it with -f PATH, relative to the context)"),
        (["-f", "nope/Dockerfile", f"{repo}#v2"], f"ERROR: build context {repo}#v2: -f nope/Dockerfile: "
                                                  "no such file in the repository"),
        (["-f", "../docs/guide.md", f"{repo}#v2:app"], f"ERROR: build context {repo}#v2:app: -f ../docs/guide.md: "
                                                       "no such file in app/ of the repository"),
        ([dead], f"ERROR: build context {dead.replace('builder:s3cret@', '')}: cannot fetch: "),
    ]
    for args, message in cases:
        res = cli("build", "-t", "bad:1", *args)
        assert res.code == 1, res.stderr
        assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith(message), res.stderr
        assert "s3cret" not in res.stderr and "builder" not in res.stderr and "pybuild-context" not in res.stderr
    assert "bad" not in cli("images", check=True).stdout
    assert _leftovers(tmpdir_env) == []


def test_git_context_symlinks_out_of_the_repository_are_not_read(cli, tmp_path):
    """A repository can hold `Dockerfile -> /somewhere/else`: it is no Dockerfile of the context
    (BuildKit reads it inside the checkout), and neither is such a `.dockerignore`."""
    secret = tmp_path / "secret"
    secret.write_text("FROM busybox:latest\nSECRETWORD x\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "Dockerfile").symlink_to(secret)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "link")
    res = cli("build", f"file://{repo}")
    assert res.code == 1 and res.stderr.startswith(f"ERROR: build context file://{repo}: no Dockerfile in the "
                                                   "repository"), res.stderr
    assert "SECRETWORD" not in res.stderr
    (repo / "Dockerfile").unlink()
    (repo / "Dockerfile").write_text("FROM scratch\n")
    (repo / ".dockerignore").symlink_to(secret)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "ignore link")
    res = cli("build", f"file://{repo}")
    assert res.code == 1 and res.stderr.splitlines() == [
        f"ERROR: build context file://{repo}: .dockerignore: a symlink out of the context"], res.stderr


@pytest.mark.parametrize("url, message", [
    ("http://", "build context 'http://': the URL names no host"),
    ("https://user:pw@/x.tar", "build context 'https:///x.tar': the URL names no host"),
    ("http://127.0.0.1:99999/x.tar", "not a valid URL: Port out of range"),
    ("git@example.com", "build context 'git@example.com': expected git@HOST:PATH[#REF[:SUBDIR]]"),
    ("https://example.com/r.git#main:../up", "build context 'https://example.com/r.git#main:../up': "
                                             "subdirectory '../up' climbs out of the repository"),
    ("file://host/srv/r.git", "expected file:///ABSOLUTE/PATH[#REF[:SUBDIR]]"),
])
def test_malformed_url_is_a_usage_error(url, message, tmp_path):
    """Exit 2 before anything is fetched (no store is needed to say so)."""
    from conftest import PybuildCLI

    res = PybuildCLI(tmp_path / "store")("build", url)
    assert res.code == 2 and res.stderr.startswith("pybuild: ") and message in res.stderr, res.stderr
    assert len(res.stderr.splitlines()) == 1 and "pw" not in res.stderr


# -- http(s) ------------------------------------------------------------------------------------

def _context_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_600_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        import gzip
        return gzip.compress(data, mtime=0)
    if how == "bzip2":
        return bz2.compress(data)
    if how == "xz":
        return lzma.compress(data)
    if how == "zstd":
        import zstandard
        return zstandard.ZstdCompressor().compress(data)
    return data


@pytest.mark.parametrize("how", ["plain", "gzip", "bzip2", "xz", "zstd"])
def test_http_tarball_context_in_every_compression(cli, tmp_path, http_root, how):
    """The download is unpacked like a `-` context tar; -f names a file inside it."""
    root, base = http_root
    tar = _context_tar({"Dockerfile": b"FROM scratch\nCOPY a.txt /a.txt\n", "sub/Df": b"FROM scratch\nCOPY sub /s\n",
                        "a.txt": b"from the tarball\n", "sub/b.txt": b"b\n"})
    _serve(root, f"ctx.{how}", _compress(tar, how))
    out = tmp_path / "fs.tar"
    cli("build", "-o", f"type=tar,dest={out}", f"{base}/ctx.{how}", check=True)
    assert _tar_members(out) == {"a.txt": b"from the tarball\n"}
    cli("build", "-f", "sub/Df", "-o", f"type=tar,dest={out}", f"{base}/ctx.{how}", check=True)
    assert _tar_members(out) == {"s": None, "s/b.txt": b"b\n", "s/Df": b"FROM scratch\nCOPY sub /s\n"}


def test_http_tarball_context_is_cached_on_the_second_build(cli, http_root, tmpdir_env):
    root, base = http_root
    _serve(root, "app.tar.gz", _compress(_context_tar({"Dockerfile": APP_DOCKERFILE.encode(),
                                                       "hello.txt": b"hello tarball\n"}), "gzip"))
    first = cli("build", "--progress", "plain", "-t", "t:1", f"{base}/app.tar.gz", check=True)
    assert "hello tarball" in first.stderr, first.stderr
    again = cli("build", "--progress", "plain", "-t", "t:1", f"{base}/app.tar.gz", check=True)
    assert _steps_cached(again.stderr) and "cache miss" not in again.stderr, again.stderr
    assert _leftovers(tmpdir_env) == []


def test_http_plain_file_is_the_dockerfile_with_an_empty_context(cli, http_root):
    """docker: "if the URL is a text file, it's the Dockerfile"; nothing else is in the context."""
    root, base = http_root
    _serve(root, "Dockerfile", b"FROM busybox:latest\nLABEL from=url\n")
    cli("build", "-t", "plain:1", f"{base}/Dockerfile", check=True)
    assert '"from": "url"' in cli("inspect", "plain:1", check=True).stdout
    _serve(root, "copies", b"FROM busybox:latest\nCOPY a /a\n")
    res = cli("build", f"{base}/copies")
    assert res.code == 1 and "ERROR: Dockerfile:2:6: COPY failed: 'a' not found" in res.stderr, res.stderr
    res = cli("build", "-f", "other", f"{base}/Dockerfile")
    assert res.code == 1 and res.stderr.splitlines() == [
        f"ERROR: build context {base}/Dockerfile: -f other: the URL is a single Dockerfile, not a tar, "
        "so there is no file to name"]


def test_http_context_errors(cli, tmp_path, http_root, tmpdir_env):
    """HTTP errors, a refused connection, a hostile or broken tar, binary data that is no tar:
    exit 1, one line naming the URL without its credentials; nothing tagged or left behind."""
    root, base = http_root
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("Dockerfile"), io.BytesIO(b""))
        info = tarfile.TarInfo("../../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    _serve(root, "evil.tar", evil.getvalue())
    cut = _compress(_context_tar({"Dockerfile": b"FROM scratch\n", "noise": os.urandom(100_000)}), "gzip")
    _serve(root, "cut.tar.gz", cut[:len(cut) // 2])
    _serve(root, "blob.bin", b"\x7fELF\x00\x01\x02" * 10)
    _serve(root, "empty.tar", _context_tar({"a": b"a"}))
    creds_base = base.replace("http://", "http://user:hunter2@")
    dead = f"http://127.0.0.1:{_free_port()}/ctx.tar"
    cases = [
        (f"{creds_base}/missing.tar", f"ERROR: build context {base}/missing.tar: HTTP 404"),
        (dead, f"ERROR: build context {dead}: connection refused"),
        (f"{base}/evil.tar", f"ERROR: build context {base}/evil.tar: not a usable tar: "),
        (f"{base}/cut.tar.gz", f"ERROR: build context {base}/cut.tar.gz: not a usable tar: "),
        (f"{base}/blob.bin", f"ERROR: build context {base}/blob.bin: neither a tar (plain, gzip, bzip2, xz or zstd) "
                             "nor a text Dockerfile"),
        (f"{base}/empty.tar", f"ERROR: build context {base}/empty.tar: no Dockerfile in the tar (add one at its "
                              "top level, or name it with -f PATH-IN-TAR)"),
    ]
    for url, message in cases:
        res = cli("build", "-t", "bad:1", url)
        assert res.code == 1, res.stderr
        assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith(message), res.stderr
        assert "hunter2" not in res.stderr and "user" not in res.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert "bad" not in cli("images", check=True).stdout
    assert _leftovers(tmpdir_env) == []


class _StallingHandler(BaseHTTPRequestHandler):
    """Sends the start of a big body, then waits until the test is over."""

    started = threading.Event()
    release = threading.Event()

    def do_GET(self):  # http.server calls it by this name
        self.send_response(200)
        self.send_header("Content-Length", str(100 << 20))
        self.end_headers()
        self.wfile.write(b"\0" * (64 << 10))
        self.wfile.flush()
        _StallingHandler.started.set()
        _StallingHandler.release.wait(120)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _build_stalled_in_download(cli, store_tmp: Path):
    """A `pybuild build URL` whose download has begun writing its partial file and then stalls
    (the server sends 64 KiB of 100 MiB); yields the build's Popen (stderr piped)."""
    _StallingHandler.started.clear()
    _StallingHandler.release.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/big.tar"
        proc = subprocess.Popen([sys.executable, "-m", "pybuild", "build", "-t", "x:1", url], env=cli.env(),
                                stderr=subprocess.PIPE, text=True)
        assert _StallingHandler.started.wait(120)
        deadline = time.monotonic() + 120  # until the download has begun writing its partial file
        while not list(store_tmp.glob("*/download/.context.partial")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        yield proc
    finally:
        _StallingHandler.release.set()
        server.shutdown()
        server.server_close()


def test_ctrl_c_during_the_download_removes_the_context_dir(cli, tmpdir_env):
    with _build_stalled_in_download(cli, tmpdir_env) as proc:
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
        assert proc.returncode == 130, err
        assert err.splitlines() == ["ERROR: interrupted: running steps were stopped, nothing was tagged"]
        assert _leftovers(tmpdir_env) == []


def test_a_killed_build_leaves_its_context_to_the_next_build_to_sweep(cli, tmp_path, tmpdir_env):
    """SIGKILL leaves no chance to clean up: the context dir is a work dir of the store whose
    owner is dead, and the next build removes it."""
    with _build_stalled_in_download(cli, tmpdir_env) as proc:
        proc.kill()
        proc.communicate(timeout=60)
        assert _leftovers(tmpdir_env) != []  # what the killed build left
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM busybox:latest\n")
        cli("build", "-t", "next:1", str(ctx), check=True)
        assert _leftovers(tmpdir_env) == []


# -- the pure parts -------------------------------------------------------------------------------

def test_url_kinds_and_redaction():
    from pybuild.builder import url_context as uc

    for url in ("https://h/r.git#v1:sub", "git://h/r", "git@h:r.git", "ssh://git@h/r.git", "file:///srv/r.git",
                "http://h/ctx.tar.gz"):
        assert uc.is_url_context(url), url
    assert not uc.is_url_context("./http://x") and not uc.is_url_context("-")
    assert uc.is_git_context("file:///srv/r") and uc.is_git_context("git@h:r.git")
    assert not uc.is_git_context("https://h/ctx.tar.gz")
    assert uc.redact("https://user:pw@h/r.git and http://token@h/x") == "https://h/r.git and http://h/x"
    assert uc.redact("ssh://git:pw@h/r.git") == "ssh://git@h/r.git"
    assert uc.redact("git@h:r.git") == "git@h:r.git"
    assert uc.keep_git_dir({"BUILDKIT_CONTEXT_KEEP_GIT_DIR": "true"})
    assert not uc.keep_git_dir({"BUILDKIT_CONTEXT_KEEP_GIT_DIR": "0"}) and not uc.keep_git_dir({})


def test_a_url_word_is_a_context_not_an_unknown_command(tmp_path):
    """`pybuild URL` means `pybuild build URL`; only a word that is no command, path or URL is refused."""
    from conftest import PybuildCLI

    res = PybuildCLI(tmp_path / "store")("https://", cwd=tmp_path)
    assert res.code == 2 and "unknown command" not in res.stderr and "names no host" in res.stderr, res.stderr
    res = PybuildCLI(tmp_path / "store")("nosuchcmd", cwd=tmp_path)
    assert res.code == 2 and "a context must be an existing directory, - or a URL)" in res.stderr


# -- hostile repositories and URLs (found by a newcomer's review) ------------------------------------

def _symlink_repo(tmp_path: Path, target: Path) -> Path:
    """A bare repository holding only `ln -> target` (a host directory)."""
    work = tmp_path / "slwork"
    work.mkdir()
    _git(work, "init", "-q")
    (work / "ln").symlink_to(target)
    _git(work, "add", "ln")
    _git(work, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "ln")
    bare = tmp_path / "sl.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


def test_a_subdir_through_a_symlink_never_reads_or_removes_a_host_directory(cli, tmp_path, tmpdir_env):
    victim = tmp_path / "victim" / "inner"
    victim.mkdir(parents=True)
    (victim / "Dockerfile").write_text("FROM busybox:latest\nCOPY . /stolen\n")
    (victim / "file").write_text("precious\n")
    bare = _symlink_repo(tmp_path, tmp_path / "victim")
    res = cli("build", "-t", "stolen:1", f"file://{bare}#:ln/inner")
    assert res.code == 1 and "'ln/inner' is not a directory of the repository" in res.stderr, res.stderr
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM busybox:latest\nADD file://{bare}#master:ln/inner /x\n")
    res = cli("build", "-t", "stolen:2", str(ctx))
    assert res.code == 1, res.stderr
    assert (victim / "file").read_text() == "precious\n"  # still there, untouched
    assert "stolen" not in cli("images", check=True).stdout
    assert _leftovers(tmpdir_env) == []


def test_a_ref_is_never_a_git_option(cli, tmp_path, app_repo):
    _, bare, http_url, _ = app_repo
    marker = tmp_path / "INJECTED"
    script = tmp_path / "up.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexec git-upload-pack \"$@\"\n")
    script.chmod(0o755)
    res = cli("build", "-t", "inj:1", f"file://{bare}#--upload-pack={script}")
    assert res.code in (1, 2) and "is not a branch, tag or commit name" in res.stderr, res.stderr
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM busybox:latest\nADD {http_url}#--upload-pack={script} /x\n")
    res = cli("build", "-t", "inj:2", str(ctx))
    assert res.code == 1 and "is not a branch, tag or commit name" in res.stderr, res.stderr
    assert not marker.exists()


def test_url_credentials_reach_no_kept_git_dir(cli, tmp_path, app_repo):
    _, _, http_url, _ = app_repo
    url = http_url.replace("http://", "http://alice:TopSecret9@") + "#v2"
    out = tmp_path / "fs.tar"
    res = cli("build", "--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1", "-f", "-",
              "-o", f"type=tar,dest={out}", url, input="FROM scratch\nCOPY . /src\n")
    members = _tar_members(out) if out.exists() else {}
    git_config = members.get("src/.git/config") or b""
    assert res.code == 0 and git_config, (res.stderr, sorted(members)[:20])
    assert b"TopSecret9" not in git_config and b"alice" not in git_config, git_config
    assert b"127.0.0.1" in git_config  # the remote is kept, as BuildKit keeps it, minus credentials
    assert "TopSecret9" not in res.stderr + res.stdout


@pytest.mark.parametrize("url, shown", [
    ("https://alice:p@ss@127.0.0.1:1/r.git", "https://127.0.0.1:1/r.git"),
    ("https://alice:pa/ssW0rd@127.0.0.1:1/r.git", "https://127.0.0.1:1/r.git"),
    ("https://alice:pa#ssW0rd@127.0.0.1:1/r.git", "https://127.0.0.1:1/r.git"),
    ("https://alice:pa?ssW0rd@127.0.0.1:1/r.git", "https://127.0.0.1:1/r.git"),
    ("ssh://alice:p@ssW0rd@127.0.0.1:1/r.git", "ssh://alice@127.0.0.1:1/r.git"),
    ("https://token@host/r.git", "https://host/r.git"),
    ("ssh://git@host/r.git#v1:sub", "ssh://git@host/r.git#v1:sub"),
    ("https://host/a@b.git", "https://host/a@b.git"),
])
def test_redact_removes_passwords_holding_url_delimiters(url, shown):
    from pybuild.builder.url_context import redact

    assert redact(url) == shown
    assert redact(f"fatal: unable to access '{url}': refused") == f"fatal: unable to access '{shown}': refused"


def test_a_malformed_url_never_echoes_its_password(cli):
    res = cli("build", "https://alice:pa/ssW0rd@127.0.0.1:1/r.git")
    assert res.code in (1, 2) and "ssW0rd" not in res.stderr and "pa" not in res.stderr.split("127.0.0.1")[0], res.stderr


def test_buildkit_build_args_are_no_unused_arg_warning(cli, app_repo):
    _, bare, _, _ = app_repo
    res = cli("build", "--progress=plain", "--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1",
              "--build-arg", "UNUSED=1", "-t", "kg:1", f"file://{bare}#v2:app", check=True)
    assert "'UNUSED' was given but no ARG" in res.stderr
    assert "BUILDKIT_CONTEXT_KEEP_GIT_DIR" not in res.stderr, res.stderr
