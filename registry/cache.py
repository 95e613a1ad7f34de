"""The build cache in a registry: the cache layout of :mod:`pybuild.cache.transfer` (one OCI
artifact manifest, ``artifactType`` ``application/vnd.pybuild.cache.v1``, whose config lists the
step records and whose layers are the records' layer blobs) pushed to / read from ``REF``.

:func:`export_cache_to_registry` is ``--cache-to type=registry,ref=REF``: the same manifest bytes
:func:`~pybuild.cache.transfer.cache_manifest` gives for a directory export, so a registry cache
and a local one of the same records have the same digest; blobs the registry has are skipped.

:class:`RegistryCacheImport` is ``--cache-from type=registry,ref=REF`` with the interface of
:class:`~pybuild.cache.transfer.CacheImport` (``records``, ``mounts``, ``origin``, ``fetch``,
``fetch_layer``, ``close``): ``load`` reads only the manifest and config (verified); a layer is
downloaded by ``fetch`` when a cache hit needs it (or by ``fetch_layer`` when a cache mount is
restored), through the content store's verifying writer. Registry errors (not found, TLS,
unauthorized) become one-line :class:`~pybuild.cache.transfer.CacheTransferError` messages:
``CacheSources.open`` turns them into warnings, ``--cache-to`` into a failed build.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from pybuild.cache.content import ContentStore
from pybuild.cache.index import CacheRecord
from pybuild.cache.layers import LayerBlob
from pybuild.cache.transfer import (
    ARTIFACT_TYPE,
    MEDIA_TYPE_CACHE_CONFIG,
    CacheImport,
    CacheMountLayer,
    CacheTransferError,
    cache_manifest,
    read_cache_config,
)
from pybuild.oci.reference import InvalidReference, RemoteReference, normalize_reference

from .client import RegistryClient, RegistryError, api_host
from .config import RegistryConfig, load_config
from .pull import _Puller
from .push import PushResult, push_manifest

__all__ = ["CacheExportResult", "RegistryCacheImport", "export_cache_to_registry"]


@dataclass(frozen=True)
class CacheExportResult:
    push: PushResult
    records: int
    mounts: int = 0


def _ref(text: str, flag: str) -> RemoteReference:
    try:
        return normalize_reference(text)
    except InvalidReference as exc:
        raise CacheTransferError(f"{flag} ref={text}: {exc}") from None


def export_cache_to_registry(store, records, ref: str, *, mounts: Iterable[CacheMountLayer] = (),
                             config: RegistryConfig | None = None,
                             progress=lambda line: None) -> CacheExportResult:
    """Push ``records`` and cache ``mounts`` (their layers must be in ``store``'s content store) as
    the cache artifact ``ref``; blobs the registry has are not uploaded again. The caller holds a GC
    lease. The config blob is written to the content store first (pushes read blobs from there);
    it is unreferenced afterwards and GC may sweep it. The tag moves only after every blob is up
    (the manifest PUT is the commit point), so a failed push leaves the previous cache in place."""
    records, mounts = list(records), list(mounts)
    remote = _ref(ref, "--cache-to")
    config_bytes, manifest = cache_manifest(records, mounts)
    store.content.put_bytes(config_bytes)
    try:
        result = push_manifest(store, manifest, remote, config=config, progress=progress)
    except RegistryError as exc:
        raise CacheTransferError(f"--cache-to ref={ref}: {exc}") from None
    return CacheExportResult(result, len(records), len(mounts))


class RegistryCacheImport(CacheImport):
    """Records and cache mounts of a cache artifact in a registry; layers fetched on demand (thread-safe).
    ``close()`` releases the HTTP connections (the build calls it through ``CacheSources.close``)."""

    def __init__(self, ref: RemoteReference, records: dict[str, CacheRecord], client: RegistryClient,
                 mounts: dict[str, CacheMountLayer] | None = None):
        super().__init__(ref.name, records, mounts)
        self.ref = ref
        self._client = client

    @property
    def origin(self) -> str:
        return f"registry:{self.ref}"

    @classmethod
    def load(cls, ref: str, *, config: RegistryConfig | None = None) -> RegistryCacheImport:  # type: ignore[override]
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
            records, mounts = read_cache_config(manifest, body, where)
        except CacheTransferError:
            client.close()
            raise
        return cls(remote, records, client, mounts)

    def fetch_layer(self, layer: LayerBlob, content: ContentStore) -> int:
        """Download ``layer`` into ``content`` (verified) unless it is there; bytes fetched."""
        if content.exists(layer.digest):
            return 0
        try:
            _Puller(self._client, self.ref, content, lambda line: None).blob(
                {"digest": layer.digest, "size": layer.size, "mediaType": layer.media_type})
        except RegistryError as exc:
            raise CacheTransferError(f"--cache-from ref={self.ref}: layer {layer.digest}: {exc}") from None
        return layer.size

    def close(self) -> None:
        self._client.close()
