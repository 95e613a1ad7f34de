"""Tests for the .dockerignore matcher (Docker / moby/patternmatcher semantics)."""

from __future__ import annotations

import itertools

import pytest

from pybuild.builder.dockerignore import DockerIgnore, Pattern


def di(*lines: str) -> DockerIgnore:
    return DockerIgnore.parse("\n".join(lines) + "\n")


# (patterns, path, excluded?)
CASES = [
    # comments and blank lines
    (["# node_modules"], "node_modules", False),
    (["#", "", "   ", "a"], "a", True),
    (["  # not a comment"], "# not a comment", True),  # '#' only counts in column 1
    # plain names are anchored at the context root
    (["foo"], "foo", True),
    (["foo"], "a/foo", False),
    (["foo"], "foobar", False),
    (["  foo  "], "foo", True),
    # '*'
    (["*"], "anything", True),
    (["*"], "dir/file", True),  # parent "dir" matches
    (["*.md"], "x.md", True),
    (["*.md"], "docs/x.md", False),
    (["*/*.md"], "docs/x.md", True),
    (["*/*.md"], "docs/sub/x.md", False),
    (["a*/b"], "abc/b", True),
    (["a*/b"], "a/c/b", False),
    (["a*b*c*d*e*/f"], "axbxcxdxexxx/f", True),
    (["a*b*c*d*e*/f"], "axbxcxdxe/xxx/f", False),
    (["a*b?c*x"], "abxbbxdbxebxczzx", True),
    (["a*b?c*x"], "abxbbxdbxebxczzy", False),
    (["*x"], "xxx", True),
    ([".*"], ".env", True),
    ([".*"], "env", False),
    # '**'
    (["**"], "a", True),
    (["**"], "a/b/c", True),
    (["**/*.go"], "main.go", True),
    (["**/*.go"], "a/b/main.go", True),
    (["**/*.go"], "a/b/main.goo", False),
    (["**/dir"], "dir", True),
    (["**/dir"], "x/y/dir/file", True),
    (["**/foo/bar"], "foo/bar", True),
    (["**/foo/bar"], "a/b/foo/bar", True),
    (["**/.foo"], "bar.foo", False),
    (["**file"], "dir/file", True),
    (["**/dir2/*"], "dir/dir2/file", True),
    (["**/**/*.txt"], "file.txt", True),
    (["**/**/*.txt2"], "dir/dir/file.txt", False),
    (["a/**/b"], "a/b", True),  # ** matches zero directories
    (["a/**/b"], "a/x/y/b", True),
    (["a/**/b"], "a/x/y/c", False),
    (["a**/*.txt"], "a/dir/dir/file.txt", True),
    (["abc/**"], "abc", False),
    (["abc/**"], "abc/def", True),
    (["abc/**"], "abc/def/ghi", True),
    (["a/*.txt**"], "a/file.txt", True),
    # '?'
    (["abc?def"], "abcZdef", True),
    (["abc?def"], "abcdef", False),
    (["a?b"], "a/b", False),
    (["a?b"], "a\u263ab", True),
    (["a???b"], "a\u263ab", False),
    # character classes
    (["a[b-d]e"], "ace", True),
    (["a[b-d]e"], "aae", False),
    (["a[b-d]e"], "ae", False),
    (["a[^b-d]e"], "aze", True),
    (["a[^b-d]e"], "ace", False),
    (["ab[c]"], "abc", True),
    (["ab[^c]"], "abc", False),
    (["[a-\u03b6]*"], "\u03b1", True),
    (["*[a-\u03b6]"], "A", False),
    (["[\\]a]"], "]", True),
    (["[\\-]"], "-", True),
    (["[x\\-]"], "-", True),
    (["[x\\-]"], "z", False),
    (["[\\-x]"], "x", True),
    (["[!a]x"], "!x", True),  # as in Go, '!' is not a negation inside a class
    (["[!a]x"], "bx", False),
    # escapes and regex metacharacters are literal
    (["a\\*b"], "a*b", True),
    (["a\\*b"], "axb", False),
    (["a\\\\"], "a\\", True),
    (["a\\?"], "a?", True),
    (["a\\?"], "ab", False),
    (["abc.def"], "abc.def", True),
    (["abc.def"], "abcZdef", False),
    (["a(b)c/def"], "a(b)c/def", True),
    (["a.|)$(}+{bc"], "a.|)$(}+{bc", True),
    (["dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    # a pattern matching a parent directory excludes everything below it
    (["node_modules"], "node_modules/a/b", True),
    (["node_modules"], "node_modulesX/a", False),
    (["a/b"], "a/b/c/d", True),
    (["a/b"], "a", False),
    (["*/build"], "x/build/out/o.bin", True),
    # exceptions
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md"], "CHANGES.md", True),
    (["dir", "!dir/keep.txt"], "dir/keep.txt", False),
    (["dir", "!dir/keep.txt"], "dir/other.txt", True),
    (["dir", "!dir/keep.txt"], "dir", True),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/*.whl"], "dist/p-1.0-py3-none-any.whl", False),
    (["!x", "x"], "x", True),
    (["! x", "*"], "x", True),
    (["*", "! x"], "x", False),  # spaces after '!' are trimmed
    # last match wins
    (["*.md", "!README.md", "README.md"], "README.md", True),
    (["a", "!a", "a", "!a"], "a", False),
    (["a/b", "!a"], "a/b/c", False),
    # leading '/', './', trailing '/', cleaning
    (["/foo"], "foo", True),
    (["/foo/bar"], "foo/bar/baz", True),
    (["./foo"], "foo", True),
    (["foo/"], "foo/x", True),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["a//b/./c/../d"], "a/b/d", True),
    (["!/foo", "x"], "x", True),
    (["*", "!/foo"], "foo", False),
    (["/"], "a", False),
    # the paths given to the matcher are cleaned too
    (["foo"], "./foo", True),
    (["foo"], "/foo", True),
    (["foo"], "foo/", True),
    (["foo/bar"], "./foo//bar", True),
    # the context root itself is never excluded
    (["*"], ".", False),
    (["**"], "", False),
]


@pytest.mark.parametrize("patterns,path,expected", CASES)
def test_excluded(patterns, path, expected):
    assert di(*patterns).excluded(path) is expected


def test_comment_and_blank_lines_count_for_line_numbers():
    d = DockerIgnore.parse("# header\n\n  \n*.log\n!keep.log\r\n/build/\n")
    assert d.patterns == (
        Pattern("*.log", 4, False),
        Pattern("keep.log", 5, True),
        Pattern("build", 6, False),
    )


def test_bom_and_crlf():
    d = DockerIgnore.parse("\ufeff*.tmp\r\nbuild\r\n")
    assert d.excluded("a.tmp") and d.excluded("build/x")
    assert [p.line for p in d.patterns] == [1, 2]


def test_excluding_pattern_line_numbers():
    d = DockerIgnore.parse("# c\nnode_modules\n*.md\n!README.md\n\ndocs/**\n")
    assert d.excluding_pattern("node_modules/x/y") == Pattern("node_modules", 2, False)
    assert d.excluding_pattern("CHANGES.md").line == 3
    assert d.excluding_pattern("README.md") is None
    assert d.excluding_pattern("src/main.py") is None
    # the last matching pattern is reported
    assert d.excluding_pattern("docs/x.md") is not None
    assert d.excluding_pattern("docs/x.md").line == 6
    assert str(d.excluding_pattern("docs/x.md")) == "docs/**"


def test_pattern_str():
    d = di("a/", "!b")
    assert [str(p) for p in d.patterns] == ["a", "!b"]


def test_empty():
    d = DockerIgnore.empty()
    assert not d.excluded("a") and d.excluding_pattern("a") is None
    assert d.may_contain_included("a")
    assert len(d) == 0
    assert len(DockerIgnore.parse("")) == 0
    assert len(DockerIgnore.parse("# only a comment\n\n")) == 0


@pytest.mark.parametrize(
    "text,line",
    [
        ("[", 1),
        ("ok\n# c\na[", 3),
        ("[^", 1),
        ("[^bc", 1),
        ("[]a]", 1),
        ("[-]", 1),
        ("[x-]", 1),
        ("[-x]", 1),
        ("[a-b-c]", 1),
        ("\\", 1),
        ("a\\", 1),
        ("x\n!", 2),
        ("x\n!   ", 2),
        ("!/", 1),  # cleaned to "!" by patternmatcher.New
        ("[z-a]", 1),
    ],
)
def test_invalid_patterns(text, line):
    with pytest.raises(ValueError, match=rf"^line {line}: "):
        DockerIgnore.parse(text)


@pytest.mark.parametrize(
    "patterns,dirpath,expected",
    [
        (["node_modules"], "node_modules", False),
        (["node_modules"], "node_modules/a", False),
        (["node_modules"], "src", True),  # not excluded at all
        (["dir", "!dir/keep.txt"], "dir", True),
        (["dir", "!dir/keep.txt"], "dir/sub", False),
        (["dir", "!dir/*/keep.txt"], "dir/sub", True),
        (["dir", "!dir/*/keep.txt"], "dir/sub/deeper", False),
        (["dir", "!other/keep.txt"], "dir", False),
        (["dir", "!**/keep.txt"], "dir", True),  # '**' may match anything below
        (["dir", "!**keep"], "dir", True),
        (["dir", "!d*/x"], "dir", True),
        (["dir", "!e*/x"], "dir", False),
        (["dir", "!dir"], "dir", True),  # not excluded
        (["!dir/keep.txt", "dir"], "dir", False),  # exception comes before
        (["*", "!dir/a/b"], "dir", True),
        (["*", "!dir/a/b"], "dir/a", True),
        (["*", "!dir/a/b"], "dir/c", False),
        (["*", "!dir/a"], "dir/a/b", True),  # dir/a/b is not excluded
        (["*", "!dir/[^x]/b"], "dir/y", True),
        (["*", "!dir/a\\/b"], "dir/a", True),
        (["dir", "!dir/**"], "dir", True),
        (["**", "!*.go"], "dir", False),
        ([], "", True),
        (["*"], ".", True),
    ],
)
def test_may_contain_included(patterns, dirpath, expected):
    assert di(*patterns).may_contain_included(dirpath) is expected


# A small tree and a handful of pattern sets: may_contain_included(d) == False
# must imply that d and everything below it is excluded.
_TREE_DIRS = ["a", "a/b", "a/b/c", "a/x", "dir", "dir/sub", "dir/keep", "n"]
_TREE_FILES = [d + "/" + f for d in _TREE_DIRS for f in ("f.txt", "keep.txt", "g.go")]
_PATTERN_POOL = [
    "a", "dir", "*", "**", "a/b", "*/b", "**/c", "a/**", "dir/*", "n",
    "!a/b/c", "!dir/keep.txt", "!**/*.go", "!dir/*/keep.txt", "!a/x", "!*.txt",
    "!d?r/sub", "!a/[bx]/f.txt", "!n/**",
]


@pytest.mark.parametrize("size", [1, 2, 3])
def test_may_contain_included_is_sound(size):
    for combo in itertools.permutations(_PATTERN_POOL, size):
        d = di(*combo)
        for dirpath in _TREE_DIRS:
            if d.may_contain_included(dirpath):
                continue
            below = [p for p in _TREE_DIRS + _TREE_FILES if p.startswith(dirpath + "/")]
            assert d.excluded(dirpath), (combo, dirpath)
            assert all(d.excluded(p) for p in below), (combo, dirpath)


def _reference(patterns: list[str], path: str) -> bool:
    """Docker's MatchesOrParentMatches loop (skip inclusions once matched,
    exceptions until matched), each pattern checked on its own against the
    path and each of its parent directories."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    matched = False
    for text in patterns:
        exclusion = text.startswith("!")
        if exclusion != matched:
            continue
        single = di(text[1:] if exclusion else text)
        if any(single.excluding_pattern(q) is not None for q in candidates):
            matched = not exclusion
    return matched


def test_order_semantics_match_docker_loop():
    paths = ["a", "a/b", "a/b/c", "dir/keep.txt", "dir/x.go", "n/f.txt", "x.txt"]
    for combo in itertools.permutations(_PATTERN_POOL, 3):
        d = di(*combo)
        for path in paths:
            assert d.excluded(path) == _reference(list(combo), path), (combo, path)


def test_many_patterns_are_compiled_once():
    lines = [f"dir{i}/**/*.o" for i in range(500)] + ["!dir7/keep.o"]
    d = di(*lines)
    assert d.excluded("dir3/a/b/c.o")
    assert not d.excluded("dir7/keep.o")
    assert not d.excluded("src/main.c")
    assert d.excluding_pattern("dir499/x.o").line == 500
