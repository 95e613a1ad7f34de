"""The build cache in a registry: the cache layout of :mod:`pybuild.cache.transfer` (one OCI
artifact manifest, ``artifactType`` ``application/vnd.pybuild.cache.v1``, whose config lists the
step records and whose layers are the records' layer blobs) pushed to / read from ``REF``.

:func:`export_cache_to_registry` is ``--cache-to type=registry,ref=REF``: the same manifest bytes
:func:`~pybuild.cache.transfer.cache_manifest` gives for a directory export, so a registry cache
and a local one of the same records have the same digest; blobs the registry has are skipped.

:class:`RegistryCacheImport` is ``--cache-from type=registry,ref=REF`` with the interface of
:class:`~pybuild.cache.transfer.CacheImport` (``records``, ``origin``, ``fetch``): ``load`` reads
only the manifest and config (verified); a layer is downloaded by ``fetch`` when a cache hit needs
it, through the content store's verifying writer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pybuild.cache.content import ContentStore
from pybuild.cache.index import CacheRecord
from pybuild.cache.transfer import (
    ARTIFACT_TYPE,
    MEDIA_TYPE_CACHE_CONFIG,
    CacheImport,
    CacheTransferError,
    _record_from,
    cache_manifest,
)
from pybuild.oci.reference import InvalidReference, RemoteReference, normalize_reference

from .client import RegistryClient, RegistryError, api_host
from .config import RegistryConfig, load_config
from .pull import _Puller
from .push import PushResult, push_manifest

__all__ = ["RegistryCacheImport", "export_cache_to_registry", "CacheExportResult"]


@dataclass(frozen=True)
class CacheExportResult:
    push: PushResult
    records: int


def _ref(text: str, flag: str) -> RemoteReference:
    try:
        return normalize_reference(text)
    except InvalidReference as exc:
        raise CacheTransferError(f"{flag} ref={text}: {exc}") from None


def export_cache_to_registry(store, records, ref: str, *, config: RegistryConfig | None = None,
                             progress=lambda line: None) -> CacheExportResult:
    """Push ``records`` (and their layers, which must be in ``store``'s content store) as the cache
    artifact ``ref``. The caller holds a GC lease. The config blob is written to the content store
    first (pushes read blobs from there); it is unreferenced afterwards and GC may sweep it."""
    records = list(records)
    remote = _ref(ref, "--cache-to")
    config_bytes, manifest = cache_manifest(records)
    store.content.put_bytes(config_bytes)
    try:
        result = push_manifest(store, manifest, remote, config=config, progress=progress)
    except RegistryError as exc:
        raise CacheTransferError(f"--cache-to ref={ref}: {exc}") from None
    return CacheExportResult(result, len(records))


class RegistryCacheImport(CacheImport):
    """Records of a cache artifact in a registry; layers fetched on demand (thread-safe)."""

    def __init__(self, ref: RemoteReference, records: dict[str, CacheRecord], client: RegistryClient):
        super().__init__(ref.name, records)
        self.ref = ref
        self._client = client

    @property
    def origin(self) -> str:
        return f"registry:{self.ref}"

    @classmethod
    def load(cls, ref: str, *, config: RegistryConfig | None = None) -> "RegistryCacheImport":  # type: ignore[override]
        """Read the cache manifest and config at ``ref`` (digests verified). CacheTransferError
        (a PybuildError) when the registry is unreachable, denies access or holds no cache there."""
        remote = _ref(ref, "--cache-from")
        where = f"--cache-from ref={ref}"
        config = config if config is not None else load_config()
        client = RegistryClient(api_host(remote.registry), auth_host=remote.registry, config=config)
        puller = _Puller(client, remote, None, lambda line: None)
        try:
            data, _media_type, _digest = puller.manifest(remote.digest or remote.tag or "latest")
            manifest = json.loads(data)
            config_desc = manifest.get("config") or {}
            if manifest.get("artifactType", ARTIFACT_TYPE) != ARTIFACT_TYPE or \
                    config_desc.get("mediaType") != MEDIA_TYPE_CACHE_CONFIG:
                raise CacheTransferError(f"{where}: not a pybuild cache ({ARTIFACT_TYPE})")
            resp = client.request("GET", f"/v2/{remote.repository}/blobs/{config_desc['digest']}",
                                  scopes=puller.scopes, what="cache config")
            body = resp.content
        except RegistryError as exc:
            client.close()
            raise CacheTransferError(f"{where}: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            client.close()
            raise CacheTransferError(f"{where}: malformed cache manifest: {exc}") from None
        if "sha256:" + hashlib.sha256(body).hexdigest() != config_desc["digest"]:
            client.close()
            raise CacheTransferError(f"{where}: cache config {config_desc['digest']} is corrupt")
        try:
            raw_records = json.loads(body)["records"]
            if not isinstance(raw_records, list):
                raise TypeError("records is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            client.close()
            raise CacheTransferError(f"{where}: malformed cache config: {exc}") from None
        layers = {d["digest"]: d for d in manifest.get("layers") or []}
        records = {}
        for obj in raw_records:
            rec = _record_from(obj, layers, where)
            records[rec.key] = rec
        return cls(remote, records, client)

    def fetch(self, record: CacheRecord, content: ContentStore) -> int:
        """Download ``record``'s layer into ``content`` (verified) unless it is there; bytes fetched."""
        if record.layer is None or content.exists(record.layer.digest):
            return 0
        layer = record.layer
        try:
            _Puller(self._client, self.ref, content, lambda line: None).blob(
                {"digest": layer.digest, "size": layer.size, "mediaType": layer.media_type})
        except RegistryError as exc:
            raise CacheTransferError(f"--cache-from ref={self.ref}: layer {layer.digest}: {exc}") from None
        return layer.size

    def close(self) -> None:
        self._client.close()
