"""OCI image manifests and configs stored as canonical JSON blobs."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from pybuild.cache.content import BlobInfo, ContentStore
from pybuild.cache.layers import LayerBlob

__all__ = [
    "MEDIA_TYPE_MANIFEST",
    "MEDIA_TYPE_CONFIG",
    "MEDIA_TYPE_INDEX",
    "MEDIA_TYPE_DOCKER_MANIFEST",
    "MEDIA_TYPE_DOCKER_CONFIG",
    "MEDIA_TYPE_DOCKER_MANIFEST_LIST",
    "MANIFEST_MEDIA_TYPES",
    "INDEX_MEDIA_TYPES",
    "InvalidImage",
    "ImageRecord",
    "Image",
    "canonical_json",
    "new_config",
    "write_image",
    "load_manifest",
    "load_image",
]

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = frozenset({MEDIA_TYPE_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({MEDIA_TYPE_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST})


# docker schema2 layer media types -> their OCI equivalents (same bytes, same digests).
DOCKER_TO_OCI_LAYER = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}


def as_oci_layers(layers: list[LayerBlob]) -> list[LayerBlob]:
    """The layers with docker media types renamed to OCI ones, so an image built on a docker
    schema2 base gets a consistent OCI manifest."""
    return [LayerBlob(digest=x.digest, diff_id=x.diff_id, size=x.size,
                      media_type=DOCKER_TO_OCI_LAYER.get(x.media_type, x.media_type)) for x in layers]


class InvalidImage(ValueError):
    """A manifest or config blob is not a usable single-platform image."""


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8 (non-ASCII kept as is)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def new_config(base: dict | None = None) -> dict:
    """A fresh OCI image config, or a deep copy of ``base`` with the required fields filled in."""
    cfg = copy.deepcopy(base) if base else {}
    cfg.setdefault("architecture", "amd64")
    cfg.setdefault("os", "linux")
    if not isinstance(cfg.get("config"), dict):
        cfg["config"] = {}
    rootfs = cfg.get("rootfs")
    if not isinstance(rootfs, dict):
        rootfs = cfg["rootfs"] = {}
    rootfs["type"] = "layers"
    if not isinstance(rootfs.get("diff_ids"), list):
        rootfs["diff_ids"] = []
    if not isinstance(cfg.get("history"), list):
        cfg["history"] = []
    return cfg


@dataclass(frozen=True)
class ImageRecord:
    manifest: BlobInfo
    config: BlobInfo


@dataclass
class Image:
    manifest_digest: str
    manifest: dict
    config: dict
    layers: list[LayerBlob] = field(default_factory=list)

    @property
    def config_digest(self) -> str:
        return self.manifest["config"]["digest"]

    @property
    def id(self) -> str:
        """The image id, as docker defines it: the config digest."""
        return self.config_digest


def _descriptor(media_type: str, digest: str, size: int) -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size}


def write_image(
    content: ContentStore,
    config: dict,
    layers: list[LayerBlob],
    *,
    annotations: dict[str, str] | None = None,
) -> ImageRecord:
    """Store ``config`` (with rootfs.diff_ids taken from ``layers``) and its manifest.

    ``config`` itself is not modified.  Every layer blob must already be in ``content``.
    """
    cfg = new_config(config)
    cfg["rootfs"]["diff_ids"] = [layer.diff_id for layer in layers]
    for layer in layers:
        if not content.exists(layer.digest):
            raise InvalidImage(f"layer blob {layer.digest} is not in the content store")
    config_blob = content.put_bytes(canonical_json(cfg))
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": _descriptor(MEDIA_TYPE_CONFIG, config_blob.digest, config_blob.size),
        "layers": [_descriptor(layer.media_type, layer.digest, layer.size) for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    manifest_blob = content.put_bytes(canonical_json(manifest))
    return ImageRecord(manifest=manifest_blob, config=config_blob)


def _read_json(content: ContentStore, digest: str, what: str) -> dict:
    if not content.exists(digest):
        raise InvalidImage(f"{what} blob {digest} is not in the content store")
    data = content.read_bytes(digest)
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidImage(f"{what} blob {digest} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise InvalidImage(f"{what} blob {digest} is not a JSON object")
    return obj


def load_manifest(content: ContentStore, manifest_digest: str) -> dict:
    manifest = _read_json(content, manifest_digest, "manifest")
    media_type = manifest.get("mediaType", MEDIA_TYPE_MANIFEST)
    if media_type in INDEX_MEDIA_TYPES or "manifests" in manifest:
        raise InvalidImage(f"{manifest_digest} is an image index, not a single-platform manifest")
    if media_type not in MANIFEST_MEDIA_TYPES or manifest.get("schemaVersion") != 2:
        raise InvalidImage(f"{manifest_digest}: unsupported manifest type {media_type!r}")
    if not isinstance(manifest.get("config"), dict) or "digest" not in manifest["config"]:
        raise InvalidImage(f"manifest {manifest_digest} has no config descriptor")
    if not isinstance(manifest.get("layers", []), list):
        raise InvalidImage(f"manifest {manifest_digest} has a malformed layers list")
    return manifest


def load_image(content: ContentStore, manifest_digest: str) -> Image:
    """Read a manifest and its config; pair manifest layers with config diff_ids."""
    manifest = load_manifest(content, manifest_digest)
    config = _read_json(content, manifest["config"]["digest"], "config")
    descriptors = manifest.get("layers", [])
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(descriptors):
        raise InvalidImage(
            f"manifest {manifest_digest} has {len(descriptors)} layers but its config lists "
            f"{len(diff_ids)} diff_ids"
        )
    layers = [
        LayerBlob(digest=d["digest"], diff_id=diff_id, size=int(d["size"]), media_type=d["mediaType"])
        for d, diff_id in zip(descriptors, diff_ids)
    ]
    return Image(manifest_digest=manifest_digest, manifest=manifest, config=config, layers=layers)
