"""The step cache index (SQLite, WAL) and the build context's remembered file digests."""

import builtins
import json
import multiprocessing
import os
import sqlite3
import threading

import pytest

from pybuild.builder import context as ctxmod
from pybuild.builder import copy as copyop
from pybuild.builder.context import ContextView
from pybuild.cache import CacheIndex, CacheRecord, ContentStore, LayerBlob, MEDIA_TYPE_LAYER_GZIP, rfc3339_now
from pybuild.cache import gc
from pybuild.cache.index import CacheIndexError, FileStamp, IndexEntry


@pytest.fixture
def root(tmp_path):
    return tmp_path / "root"


def _layer(cs: ContentStore, data: bytes) -> LayerBlob:
    blob = cs.put_bytes(data)
    return LayerBlob(blob.digest, "sha256:" + "1" * 64, blob.size, MEDIA_TYPE_LAYER_GZIP)


def test_put_get_roundtrip_survives_restart(root):
    cs = ContentStore(root)
    layer = _layer(cs, b"layer-bytes")
    idx = CacheIndex(root)
    key = "sha256:" + "a" * 64
    assert idx.get(key) is None
    rec = CacheRecord(key, layer, rfc3339_now(), 1.25, "RUN echo hi")
    idx.put(key, rec)
    assert idx.get(key) == rec
    rec2 = CacheRecord("k2", None, rfc3339_now(), 0.0, "ENV A=b")  # metadata-only steps have no layer
    idx.put("k2", rec2)
    idx.close()
    again = CacheIndex(root)
    assert again.get(key) == rec and again.get("k2") == rec2
    assert again.keys() == sorted([key, "k2"])
    assert (root / "cache" / "index.db").is_file()
    conn = sqlite3.connect(root / "cache" / "index.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_replace_and_delete(root):
    idx = CacheIndex(root)
    idx.put("k", CacheRecord("k", None, rfc3339_now(), 1.0, "first"))
    idx.put("k", CacheRecord("k", None, rfc3339_now(), 2.0, "second"))
    assert idx.get("k").description == "second" and idx.keys() == ["k"]
    idx.delete("k")
    assert idx.get("k") is None and idx.keys() == []


def test_missing_blob_is_a_miss(root):
    cs = ContentStore(root)
    layer = _layer(cs, b"x")
    idx = CacheIndex(root, cs)
    idx.put("k", CacheRecord("k", layer, rfc3339_now(), 1.0, "d"))
    assert idx.get("k") is not None
    cs.delete(layer.digest)
    assert idx.get("k") is None
    assert idx.read("k") is not None  # the record is still there: fsck and GC see it


def test_malformed_row_is_a_miss_and_reported(root):
    idx = CacheIndex(root)
    cs = ContentStore(root)
    idx.put("k", CacheRecord("k", _layer(cs, b"y"), rfc3339_now(), 1.0, "d"))
    conn = sqlite3.connect(root / "cache" / "index.db")
    conn.execute("UPDATE records SET layer_size = NULL WHERE key = 'k'")  # a hand-edited, broken row
    conn.commit()
    conn.close()
    assert idx.get("k") is None
    with pytest.raises(ValueError):
        idx.read("k")
    assert idx.entries() == [("k", "cache record k: incomplete layer descriptor")]
    assert gc.cache_roots(idx).blobs == set()
    rec = CacheRecord("k", None, rfc3339_now(), 2.0, "x")
    idx.put("k", rec)
    assert idx.get("k") == rec


def test_bad_keys(root):
    idx = CacheIndex(root)
    for bad in ["../x", "a/b", "", ".hidden", "a..b"]:
        with pytest.raises(ValueError):
            idx.put(bad, CacheRecord(bad, None, rfc3339_now(), 0, ""))
    with pytest.raises(ValueError):
        idx.put("a", CacheRecord("b", None, rfc3339_now(), 0, ""))


def test_hits_are_counted(root):
    idx = CacheIndex(root)
    idx.put("k", CacheRecord("k", None, "2024-01-01T00:00:00Z", 1.0, "d"))
    [entry] = idx.entries()
    assert entry.last_used is None and entry.use_count == 0
    idx.get("k")
    idx.get("k")
    [entry] = idx.entries()
    assert isinstance(entry, IndexEntry) and entry.use_count == 2 and entry.last_used is not None


def test_not_a_database_is_a_clear_error(root):
    (root / "cache").mkdir(parents=True)
    (root / "cache" / "index.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CacheIndexError, match="index.db.*removing the file resets the build cache"):
        CacheIndex(root)


def test_newer_schema_is_refused(root):
    CacheIndex(root).close()
    conn = sqlite3.connect(root / "cache" / "index.db")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(CacheIndexError, match="newer pybuild"):
        CacheIndex(root)


def test_legacy_json_records_are_imported_once(root):
    cs = ContentStore(root)
    layer = _layer(cs, b"old")
    legacy = root / "cache" / "keys"
    legacy.mkdir(parents=True)
    (legacy / "old.json").write_text(json.dumps({
        "key": "old", "layer": {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size,
                                "media_type": layer.media_type},
        "created": "2024-01-01T00:00:00Z", "duration_s": 3.5, "description": "RUN make"}))
    (legacy / "meta.json").write_text(json.dumps({"key": "meta", "layer": None, "created": "2024-01-01T00:00:00Z",
                                                 "duration_s": 0, "description": "WORKDIR /"}))
    (legacy / "torn.json").write_text("{ torn")
    idx = CacheIndex(root)
    assert idx.keys() == ["meta", "old"]
    assert idx.get("old") == CacheRecord("old", layer, "2024-01-01T00:00:00Z", 3.5, "RUN make")
    assert not legacy.exists()
    assert CacheIndex(root).keys() == ["meta", "old"]


# -- concurrency ------------------------------------------------------------------------------------

def _writer(root, tag: str, n: int, other: str, errors) -> None:
    try:
        idx = CacheIndex(root)
        for i in range(n):
            idx.put(f"{tag}-{i}", CacheRecord(f"{tag}-{i}", None, rfc3339_now(), float(i), tag))
            idx.get(f"{other}-{i}")  # reads interleaved with the other process's writes
            idx.put_file_digests([(FileStamp(f"/ctx/{tag}/{i}", 1, i, 1, 1, 1), "0" * 64)])
    except BaseException as exc:  # report, do not hang the parent
        errors.put(f"{tag}: {exc!r}")
        raise


def test_two_processes_share_the_index(root):
    parent = CacheIndex(root)  # opened before the fork: the children must not reuse its connection
    parent.put("before", CacheRecord("before", None, rfc3339_now(), 0.0, "x"))
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(root, "a", 300, "b", errors)),
             ctx.Process(target=_writer, args=(root, "b", 300, "a", errors))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0], [errors.get() for _ in range(errors.qsize())]
    keys = set(parent.keys())
    assert keys == {"before"} | {f"a-{i}" for i in range(300)} | {f"b-{i}" for i in range(300)}
    assert all(parent.get(f"b-{i}").duration_s == float(i) for i in range(300))
    assert parent.file_digest_count() == 600
    assert parent.check() == []


