"""OCI images: references, manifests/configs, the image store (an OCI layout), archives.

The names are loaded on first use (see pybuild/_lazy.py): reading the image store does not need
the archive code.
"""
from pybuild._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "archive": ("ArchiveError", "import_rootfs", "load_oci_archive", "save_oci_archive"),
    "image": ("INDEX_MEDIA_TYPES", "MANIFEST_MEDIA_TYPES", "MEDIA_TYPE_CONFIG", "MEDIA_TYPE_DOCKER_CONFIG",
              "MEDIA_TYPE_DOCKER_MANIFEST", "MEDIA_TYPE_DOCKER_MANIFEST_LIST", "MEDIA_TYPE_INDEX",
              "MEDIA_TYPE_MANIFEST", "Image", "ImageRecord", "InvalidImage", "canonical_json", "load_image",
              "load_manifest", "new_config", "write_image"),
    "reference": ("DEFAULT_TAG", "InvalidReference", "Reference", "parse_reference"),
    "store": ("ANNOTATION_CONTAINERD_NAME", "ANNOTATION_CREATED", "ANNOTATION_REF_NAME", "ImageNotFound",
              "ImageStore", "ImageStoreError"),
})
