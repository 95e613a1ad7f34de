"""COPY --parents and COPY/ADD --exclude, built end to end and compared with BuildKit's documented results.

Each build writes its filesystem with `--output type=local,dest=DIR` (FROM scratch, so
the directory holds only what the COPY steps wrote) and the test lists that directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest


def _files(root: Path) -> list[str]:
    """Every path below `root` (files and dirs), '/'-separated, sorted; dirs end with '/'."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out.append(os.path.normpath(os.path.join(rel, d)) + "/")
        for f in filenames:
            out.append(os.path.normpath(os.path.join(rel, f)))
    return sorted(out)


def _context(tmp_path: Path, files: dict[str, str], dockerfile: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name, text in files.items():
        p = ctx / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def _build(cli, ctx: Path, tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "out"
    cli("build", "--progress", "plain", "-o", f"type=local,dest={out}", *extra, str(ctx), check=True)
    return out


def test_parents_keeps_the_source_directories(cli, tmp_path):
    """Dockerfile reference, COPY --parents:
        COPY ./x/a.txt ./y/a.txt /no_parents/
        COPY --parents ./x/a.txt ./y/a.txt /parents/
        # /no_parents/a.txt
        # /parents/x/a.txt
        # /parents/y/a.txt
    (BuildKit silently overwrites /no_parents/a.txt with the later source: y's wins.)"""
    ctx = _context(tmp_path, {"x/a.txt": "x\n", "y/a.txt": "y\n"},
                   "FROM scratch\nCOPY ./x/a.txt ./y/a.txt /no_parents/\n"
                   "COPY --parents ./x/a.txt ./y/a.txt /parents/\n")
    out = _build(cli, ctx, tmp_path)
    assert _files(out) == ["no_parents/", "no_parents/a.txt", "parents/", "parents/x/", "parents/x/a.txt",
                           "parents/y/", "parents/y/a.txt"]
    assert (out / "no_parents/a.txt").read_text() == "y\n"
    assert (out / "parents/x/a.txt").read_text() == "x\n"


def test_parents_pivot_keeps_only_what_follows_dot_slash(cli, tmp_path):
    """Dockerfile reference: `COPY --parents ./x/./y/*.txt /parents/` with ./x/y/a.txt and
    ./x/y/b.txt gives /parents/y/a.txt and /parents/y/b.txt (rsync --relative's "./" marker)."""
    ctx = _context(tmp_path, {"x/y/a.txt": "a", "x/y/b.txt": "b", "x/y/c.md": "c"},
                   "FROM scratch\nCOPY --parents ./x/./y/*.txt /parents/\n")
    out = _build(cli, ctx, tmp_path)
    assert _files(out) == ["parents/", "parents/y/", "parents/y/a.txt", "parents/y/b.txt"]


def test_parents_doublestar_matches_any_depth(cli, tmp_path):
    """Dockerfile reference: `COPY --parents ./src/**/*.txt /parents/` with src/a.txt,
    src/x/b.txt, src/x/y/c.txt gives /parents/src/a.txt, /parents/src/x/b.txt,
    /parents/src/x/y/c.txt (`**` matches any number of directories, none included)."""
    ctx = _context(tmp_path, {"src/a.txt": "a", "src/x/b.txt": "b", "src/x/y/c.txt": "c", "src/x/skip.go": "g"},
                   "FROM scratch\nCOPY --parents ./src/**/*.txt /parents/\n")
    out = _build(cli, ctx, tmp_path)
    assert _files(out) == ["parents/", "parents/src/", "parents/src/a.txt", "parents/src/x/",
                           "parents/src/x/b.txt", "parents/src/x/y/", "parents/src/x/y/c.txt"]


def test_parents_directory_source_and_parent_modes(cli, tmp_path):
    """A directory source keeps its own name under --parents (BuildKit copies the pivot with
    an include pattern, so the matched dir and its parents are made from the source's
    metadata); without --parents only its contents are copied. --chown reaches the kept
    parents too; --parents=false is the same as no flag."""
    ctx = _context(tmp_path, {"pkg/lib/mod.py": "m", "pkg/lib/sub/deep.py": "d"},
                   "FROM scratch\nCOPY --parents --chown=7:8 pkg/lib /with/\n"
                   "COPY --parents=false pkg/lib /without/\n")
    os.chmod(ctx / "pkg", 0o750)
    out = _build(cli, ctx, tmp_path)
    files = _files(out)
    assert "with/pkg/lib/mod.py" in files and "with/pkg/lib/sub/deep.py" in files
    assert "without/mod.py" in files and "without/sub/deep.py" in files
    assert not any(f.startswith("without/pkg") for f in files)
    st = os.stat(out / "with" / "pkg")
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o750, 7, 8)


def test_parents_from_a_stage_with_an_absolute_pivot(cli, tmp_path):
    """Reference: the "./" pivot "may be especially useful copies between stages with --from
    where the source paths need to be absolute": /opt/./app/bin/tool lands as app/bin/tool."""
    ctx = _context(tmp_path, {}, "FROM busybox:latest AS build\n"
                   "RUN mkdir -p /opt/app/bin && echo tool > /opt/app/bin/tool && echo x > /opt/app/other\n"
                   "FROM scratch\nCOPY --from=build --parents /opt/./app/bin/tool /dst/\n")
    out = _build(cli, ctx, tmp_path)
    assert _files(out) == ["dst/", "dst/app/", "dst/app/bin/", "dst/app/bin/tool"]


def test_parents_missing_source_is_an_error(cli, tmp_path):
    """BuildKit treats every --parents source as a wildcard and silently copies nothing for a
    missing one (moby/buildkit#4900); we keep the rule that a missing non-wildcard source
    is an error naming it, as without --parents."""
    ctx = _context(tmp_path, {"x/a.txt": "a"}, "FROM scratch\nCOPY --parents ./x/nope.txt /p/\n")
    res = cli("build", str(ctx))
    assert res.code == 1
    assert re.search(r"Dockerfile:2:16: COPY failed: '\./x/nope\.txt' not found", res.stderr), res.stderr


def test_exclude_documented_examples(cli, tmp_path):
    """Dockerfile reference, COPY --exclude:
        COPY --exclude=*.txt hom* /mydir/                  # all files starting with "hom", but no .txt
        COPY --exclude=*.txt --exclude=*.md hom* /mydir/   # neither .txt nor .md
    Patterns are matched against what is copied: a matched file by its name, a directory
    source's contents by their path inside it (BuildKit's copier)."""
    ctx = _context(tmp_path, {"homer.txt": "t", "homer.md": "m", "homer.py": "p", "homedir/in.txt": "i",
                              "homedir/in.sh": "s", "other.py": "o"},
                   "FROM scratch\nCOPY --exclude=*.txt hom* /one/\n"
                   "COPY --exclude=*.txt --exclude=*.md hom* /two/\n")
    out = _build(cli, ctx, tmp_path)
    assert _files(out) == ["one/", "one/homer.md", "one/homer.py", "one/in.sh",
                           "two/", "two/homer.py", "two/in.sh"]


def test_exclude_in_a_directory_source_with_doublestar_and_exception(cli, tmp_path):
    """.dockerignore syntax: `**`, a directory pattern drops its subtree, `!` re-includes."""
    ctx = _context(tmp_path, {"app/main.py": "m", "app/build/out.o": "o", "app/deep/x.log": "l",
                              "app/keep.log": "k", "app/deep/y.py": "y"},
                   "FROM scratch\nCOPY --exclude=build --exclude=**/*.log --exclude=!keep.log app /app/\n")
    out = _build(cli, ctx, tmp_path)
    assert _files(out) == ["app/", "app/deep/", "app/deep/y.py", "app/keep.log", "app/main.py"]


def test_exclude_with_parents(cli, tmp_path):
    """With --parents, patterns see the path below the pivot, as BuildKit's include/exclude
    patterns on the pivot directory do."""
    ctx = _context(tmp_path, {"src/a/x.txt": "x", "src/a/gen/y.txt": "y", "src/b/z.txt": "z"},
                   "FROM scratch\nCOPY --parents --exclude=src/*/gen ./src/**/*.txt /p/\n")
    out = _build(cli, ctx, tmp_path)
    assert _files(out) == ["p/", "p/src/", "p/src/a/", "p/src/a/x.txt", "p/src/b/", "p/src/b/z.txt"]


def test_excluded_files_never_reach_the_cache_key(cli, tmp_path):
    """Changing an excluded file keeps the COPY cached; changing a copied one does not."""
    ctx = _context(tmp_path, {"app/main.py": "v1", "app/notes.md": "n1"},
                   "FROM busybox:latest\nCOPY --exclude=*.md app /app/\nRUN cat /app/main.py\n")
    cli("build", "--progress", "plain", "-t", "ex:1", str(ctx), check=True)
    (ctx / "app" / "notes.md").write_text("n2 changed")
    second = cli("build", "--progress", "plain", "-t", "ex:1", str(ctx), check=True)
    copy_steps = [line for line in second.stderr.splitlines() if "COPY --exclude" in line]
    assert copy_steps, second.stderr
    number = copy_steps[0].split()[0]
    assert f"{number} CACHED" in second.stderr, second.stderr
    (ctx / "app" / "main.py").write_text("v2")
    third = cli("build", "--progress", "plain", "-t", "ex:1", str(ctx), check=True)
    assert "v2" in third.stderr and "app/main.py" in third.stderr, third.stderr
    res = cli("run", "ex:1", "ls", "/app", check=True)
    assert res.stdout.split() == ["main.py"]


def test_exclude_with_add(cli, tmp_path):
    """ADD --exclude (Dockerfile 1.19) works as COPY's."""
    ctx = _context(tmp_path, {"d/a.txt": "a", "d/b.bin": "b"}, "FROM scratch\nADD --exclude=*.bin d /d/\n")
    out = _build(cli, ctx, tmp_path)
    assert _files(out) == ["d/", "d/a.txt"]


@pytest.mark.parametrize("dockerfile, message", [
    ("FROM scratch\nCOPY --exclude=[ a /\n", r"Dockerfile:2:16: COPY --exclude: .*\["),
    ("FROM scratch\nCOPY --parents=maybe a /\n", r"Dockerfile:2:16: COPY --parents=maybe: expected true or false"),
    ("FROM scratch\nCOPY --exclude= a /\n", r"Dockerfile:2:6: COPY --exclude needs a pattern"),
])
def test_bad_flags_name_the_line(cli, tmp_path, dockerfile, message):
    ctx = _context(tmp_path, {"a": "a"}, dockerfile)
    res = cli("build", str(ctx))
    assert res.code == 1
    assert re.search(message, res.stderr), res.stderr


def _mode(p: Path) -> int:
    return os.lstat(p).st_mode & 0o7777


def test_chmod_expands_variables(cli, tmp_path):
    """`ARG M=0700` then `COPY --chmod=$M`: BuildKit expands the flag value (was refused as
    not octal)."""
    ctx = _context(tmp_path, {"a": "a"}, "FROM scratch\nARG M=0700\nENV N=640\n"
                   "COPY --chmod=$M a /b\nADD --chmod=${N} a /c\n")
    out = _build(cli, ctx, tmp_path)
    assert (_mode(out / "b"), _mode(out / "c")) == (0o700, 0o640)


def test_chmod_symbolic_modes_apply_to_each_file(cli, tmp_path):
    """chmod(1)-style modes (dockerfile frontend 1.14+) change each copied entry's own mode;
    X adds x only to directories and already-executable files."""
    ctx = _context(tmp_path, {"a": "a", "d/plain": "p", "d/tool": "t", "d/sub/f": "f"},
                   "FROM scratch\nCOPY --chmod=u+x,go-w a /ux\nCOPY --chmod=a=rX d /rx/\n"
                   "COPY --chmod=g=u,o= a /gu\nCOPY --chmod=+t,u+s d/sub /st/\n")
    os.chmod(ctx / "a", 0o664)
    os.chmod(ctx / "d" / "plain", 0o644)
    os.chmod(ctx / "d" / "tool", 0o700)
    os.chmod(ctx / "d" / "sub", 0o750)
    os.chmod(ctx / "d" / "sub" / "f", 0o600)
    out = _build(cli, ctx, tmp_path)
    assert _mode(out / "ux") == 0o744
    assert (_mode(out / "rx" / "plain"), _mode(out / "rx" / "tool"), _mode(out / "rx" / "sub"),
            _mode(out / "rx" / "sub" / "f")) == (0o444, 0o555, 0o555, 0o444)
    assert _mode(out / "gu") == 0o660
    assert _mode(out / "st" / "f") == 0o600 | 0o1000 | 0o4000


@pytest.mark.parametrize("flag, message", [
    ("0o755", "--chmod=0o755: expected an octal mode"),  # Go's ParseUint(s, 8) has no 0o prefix
    ("0_755", "--chmod=0_755: expected an octal mode"),
    ("17777", "--chmod=17777: mode out of range"),
    ("u+q", "--chmod=u+q: expected an octal mode such as 0755 or a symbolic one"),
    ("$BAD", "--chmod=$BAD ('z+x'): expected an octal mode"),
])
def test_chmod_bad_values_are_refused(cli, tmp_path, flag, message):
    ctx = _context(tmp_path, {"a": "a"}, f"FROM scratch\nARG BAD=z+x\nCOPY --chmod={flag} a /b\n")
    res = cli("build", str(ctx))
    assert res.code == 1
    assert f"Dockerfile:3:14: {message}" in res.stderr, res.stderr


def test_symlink_loop_in_the_context_is_named_as_such(cli, tmp_path):
    """COPY of a symlink that points at itself: "a symlink loop", not "[Errno 40] ..."."""
    ctx = _context(tmp_path, {}, "FROM scratch\nCOPY pw /x\n")
    os.symlink("pw", ctx / "pw")
    res = cli("build", str(ctx))
    assert res.code == 1
    assert "Dockerfile:2:6: COPY failed: 'pw' is a symlink loop in the build context" in res.stderr, res.stderr
    assert "Errno" not in res.stderr


@pytest.mark.parametrize("spec, mode, is_dir, expected", [
    ("u+x", 0o644, False, 0o744),
    ("go-w", 0o666, False, 0o644),
    ("a=rX", 0o640, False, 0o444),       # X: no x for a plain file
    ("a=rX", 0o700, False, 0o555),       # ... but for one already executable
    ("a=rX", 0o700, True, 0o555),        # ... and for a directory
    ("+X", 0o600, False, 0o600),
    ("u=rwx,g=rx,o=", 0o777, False, 0o750),
    ("g=u", 0o640, False, 0o660),        # copy the owner's bits to the group
    ("o+s", 0o644, False, 0o644),        # s for "other" alone means nothing, as in chmod(1)
    ("ug+s", 0o755, False, 0o6755),
    ("+t", 0o755, True, 0o1755),
    ("u+r-w+x", 0o200, False, 0o500),    # several actions in one clause
    ("a-rwx", 0o7777, False, 0o7000),
])
def test_symbolic_chmod_semantics(spec, mode, is_dir, expected):
    from pybuild.builder.chmod import apply_chmod, parse_chmod

    assert oct(apply_chmod(parse_chmod(spec), mode, is_dir)) == oct(expected)


@pytest.mark.parametrize("spec", ["0o755", "0x1ed", "+755", " 755", "0_755", "u", "u+rq", "k+x", "u+x,", ""])
def test_chmod_values_go_refuses(spec):
    """Octal as Go's strconv.ParseUint(s, 8, 32) takes it, symbolic as BSD setmode parses it."""
    from pybuild.builder.chmod import ChmodError, parse_chmod

    with pytest.raises(ChmodError):
        parse_chmod(spec)