def test_threads_share_one_index(root):
    idx = CacheIndex(root)
    errors = []

    def work(t: int) -> None:
        try:
            for i in range(100):
                idx.put(f"t{t}-{i}", CacheRecord(f"t{t}-{i}", None, rfc3339_now(), 0.0, ""))
                assert idx.get(f"t{t}-{i}") is not None
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(idx.keys()) == 400


# -- GC and prune through the index -----------------------------------------------------------------

def test_gc_marks_and_prune_deletes_through_the_index(tmp_path):
    from pybuild.store import Store

    store = Store.open(tmp_path / "s")
    kept = _layer(store.content, b"record layer")
    stray = store.content.put_bytes(b"nothing uses me")
    store.index.put("r", CacheRecord("r", kept, rfc3339_now(), 1.0, "RUN x"))
    store.index.put_file_digests([(FileStamp("/ctx/f", 1, 2, 3, 4, 5), "0" * 64)])
    result = gc.collect(store)
    assert [b.digest for b in result.blobs] == [stray.digest]
    assert store.content.exists(kept.digest)
    with gc.exclusive(store.root):
        assert gc.prune_cache(store, all=True) == ["r"]
    assert store.index.keys() == [] and store.index.file_digest_count() == 0
    assert [b.digest for b in gc.collect(store).blobs] == [kept.digest]


