"""OCI images: references, manifests/configs, the image store (an OCI layout), archives."""

from .archive import ArchiveError, import_rootfs, load_oci_archive, save_oci_archive
from .image import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    Image,
    ImageRecord,
    InvalidImage,
    canonical_json,
    load_image,
    load_manifest,
    new_config,
    write_image,
)
from .reference import DEFAULT_TAG, InvalidReference, Reference, parse_reference
from .store import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_CREATED,
    ANNOTATION_REF_NAME,
    ImageNotFound,
    ImageStore,
    ImageStoreError,
)

__all__ = [
    "ANNOTATION_CONTAINERD_NAME", "ANNOTATION_CREATED", "ANNOTATION_REF_NAME",
    "ArchiveError", "DEFAULT_TAG", "INDEX_MEDIA_TYPES", "MANIFEST_MEDIA_TYPES",
    "MEDIA_TYPE_CONFIG", "MEDIA_TYPE_DOCKER_CONFIG", "MEDIA_TYPE_DOCKER_MANIFEST",
    "MEDIA_TYPE_DOCKER_MANIFEST_LIST", "MEDIA_TYPE_INDEX", "MEDIA_TYPE_MANIFEST",
    "Image", "ImageNotFound", "ImageRecord", "ImageStore", "ImageStoreError", "InvalidImage",
    "InvalidReference", "Reference", "canonical_json", "import_rootfs", "load_image",
    "load_manifest", "load_oci_archive", "new_config", "parse_reference", "save_oci_archive",
    "write_image",
]
