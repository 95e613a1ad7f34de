"""LayeredView: overlay semantics over snapshot dirs without mounting, and lookups that never leave the root."""

from __future__ import annotations

import os

import pytest

from pybuild.cache.view import LayeredView, ViewError


def _whiteout(path):
    os.mknod(path, 0o020000 | 0o600, os.makedev(0, 0))


@pytest.fixture
def layers(tmp_path):
    low, mid, top = (tmp_path / n for n in ("low", "mid", "top"))
    for d in (low, mid, top):
        d.mkdir()
    (low / "etc").mkdir()
    (low / "etc" / "passwd").write_text("low\n")
    (low / "etc" / "gone").write_text("x")
    (low / "d").mkdir()
    (low / "d" / "old").write_text("old")
    (low / "keep").mkdir()
    (low / "keep" / "k").write_text("k")
    (mid / "etc").mkdir()
    (mid / "etc" / "passwd").write_text("mid\n")
    _whiteout(mid / "etc" / "gone")
    (top / "d").mkdir()
    os.setxattr(top / "d", "trusted.overlay.opaque", b"y")
    (top / "d" / "new").write_text("new")
    (top / "keep").mkdir()
    (top / "keep" / "t").write_text("t")
    return LayeredView([top, mid, low])


def test_top_most_wins_and_whiteouts_hide(layers):
    entry = layers.lookup("/etc/passwd")
    assert entry.real.read_text() == "mid\n"
    assert layers.lookup("/etc/gone") is None
    assert layers.listdir("/etc") == ["passwd"]


def test_opaque_dir_hides_lower_contents_but_plain_dirs_merge(layers):
    assert layers.listdir("/d") == ["new"]
    assert layers.lookup("/d/old") is None
    assert layers.listdir("/keep") == ["k", "t"]


def test_whiteout_of_a_dir_hides_its_subtree(tmp_path):
    low, top = tmp_path / "low", tmp_path / "top"
    (low / "a" / "b").mkdir(parents=True)
    (low / "a" / "b" / "f").write_text("f")
    top.mkdir()
    _whiteout(top / "a")
    view = LayeredView([top, low])
    assert view.lookup("/a/b/f") is None
    assert view.listdir("/") == []


def test_symlinks_resolve_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "file").write_text("inside")
    os.symlink("/real", root / "abs")
    os.symlink("../../../../real", root / "climb")
    os.symlink("/etc", root / "hostetc")
    view = LayeredView([root])
    assert view.lookup("/abs/file").real == root / "real" / "file"
    assert view.lookup("/climb/file").real == root / "real" / "file"
    assert view.lookup("/hostetc/passwd") is None      # /etc of the view, which does not exist
    assert view.lookup("/../../etc/passwd") is None
    assert view.lookup("/abs", follow_final=False).path == "/abs"


def test_symlink_loop_is_an_error(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(ViewError):
        LayeredView([root]).lookup("/a/x")


def test_walk_lists_merged_tree(layers):
    paths = sorted(e.path for e in layers.walk("/"))
    assert paths == ["/d", "/d/new", "/etc", "/etc/passwd", "/keep", "/keep/k", "/keep/t"]
