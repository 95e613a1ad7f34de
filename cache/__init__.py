"""pybuild.cache: content store, layer tarballs, snapshots and the step cache index."""
from .content import BlobInfo, BlobNotFound, BlobWriter, ContentStore, DigestMismatch
from .index import CacheIndex, CacheRecord, FileStamp, IndexEntry, rfc3339_now
from .layers import (
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_TAR,
    LayerBlob,
    LayerError,
    unpack_layer,
    unpack_tar_stream,
    write_layer,
)
from .snapshots import SnapshotStore

__all__ = [
    "BlobInfo",
    "BlobNotFound",
    "BlobWriter",
    "ContentStore",
    "DigestMismatch",
    "CacheIndex",
    "CacheRecord",
    "FileStamp",
    "IndexEntry",
    "rfc3339_now",
    "MEDIA_TYPE_LAYER_GZIP",
    "MEDIA_TYPE_LAYER_TAR",
    "LayerBlob",
    "LayerError",
    "unpack_layer",
    "unpack_tar_stream",
    "write_layer",
    "SnapshotStore",
]
