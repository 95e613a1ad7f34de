"""pybuild.cache: content store, layer tarballs, snapshots and the step cache index.

The names are loaded on first use (see pybuild/_lazy.py): `pybuild run` needs the content store,
not the index (sqlite3) or the layer codec.
"""
from pybuild._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "content": ("BlobInfo", "BlobNotFound", "BlobWriter", "ContentStore", "DigestMismatch"),
    "index": ("CacheIndex", "CacheRecord", "FileStamp", "IndexEntry", "rfc3339_now"),
    "layers": ("MEDIA_TYPE_LAYER_GZIP", "MEDIA_TYPE_LAYER_TAR", "LayerBlob", "LayerError", "unpack_layer",
               "unpack_tar_stream", "write_layer"),
    "snapshots": ("SnapshotStore",),
})
