"""Store commands: tag, inspect, history, rmi, prune, fsck, and the GC's lock against builds.

Images are made without the sandbox (import_rootfs / write_image into a tmp store); the
commands run as `python -m pybuild` subprocesses on that store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pybuild.cache import gc
from pybuild.cache.content import BlobInfo
from pybuild.cache.index import CacheRecord
from pybuild.cache.layers import write_layer
from pybuild.oci.archive import import_rootfs
from pybuild.oci.image import load_image, load_manifest, new_config, write_image

from pybuild.store import Store

SDE = 1700000000


def pyb(root: Path, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYBUILD_ROOT=str(root))
    env.pop("SOURCE_DATE_EPOCH", None)
    return subprocess.run([sys.executable, "-m", "pybuild", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, input=input)


def tree(base: Path, name: str, files: dict[str, str]) -> Path:
    d = base / name
    for rel, text in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "root")


def blob_file(store: Store, digest: str) -> Path:
    return store.content.path(digest)


def imp(store: Store, src: Path, ref: str, message: str | None = None) -> str:
    return import_rootfs(src, ref, store.content, store.images, message=message, source_date_epoch=SDE)


def closure(store: Store, manifest_digest: str) -> tuple[str, str, list]:
    img = load_image(store.content, manifest_digest)
    return manifest_digest, img.config_digest, img.layers


# -- tag / inspect / history ----------------------------------------------------------------------

def test_tag_then_inspect(tmp_path, store):
    digest = imp(store, tree(tmp_path, "a", {"etc/a": "a\n"}), "base:1")
    r = pyb(store.root, "tag", "base:1", "other/name:2")
    assert r.returncode == 0, r.stderr
    assert store.images.resolve("other/name:2") == digest
    img = load_image(store.content, digest)
    # a bare name means :latest; by id prefix works too
    assert pyb(store.root, "tag", img.id.split(":")[1][:12], "third").returncode == 0
    assert store.images.resolve("third:latest") == digest

    r = pyb(store.root, "inspect", "base:1", "other/name:2")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out) == 2 and out[0] == out[1]
    obj = out[0]
    assert obj["Id"] == img.id
    assert obj["Digest"] == digest
    assert obj["RepoTags"] == ["base:1", "other/name:2", "third:latest"]
    assert obj["Manifest"] == load_manifest(store.content, digest)
    assert obj["RootFS"] == {"Type": "layers", "Layers": [layer.diff_id for layer in img.layers]}
    assert obj["Size"] == sum(layer.size for layer in img.layers)
    assert obj["Architecture"] == "amd64" and obj["Os"] == "linux"
    assert obj["Created"] == img.config["created"]
    assert obj["Config"] == img.config["config"]

    r = pyb(store.root, "inspect", "base:1", "nope")
    assert r.returncode == 1
    assert len(json.loads(r.stdout)) == 1
    assert "ERROR: No such object: nope" in r.stderr

    r = pyb(store.root, "tag", "nope", "x:1")
    assert r.returncode == 1 and "No such image: nope:latest" in r.stderr
    r = pyb(store.root, "tag", "base:1", "x@sha256:" + "0" * 64)
    assert r.returncode == 1 and "digest" in r.stderr
    r = pyb(store.root, "tag", "base:1", "Bad:1")
    assert r.returncode == 2  # an invalid name is a usage error, as for build -t and import


def _three_step_image(tmp_path, store) -> str:
    l1 = write_layer(tree(tmp_path, "l1", {"big": "x" * 5000}), store.content, source_date_epoch=SDE)
    l2 = write_layer(tree(tmp_path, "l2", {"small": "y"}), store.content, source_date_epoch=SDE)
    cfg = new_config(None)
    cfg["created"] = "2023-11-14T22:13:20Z"
    long_cmd = "RUN /bin/sh -c echo " + "very-long-argument " * 6
    cfg["history"] = [
        {"created": "2023-11-14T22:13:20Z", "created_by": "COPY big /", "comment": "buildkit.dockerfile.v0"},
        {"created": "2023-11-14T22:13:20Z", "created_by": "ENV A=1", "empty_layer": True},
        {"created": "2023-11-14T22:13:20Z", "created_by": long_cmd},
        {"created": "2023-11-14T22:13:20Z", "created_by": 'CMD ["sh"]', "empty_layer": True},
    ]
    rec = write_image(store.content, cfg, [l1, l2])
    store.images.tag("hist:1", rec.manifest)
    return rec.manifest.digest


def test_history(tmp_path, store):
    digest = _three_step_image(tmp_path, store)
    img = load_image(store.content, digest)
    r = pyb(store.root, "history", "hist:1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert len(lines) == 5
    newest_first = lines[1:]
    assert newest_first[0].startswith(img.id.split(":")[1][:12] + "   ")
    assert all(line.startswith("<missing>") for line in newest_first[1:])
    assert 'CMD ["sh"]' in newest_first[0] and " 0B" in newest_first[0]
    from pybuild.commands._format import human_size

    assert "RUN /bin/sh -c echo very-long-argument" in newest_first[1]
    assert "…" in newest_first[1] and human_size(img.layers[1].size) in newest_first[1]
    assert "ENV A=1" in newest_first[2] and " 0B" in newest_first[2]
    assert "COPY big /" in newest_first[3] and human_size(img.layers[0].size) in newest_first[3]
    assert "buildkit.dockerfile.v0" in newest_first[3]
    assert "years ago" in newest_first[3]
    # header columns line up with the data (docker's tabwriter)
    col = lines[0].index("CREATED BY")
    assert all(line[col - 3:col] == "   " for line in newest_first)

    r = pyb(store.root, "history", "--no-trunc", "hist:1")
    assert r.returncode == 0
    assert r.stdout.splitlines()[1].startswith(img.id + "   ")
    assert ("very-long-argument " * 6).strip() in r.stdout and "…" not in r.stdout

    r = pyb(store.root, "history", "nope:2")
    assert r.returncode == 1 and "No such image: nope:2" in r.stderr


# -- rmi ------------------------------------------------------------------------------------------

def test_rmi_removes_only_what_it_alone_used(tmp_path, store):
    shared = tree(tmp_path, "shared", {"etc/s": "shared\n"})
    a = imp(store, shared, "a:1", message="a")
    b = imp(store, shared, "b:1", message="b")           # same layer, other config
    c = imp(store, tree(tmp_path, "c", {"c": "c\n"}), "c:1")
    ma, ca, [la] = closure(store, a)
    mb, cb, [lb] = closure(store, b)
    mc, cc, [lc] = closure(store, c)
    assert la == lb and ca != cb
    for layer in (la, lc):
        store.snapshots.ensure(layer)

    r = pyb(store.root, "rmi", "a:1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["Untagged: a:1", f"Deleted: {ca}"]
    assert not blob_file(store, ma).exists() and not blob_file(store, ca).exists()
    assert blob_file(store, la.digest).exists() and store.snapshots.exists(la.diff_id)  # b still uses it
    assert blob_file(store, mb).exists() and blob_file(store, mc).exists()

    # a second tag: rmi by name only untags
    assert pyb(store.root, "tag", "b:1", "b:2").returncode == 0
    r = pyb(store.root, "rmi", "b:2")
    assert r.stdout.splitlines() == ["Untagged: b:2"] and blob_file(store, cb).exists()

    r = pyb(store.root, "rmi", "b")  # b:latest does not exist; b:1 is untouched
    assert r.returncode == 1 and "ERROR: No such image: b:latest" in r.stderr

    r = pyb(store.root, "rmi", "nope", "b:1")  # an error does not stop the others
    assert r.returncode == 1 and "No such image: nope:latest" in r.stderr
    assert "Untagged: b:1" in r.stdout
    for d in (mb, cb, la.digest):
        assert not blob_file(store, d).exists()
    assert not store.snapshots.exists(la.diff_id)
    # c untouched
    for d in (mc, cc, lc.digest):
        assert blob_file(store, d).exists()
    assert store.snapshots.exists(lc.diff_id)
    assert [str(ref) for ref, _ in store.images.list()] == ["c:1"]


def test_rmi_by_id_with_tags_in_several_repositories_needs_force(tmp_path, store):
    d = imp(store, tree(tmp_path, "x", {"x": "x"}), "one:1")
    image_id = load_image(store.content, d).id
    pyb(store.root, "tag", "one:1", "one:2")
    pyb(store.root, "tag", "one:1", "two:1")
    r = pyb(store.root, "rmi", image_id.split(":")[1][:12])
    assert r.returncode == 1
    assert f"conflict: unable to delete {image_id.split(':')[1][:12]} (must be forced)" in r.stderr
    assert len(store.images.list()) == 3 and blob_file(store, d).exists()
    r = pyb(store.root, "rmi", "-f", image_id.split(":")[1][:12])
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == sorted(
        ["Untagged: one:1", "Untagged: one:2", "Untagged: two:1", f"Deleted: {image_id}"])
    assert store.images.list() == [] and not blob_file(store, d).exists()

    # two tags of one repository: by id still needs -f (docker 23+'s isSingleReference); by name
    # only that tag goes
    d = imp(store, tree(tmp_path, "y", {"y": "y"}), "solo:1")
    solo_id = load_image(store.content, d).id
    pyb(store.root, "tag", "solo:1", "solo:2")
    r = pyb(store.root, "rmi", solo_id)
    assert r.returncode == 1, r.stdout
    assert r.stderr.strip() == (f"ERROR: conflict: unable to delete {solo_id.split(':')[1][:12]} (must be forced) "
                                "- image is referenced in multiple repositories")
    assert r.stdout == "" and sorted(str(ref) for ref, _ in store.images.list()) == ["solo:1", "solo:2"]
    r = pyb(store.root, "rmi", "solo:2")
    assert r.returncode == 0 and r.stdout.splitlines() == ["Untagged: solo:2"]
    # one tag plus a pull-by-digest name of the same repository: one reference, goes without -f
    store.images.pin(f"solo@{d}", BlobInfo(d, store.content.size(d)))
    r = pyb(store.root, "rmi", solo_id.split(":")[1][:12])
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == sorted(["Untagged: solo:1", f"Untagged: solo@{d}", f"Deleted: {solo_id}"])
    assert store.images.list() == [] and not blob_file(store, d).exists()


def test_rmi_keeps_layers_of_cache_records_and_prune_clears_them(tmp_path, store):
    d = imp(store, tree(tmp_path, "k", {"k": "k" * 3000}), "k:1")
    m, c, [layer] = closure(store, d)
    store.snapshots.ensure(layer)
    store.index.put("key1", CacheRecord(key="key1", layer=layer, created="2024-01-01T00:00:00Z",
                                        duration_s=1.0, description="RUN x"))
    store.index.put("key2", CacheRecord(key="key2", layer=None, created="2024-01-01T00:00:00Z",
                                        duration_s=1.0, description="RUN true"))
    r = pyb(store.root, "rmi", "k:1")
    assert r.returncode == 0, r.stderr
    assert not blob_file(store, m).exists() and not blob_file(store, c).exists()
    assert blob_file(store, layer.digest).exists() and store.snapshots.exists(layer.diff_id)

    # a stale ingest file of a dead writer goes too
    (store.root / "ingest" / "12345-deadbeefdeadbeef").write_bytes(b"partial")
    r = pyb(store.root, "prune", "-f", "-v")  # -v lists what went
    assert r.returncode == 0, r.stderr
    assert "cache record key1" in r.stdout and "Total reclaimed space: " in r.stdout
    assert r.stdout.strip().splitlines()[-1] != "Total reclaimed space: 0B"
    assert not blob_file(store, layer.digest).exists() and not store.snapshots.exists(layer.diff_id)
    assert store.index.keys() == ["key2"]          # a record without a layer costs nothing: kept
    assert list((store.root / "ingest").iterdir()) == []
    r = pyb(store.root, "prune", "-f", "-a")
    assert store.index.keys() == [] and r.stdout.strip().endswith("Total reclaimed space: 0B")


def test_prune_keeps_cache_of_tagged_images(tmp_path, store):
    d = imp(store, tree(tmp_path, "p", {"p": "p"}), "p:1")
    _, _, [layer] = closure(store, d)
    other = write_layer(tree(tmp_path, "q", {"q": "q" * 2000}), store.content, source_date_epoch=SDE)
    for key, lyr in (("used", layer), ("unused", other)):
        store.index.put(key, CacheRecord(key=key, layer=lyr, created="2024-01-01T00:00:00Z",
                                         duration_s=0.1, description=""))
    r = pyb(store.root, "prune")  # no -f: asks; anything but y is no
    assert r.returncode == 0 and "Are you sure" in r.stdout and store.index.keys() == ["unused", "used"]
    r = pyb(store.root, "prune", input="y\n")
    assert r.returncode == 0 and store.index.keys() == ["used"]
    assert not blob_file(store, other.digest).exists() and blob_file(store, layer.digest).exists()
    r = pyb(store.root, "prune", "-af")
    assert r.returncode == 0 and store.index.keys() == []
    assert blob_file(store, layer.digest).exists()  # the image still uses it
    assert store.images.resolve("p:1") == d


# -- fsck -----------------------------------------------------------------------------------------

def test_fsck_finds_corrupt_and_missing_blobs_and_repair_fixes(tmp_path, store):
    imp(store, tree(tmp_path, "g", {"g": "g"}), "good:1")
    flip = imp(store, tree(tmp_path, "f", {"f": "f" * 100}), "flip:1")
    gone = imp(store, tree(tmp_path, "m", {"m": "m" * 200}), "gone:1")
    _, _, [flayer] = closure(store, flip)
    _, gconfig, [glayer] = closure(store, gone)
    store.snapshots.ensure(flayer)
    store.snapshots.ensure(glayer)
    store.index.put("rec", CacheRecord(key="rec", layer=flayer, created="2024-01-01T00:00:00Z",
                                       duration_s=0.1, description=""))
    assert pyb(store.root, "fsck").returncode == 0

    path = blob_file(store, flayer.digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    blob_file(store, gconfig).unlink()
    (store.root / "snapshots" / "junk").write_text("x")

    r = pyb(store.root, "fsck")
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert any(line.startswith(f"blob {flayer.digest}: corrupt") for line in lines), lines
    assert any("image gone:1" in line and gconfig in line and "missing" in line for line in lines), lines
    assert any("image flip:1" in line and flayer.digest in line for line in lines), lines
    assert any(line.startswith("cache record rec:") for line in lines), lines
    assert any("junk" in line for line in lines), lines
    assert not any("good:1" in line for line in lines)

    r = pyb(store.root, "fsck", "--repair")
    assert r.returncode == 0, r.stderr
    assert f"repaired: deleted corrupt blob {flayer.digest}" in r.stdout
    assert "repaired: untagged flip:1" in r.stdout and "repaired: untagged gone:1" in r.stdout
    assert "repaired: deleted cache record rec" in r.stdout
    assert f"repaired: deleted snapshot {glayer.diff_id}" in r.stdout
    assert not path.exists() and not store.snapshots.exists(flayer.diff_id)
    assert [str(ref) for ref, _ in store.images.list()] == ["good:1"]

    r = pyb(store.root, "fsck")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ""


# -- GC locking -----------------------------------------------------------------------------------

def test_gc_waits_for_build_lease(tmp_path, store):
    orphan = store.content.put_bytes(b"written by a build, not referenced yet")
    lease_taken, release = threading.Event(), threading.Event()

    def build():
        with gc.build_lease(store.root):
            lease_taken.set()
            release.wait(30)

    t = threading.Thread(target=build)
    t.start()
    try:
        assert lease_taken.wait(10)
        with pytest.raises(gc.GCBusy):
            gc.collect(store, wait=False)
        # leases are shared: a second build starts at once
        with gc.build_lease(store.root):
            pass
        env = dict(os.environ, PYBUILD_ROOT=str(store.root))
        proc = subprocess.Popen([sys.executable, "-m", "pybuild", "prune", "-f"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()
        assert store.content.exists(orphan.digest)
        r = pyb(store.root, "rmi", "nope")  # rmi does not wait: it leaves the sweep for later
        assert "No such image" in r.stderr and "left for the next" in r.stderr
    finally:
        release.set()
        t.join()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "waiting for running builds" in err
    assert not store.content.exists(orphan.digest)
    # and the lease waits for a running GC: exclusive blocks it
    with gc.exclusive(store.root):
        got = threading.Event()
        t = threading.Thread(target=lambda: (gc.build_lease(store.root).__enter__(), got.set()))
        t.daemon = True
        t.start()
        assert not got.wait(0.5)
    assert got.wait(10)


def test_gc_api_sweep_and_mark(tmp_path, store):
    d = imp(store, tree(tmp_path, "z", {"z": "z"}), "z:1")
    m, c, [layer] = closure(store, d)
    junk = store.content.put_bytes(b"junk")
    roots = gc.mark(store)
    assert {m, c, layer.digest} <= roots.blobs and junk.digest not in roots.blobs
    assert layer.diff_id in roots.diff_ids
    res = gc.collect(store, dry_run=True)
    assert [b.digest for b in res.blobs] == [junk.digest] and store.content.exists(junk.digest)
    on_disk = os.lstat(blob_file(store, junk.digest)).st_blocks * 512  # as du counts it
    res = gc.collect(store)
    assert res.reclaimed == on_disk > 0 and not store.content.exists(junk.digest)
    assert store.content.exists(m)


def test_fsck_reports_an_unrecorded_snapshot_as_garbage_not_damage(tmp_path, store):
    """Ctrl-C between a snapshot's commit and its cache record leaves garbage, not a broken store."""
    digest = imp(store, tree(tmp_path, "o", {"o": "o"}), "orphan:1")
    _, _, [layer] = closure(store, digest)
    store.snapshots.ensure(layer)
    store.images.untag("orphan:1")
    r = pyb(store.root, "fsck")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"snapshot {layer.diff_id}: not used by any image" in r.stdout and "garbage" in r.stdout
    r = pyb(store.root, "fsck", "--repair")
    assert f"repaired: deleted snapshot {layer.diff_id}" in r.stdout
    assert pyb(store.root, "fsck").stdout == ""
