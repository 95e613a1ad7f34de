import hashlib
import multiprocessing
import os
import stat

import pytest

from pybuild.cache import BlobInfo, BlobNotFound, ContentStore, DigestMismatch


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path):
    return ContentStore(tmp_path / "root")


def ingest_files(store):
    return sorted(os.listdir(store.root / "ingest"))


def test_put_read_roundtrip(store):
    info = store.put_bytes(b"hello")
    assert info == BlobInfo(sha(b"hello"), 5)
    assert store.exists(info.digest)
    assert store.size(info.digest) == 5
    assert store.read_bytes(info.digest) == b"hello"
    with store.open(info.digest) as f:
        assert f.read() == b"hello"
    p = store.path(info.digest)
    assert p == store.root / "blobs" / "sha256" / info.digest.split(":")[1]
    assert stat.S_IMODE(p.stat().st_mode) == 0o444
    assert list(store.walk()) == [info]
    assert ingest_files(store) == []


def test_streaming_writer_and_idempotent_commit(store):
    with store.writer() as w:
        for i in range(100):
            w.write(b"x" * 1000)
        # in-progress data is invisible to readers
        assert not store.exists(sha(b"x" * 100_000))
        assert len(ingest_files(store)) == 1
        info = w.commit(expected_digest=sha(b"x" * 100_000), expected_size=100_000)
    assert info.size == 100_000 and store.exists(info.digest)
    # committing the same content again is a no-op success
    again = store.put_bytes(b"x" * 100_000, expected_digest=info.digest)
    assert again == info
    assert list(store.walk()) == [info]
    assert ingest_files(store) == []


def test_digest_and_size_mismatch(store):
    with pytest.raises(DigestMismatch):
        store.put_bytes(b"abc", expected_digest=sha(b"abd"))
    with store.writer() as w:
        w.write(b"abc")
        with pytest.raises(DigestMismatch):
            w.commit(expected_size=4)
    assert list(store.walk()) == []
    assert ingest_files(store) == []


def test_abandoned_writer_leaves_nothing(store):
    with store.writer() as w:
        w.write(b"partial")
    with pytest.raises(RuntimeError):
        with store.writer() as w:
            w.write(b"partial")
            raise RuntimeError("boom")
    assert ingest_files(store) == []
    assert list(store.walk()) == []


def test_missing_blob_and_delete(store):
    d = sha(b"nope")
    assert not store.exists(d)
    with pytest.raises(BlobNotFound):
        store.open(d)
    with pytest.raises(BlobNotFound):
        store.size(d)
    with pytest.raises(KeyError):  # BlobNotFound is a KeyError
        store.read_bytes(d)
    info = store.put_bytes(b"data")
    store.delete(info.digest)
    store.delete(info.digest)  # idempotent
    assert not store.exists(info.digest)


def test_invalid_digest(store):
    for bad in ["sha256:xyz", "md5:" + "0" * 32, "../../etc/passwd", "sha256:" + "A" * 64]:
        with pytest.raises(ValueError):
            store.path(bad)


def test_read_bytes_verifies(store):
    info = store.put_bytes(b"good")
    p = store.path(info.digest)
    os.chmod(p, 0o644)
    p.write_bytes(b"evil")
    with pytest.raises(DigestMismatch):
        store.read_bytes(info.digest)
    assert store.read_bytes(info.digest, verify=False) == b"evil"


def test_clean_ingest_skips_live_writers(store):
    stale = store.root / "ingest" / "stale-temp"
    stale.write_bytes(b"junk")
    with store.writer() as w:
        w.write(b"live")
        assert store.clean_ingest(older_than_s=3600) == 0  # stale is too young
        assert store.clean_ingest() == 1  # removes stale only
        assert ingest_files(store) == [w.path.name]
        info = w.commit()
    assert store.read_bytes(info.digest) == b"live"
    assert ingest_files(store) == []


def _put_many(root, data, n):
    s = ContentStore(root)
    for _ in range(n):
        s.put_bytes(data)


def test_concurrent_writers_same_content(store):
    data = os.urandom(200_000)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_put_many, args=(store.root, data, 20)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    assert [b.digest for b in store.walk()] == [sha(data)]
    assert store.read_bytes(sha(data)) == data
    assert ingest_files(store) == []
