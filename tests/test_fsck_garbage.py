"""`pybuild fsck` on a store after ordinary rebuilds: what it calls garbage, and why."""

import re


def _ctx(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN head -c 1000 /dev/urandom > /r\nRUN echo two > /t\n")
    return ctx


def test_cached_rebuild_leaves_no_garbage(cli, tmp_path):
    ctx = _ctx(tmp_path)
    cli("build", "-t", "g:1", str(ctx), check=True)
    cli("build", "-t", "g:1", str(ctx), check=True)  # fully cached: the same image, nothing left over
    r = cli("fsck")
    assert r.code == 0 and r.stdout == "", r.stdout + r.stderr
    # a changed step: the old layers stay held by their cache records, not garbage either
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN head -c 1000 /dev/urandom > /r\nRUN echo three > /t\n")
    cli("build", "-t", "g:1", str(ctx), check=True)
    r = cli("fsck")
    assert r.code == 0 and r.stdout == "", r.stdout + r.stderr


def test_no_cache_rebuild_garbage_is_explained_as_a_retagged_image(cli, tmp_path):
    ctx = _ctx(tmp_path)
    cli("build", "-t", "g:1", str(ctx), check=True)
    cli("build", "--no-cache", "-t", "g:1", str(ctx), check=True)
    r = cli("fsck")
    assert r.code == 0, r.stdout + r.stderr  # garbage, not damage
    lines = r.stdout.splitlines()
    assert lines and all(re.fullmatch(r"snapshot sha256:[0-9a-f]{64}: .*", line) for line in lines)
    for line in lines:
        assert "not used by any image, container or cache record" in line
        # the likely cause comes first: the old g:1 lost its tag; an interrupted build is the other
        assert "left by an image that was re-tagged or removed" in line and "interrupted build" in line
        assert "prune removes it" in line
    cli("prune", "-f", check=True)
    assert cli("fsck", check=True).stdout == ""
