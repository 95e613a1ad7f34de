import os

import pytest

from pybuild.cache import CacheIndex, CacheRecord, ContentStore, LayerBlob, MEDIA_TYPE_LAYER_GZIP, rfc3339_now


@pytest.fixture
def root(tmp_path):
    return tmp_path / "root"


def test_put_get_roundtrip(root):
    cs = ContentStore(root)
    blob = cs.put_bytes(b"layer-bytes")
    layer = LayerBlob(blob.digest, "sha256:" + "1" * 64, blob.size, MEDIA_TYPE_LAYER_GZIP)
    idx = CacheIndex(root)
    key = "sha256:" + "a" * 64
    assert idx.get(key) is None
    rec = CacheRecord(key, layer, rfc3339_now(), 1.25, "RUN echo hi")
    idx.put(key, rec)
    assert idx.get(key) == rec
    assert (root / "cache" / "keys" / f"{key}.json").is_file()
    assert [n for n in os.listdir(root / "cache" / "keys") if n.startswith(".tmp")] == []
    # metadata-only steps have no layer
    rec2 = CacheRecord("k2", None, rfc3339_now(), 0.0, "ENV A=b")
    idx.put("k2", rec2)
    assert CacheIndex(root).get("k2") == rec2


def test_missing_blob_is_a_miss(root):
    cs = ContentStore(root)
    blob = cs.put_bytes(b"x")
    layer = LayerBlob(blob.digest, "sha256:" + "2" * 64, blob.size, MEDIA_TYPE_LAYER_GZIP)
    idx = CacheIndex(root, cs)
    idx.put("k", CacheRecord("k", layer, rfc3339_now(), 1.0, "d"))
    assert idx.get("k") is not None
    cs.delete(blob.digest)
    assert idx.get("k") is None


def test_corrupt_record_is_a_miss_and_overwrite(root):
    idx = CacheIndex(root)
    (root / "cache" / "keys" / "k.json").write_text("{ torn")
    assert idx.get("k") is None
    rec = CacheRecord("k", None, rfc3339_now(), 2.0, "x")
    idx.put("k", rec)
    assert idx.get("k") == rec


def test_bad_keys(root):
    idx = CacheIndex(root)
    for bad in ["../x", "a/b", "", ".hidden", "a..b"]:
        with pytest.raises(ValueError):
            idx.put(bad, CacheRecord(bad, None, rfc3339_now(), 0, ""))