# -- context file digests ---------------------------------------------------------------------------

@pytest.fixture
def context_dir(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    for i in range(40):
        (ctx / "src" / f"f{i:02d}.txt").write_text(f"file {i:02d}\n")
    return ctx


class _OpenCounter:
    """Counts opens of files under one directory, whoever opens them."""

    def __init__(self, monkeypatch, under):
        self.under = str(under) + os.sep
        self.paths: list[str] = []
        real_open = builtins.open

        def counting_open(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(self.under):
                self.paths.append(os.path.relpath(os.fspath(file), self.under))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", counting_open)

    def take(self) -> list[str]:
        out, self.paths = sorted(self.paths), []
        return out


def _checksum(ctx, index):
    """What a build does for `COPY src/ /dst/`: match, then checksum the sources."""
    view = ContextView(ctx, checksums=index)
    manifest = copyop.content_manifest(view, copyop.match_sources(view, ["src"], "build context"))
    view.save_checksums()
    return copyop.content_digest(manifest), {path: digest for _, path, digest in manifest}


def test_unchanged_context_files_are_not_read_again(root, context_dir, monkeypatch):
    # Trust every digest at once: the racy-timestamp guard is tested on its own below.
    monkeypatch.setattr(ctxmod, "RACY_WINDOW_NS", -10**15)
    monkeypatch.setattr(ctxmod, "RACY_WINDOW_COARSE_NS", -10**15)
    opens = _OpenCounter(monkeypatch, context_dir)
    first, files = _checksum(context_dir, CacheIndex(root))
    assert len(opens.take()) == 40
    second, _ = _checksum(context_dir, CacheIndex(root))  # a new index object: a later build
    assert opens.take() == [] and second == first

    # Same size, same mtime, different content: rewritten in place, so only ctime tells.
    target = context_dir / "src" / "f07.txt"
    st = os.stat(target)
    target.write_text("FILE 07\n")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(target).st_size == st.st_size and os.stat(target).st_mtime_ns == st.st_mtime_ns
    third, files3 = _checksum(context_dir, CacheIndex(root))
    assert opens.take() == ["src/f07.txt"] and third != first
    changed = [p for p in files if files[p] != files3[p]]
    assert len(changed) == 1 and "f07.txt" in changed[0]

    # Replaced by another file (new inode) with the same size and mtime.
    target = context_dir / "src" / "f08.txt"
    st = os.stat(target)
    (context_dir / "new").write_text("FILE 08\n")
    os.utime(context_dir / "new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(context_dir / "new", target)
    fourth, _ = _checksum(context_dir, CacheIndex(root))
    assert opens.take() == ["src/f08.txt"] and fourth != third
    assert _checksum(context_dir, CacheIndex(root))[0] == fourth and opens.take() == []


def test_recently_changed_files_are_not_trusted(root, context_dir, monkeypatch):
    # A file changed within the racy window may change again with the same timestamps: never
    # remembered, so it is read by every build.
    monkeypatch.setattr(ctxmod, "RACY_WINDOW_NS", 10**18)
    monkeypatch.setattr(ctxmod, "RACY_WINDOW_COARSE_NS", 10**18)
    opens = _OpenCounter(monkeypatch, context_dir)
    _checksum(context_dir, CacheIndex(root))
    _checksum(context_dir, CacheIndex(root))
    assert len(opens.take()) == 80
    assert CacheIndex(root).file_digest_count() == 0


def test_file_digests_are_scoped_to_their_directory(root):
    idx = CacheIndex(root)
    idx.put_file_digests([(FileStamp("/ctx/a", 1, 1, 1, 1, 1), "a" * 64),
                          (FileStamp("/ctx2/b", 1, 2, 1, 1, 1), "b" * 64),
                          (FileStamp("/ctx/sub/c", 1, 3, 1, 1, 1), "c" * 64)])
    assert sorted(idx.file_digests("/ctx")) == ["/ctx/a", "/ctx/sub/c"]
    assert sorted(idx.file_digests("/ctx2/")) == ["/ctx2/b"]


def test_context_walk_matches_the_generic_walk(tmp_path):
    from pybuild.builder.dockerignore import DockerIgnore
    from pybuild.cache.view import LayeredView

    ctx = tmp_path / "ctx"
    for d in ["a/b/c", "a/skip/keep", "z", "node_modules/x", "é"]:
        (ctx / d).mkdir(parents=True)
    for f in ["a/1", "a/b/2", "a/b/c/3", "a/skip/4", "a/skip/keep/5", "z/B", "z/a", "node_modules/x/y", "é/ü",
              "top.log", "top.txt"]:
        (ctx / f).write_text(f)
    os.symlink("a/b", ctx / "link-to-dir")
    os.symlink("/etc/passwd", ctx / "abs-link")
    os.mknod(ctx / "z" / "whiteout", 0o600 | 0o020000, 0)  # a 0/0 char device: hidden, as in the generic view
    ignore = DockerIgnore.parse("node_modules\na/skip\n!a/skip/keep\n*.log\n")
    for view in [ContextView(ctx), ContextView(ctx, ignore)]:
        for start in ["/", "a", "link-to-dir", "a/skip", "top.txt", "missing"]:
            fast = [(e.path, e.real, e.st.st_ino) for e in view.walk(start)]
            generic = [(e.path, e.real, e.st.st_ino) for e in LayeredView.walk(view, start)]
            assert fast == generic, start
    assert "/a/skip/keep/5" in [e.path for e in ContextView(ctx, ignore).walk("/")]


def test_builds_take_context_digests_from_the_index(cli, tmp_path):
    import hashlib

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY a.txt /a.txt\n")
    (ctx / "a.txt").write_text("hello\n")
    cli("build", str(ctx), check=True)
    conn = sqlite3.connect(cli.root / "cache" / "index.db")
    rows = dict(conn.execute("SELECT path, digest FROM context_files"))
    assert rows == {str((ctx / "a.txt").resolve()): hashlib.sha256(b"hello\n").hexdigest()}
    # Forge the remembered digest: a build that trusts it (does not read the file) sees new content.
    conn.execute("UPDATE context_files SET digest = ?", ("0" * 64,))
    conn.commit()
    conn.close()
    r = cli("build", "--progress", "plain", str(ctx), check=True)
    assert "cache miss: copied files changed: a.txt" in r.stderr


def test_prune_forgets_digests_of_deleted_files(tmp_path):
    from pybuild.store import Store

    store = Store.open(tmp_path / "s")
    kept = tmp_path / "kept.txt"
    kept.write_text("x")
    store.index.put_file_digests([(FileStamp(str(kept), 1, 2, 3, 4, 5), "a" * 64),
                                  (FileStamp(str(tmp_path / "gone.txt"), 1, 3, 3, 4, 5), "b" * 64)])
    with gc.exclusive(store.root):
        gc.prune_cache(store)
    assert list(store.index.file_digests(str(tmp_path))) == [str(kept)]
