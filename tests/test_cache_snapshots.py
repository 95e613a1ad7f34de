import multiprocessing
import os
import stat
import subprocess

import pytest

from pybuild.cache import ContentStore, LayerError, LayerBlob, SnapshotStore, write_layer


@pytest.fixture
def root(tmp_path):
    return tmp_path / "root"


@pytest.fixture
def stores(root):
    cs = ContentStore(root)
    return cs, SnapshotStore(root, cs)


def layer_from(tmp_path, cs, name, files, overlay_upper=False):
    src = tmp_path / f"src-{name}"
    src.mkdir()
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            os.mknod(p, stat.S_IFCHR, os.makedev(0, 0))  # overlay whiteout
        else:
            p.write_bytes(data)
    return write_layer(src, cs, overlay_upper=overlay_upper)


def mount_overlay(lowers, upper, work, merged):
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}", str(merged)],
                   check=True)


def test_ensure_idempotent_and_lowerdirs_order(tmp_path, root, stores):
    cs, snaps = stores
    base = layer_from(tmp_path, cs, "base", {"etc/os": b"base", "bin/sh": b"sh", "tmp/junk": b"j"})
    top = layer_from(tmp_path, cs, "top", {"etc/os": b"top", "tmp/junk": None}, overlay_upper=True)
    assert not snaps.exists(base.diff_id)
    p = snaps.ensure(base)
    assert p == root / "snapshots" / base.diff_id.split(":")[1] == snaps.path(base.diff_id)
    assert snaps.exists(base.diff_id)
    assert (p / "etc" / "os").read_bytes() == b"base"
    ino = os.stat(p).st_ino
    assert snaps.ensure(base) == p and os.stat(p).st_ino == ino
    lowers = snaps.lowerdirs([base, top])
    assert lowers == [snaps.path(top.diff_id), snaps.path(base.diff_id)]
    assert [n for n in os.listdir(root / "snapshots") if n.startswith(".tmp")] == []

    # use them as a real overlay stack
    work = snaps.new_work_dir()
    (work / "upper").mkdir()
    (work / "work").mkdir()
    (work / "merged").mkdir()
    mount_overlay(lowers, work / "upper", work / "work", work / "merged")
    try:
        m = work / "merged"
        assert (m / "etc" / "os").read_bytes() == b"top"
        assert (m / "bin" / "sh").read_bytes() == b"sh"
        assert os.listdir(m / "tmp") == []
        (m / "bin" / "new").write_bytes(b"new")
    finally:
        subprocess.run(["umount", str(work / "merged")], check=True)

    # the upper dir of the "RUN" becomes a layer + snapshot without re-unpacking
    run_layer = write_layer(work / "upper", cs, overlay_upper=True)
    snap = snaps.commit_dir(run_layer.diff_id, work / "upper")
    assert not (work / "upper").exists()
    assert (snap / "bin" / "new").read_bytes() == b"new"
    assert snaps.ensure(run_layer) == snap
    # committing the same diff_id again just drops the new dir
    other = snaps.new_work_dir()
    (other / "f").write_text("x")
    assert snaps.commit_dir(run_layer.diff_id, other) == snap
    assert not other.exists()


def test_ensure_failure_leaves_nothing(tmp_path, stores, root):
    cs, snaps = stores
    layer = layer_from(tmp_path, cs, "x", {"f": b"x"})
    bad = LayerBlob(layer.digest, "sha256:" + "0" * 64, layer.size, layer.media_type)
    with pytest.raises(LayerError):
        snaps.ensure(bad)
    assert not snaps.exists(bad.diff_id)
    assert os.listdir(root / "snapshots") == []


def _ensure(root, layer):
    cs = ContentStore(root)
    SnapshotStore(root, cs).ensure(layer)


def test_concurrent_ensure(tmp_path, stores, root):
    cs, snaps = stores
    files = {f"d{i}/f{j}": os.urandom(100) for i in range(20) for j in range(20)}
    layer = layer_from(tmp_path, cs, "many", files)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_ensure, args=(root, layer)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    assert os.listdir(root / "snapshots") == [layer.diff_id.split(":")[1]]
    assert (snaps.path(layer.diff_id) / "d3" / "f4").read_bytes() == files["d3/f4"]


def test_clean_tmp(stores, root):
    cs, snaps = stores
    mine = snaps.new_work_dir()
    assert mine.parent == root / "tmp"
    dead = root / "tmp" / "999999999-12345-abcd"
    (dead / "upper" / "deep").mkdir(parents=True)
    os.chmod(dead / "upper", 0o000)
    dead_snap = root / "snapshots" / ".tmp-999999999-1-beef"
    dead_snap.mkdir()
    # same pid as ours but a different start time: a recycled pid, so stale
    recycled = root / "tmp" / f"{os.getpid()}-1-cafe"
    recycled.mkdir()
    removed = snaps.clean_tmp()
    assert sorted(removed) == sorted([dead, dead_snap, recycled])
    assert mine.exists() and not dead.exists() and not dead_snap.exists()


def test_clean_tmp_skips_mounted(stores, root):
    cs, snaps = stores
    dead = root / "tmp" / "999999999-12345-abcd"
    (dead / "m").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(dead / "m")], check=True)
    try:
        assert snaps.clean_tmp() == []
        assert dead.exists()
    finally:
        subprocess.run(["umount", str(dead / "m")], check=True)
    assert snaps.clean_tmp() == [dead]
