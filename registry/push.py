"""Push a local image to a registry.

For each blob (config and layers, concurrently): ``HEAD`` first and skip what the registry
has; else, when the blob is known to be in another repository of that registry (see
:mod:`.sources`), ask for a cross-repository mount (``POST .../uploads/?mount=D&from=R``);
else upload it, monolithically (``POST`` then one ``PUT ?digest=``) or, above
``chunk_threshold``, in chunks (``PATCH`` with ``Content-Range``, resumed from the registry's
``Range`` after a dropped connection, then ``PUT ?digest=``).  Then the manifest's exact stored
bytes are ``PUT`` under every tag, so the pushed digest equals the local one.  The local store
is only read (plus the blob-sources hint file); a failed push changes nothing locally.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlencode, urljoin

from pybuild.cache.content import ContentStore
from pybuild.cache.gc import build_lease
from pybuild.oci.image import MEDIA_TYPE_MANIFEST, InvalidImage, load_manifest
from pybuild.oci.reference import RemoteReference, normalize_reference
from pybuild.oci.store import ImageNotFound

from .client import RegistryClient, RegistryError, api_host
from .config import RegistryConfig, load_config
from .sources import BlobSources

__all__ = [
    "CHUNK_SIZE",
    "CHUNK_THRESHOLD",
    "PushResult",
    "PushStats",
    "push",
    "push_manifest",
]

CHUNK_THRESHOLD = 256 << 20   # blobs above this go up in PATCH chunks
CHUNK_SIZE = 64 << 20
Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class PushStats:
    """What happened to the blobs: ``uploaded`` counts blobs whose bytes were sent."""

    uploaded: int = 0
    skipped: int = 0      # the registry already had them (HEAD 200)
    mounted: int = 0      # cross-repository mounts
    bytes_uploaded: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, kind: str, size: int = 0) -> None:
        with self._lock:
            setattr(self, kind, getattr(self, kind) + 1)
            if kind == "uploaded":
                self.bytes_uploaded += size


@dataclass(frozen=True)
class PushResult:
    reference: RemoteReference
    digest: str
    size: int
    stats: PushStats


class _Pusher:
    def __init__(self, client: RegistryClient, ref: RemoteReference, content: ContentStore, sources: BlobSources,
                 progress: Progress, chunk_threshold: int, chunk_size: int):
        self.client = client
        self.ref = ref
        self.repo = ref.repository
        self.scopes = (f"repository:{self.repo}:pull,push",)
        self.content = content
        self.sources = sources
        self.progress = progress
        self.chunk_threshold = chunk_threshold
        self.chunk_size = chunk_size
        self.stats = PushStats()

    def blob(self, desc: dict) -> None:
        digest, size = desc["digest"], int(desc["size"])
        short = digest.split(":", 1)[1][:12]
        if not self.content.exists(digest):
            raise RegistryError(f"cannot push {self.ref}: blob {digest} is not in the local store "
                                "(run `pybuild fsck`)")
        head = self.client.request("HEAD", f"/v2/{self.repo}/blobs/{digest}", scopes=self.scopes, ok=(200, 404),
                                   what=f"HEAD blob {digest}")
        head.close()
        if head.status_code == 200:
            self.stats.add("skipped")
            self.progress(f"{short}: already exists")
            return
        location = None
        for other in self.sources.repositories(self.ref.registry, digest)[:3]:
            if other == self.repo:
                continue
            resp = self.client.request(
                "POST", f"/v2/{self.repo}/blobs/uploads/?" + urlencode({"mount": digest, "from": other}),
                scopes=(*self.scopes, f"repository:{other}:pull"), ok=(201, 202), what=f"mount {digest}")
            resp.close()
            if resp.status_code == 201:
                self.stats.add("mounted")
                self.progress(f"{short}: mounted from {other}")
                return
            location = self._location(resp)  # the registry started a normal upload instead
            break
        if location is None:
            location = self._new_upload(digest)
        self.progress(f"{short}: uploading {size} bytes")
        started = time.monotonic()
        if size > self.chunk_threshold:
            location = self._chunks(location, digest, size)
            body = None
        else:
            def body():
                return self.content.open(digest)
        url = location + ("&" if "?" in location else "?") + urlencode({"digest": digest})
        resp = self.client.request("PUT", url, scopes=self.scopes, ok=(201,), body=body,
                                   headers={"Content-Type": "application/octet-stream",
                                            **({"Content-Length": "0"} if body is None else {})},
                                   what=f"upload of {digest}")
        resp.close()
        self.stats.add("uploaded", size)
        self.progress(f"{short}: pushed in {time.monotonic() - started:.1f}s")

    def manifest(self, data: bytes, media_type: str, digest: str) -> None:
        """PUT the manifest's exact bytes under the tag (or digest); every blob must be there."""
        if self.ref.digest and self.ref.digest != digest:
            raise RegistryError(f"cannot push to {self.ref}: the image's manifest digest is {digest}")
        target = self.ref.tag or self.ref.digest or "latest"
        resp = self.client.request("PUT", f"/v2/{self.repo}/manifests/{target}", scopes=self.scopes, ok=(201,),
                                   body=data, headers={"Content-Type": media_type}, what=f"manifest {self.ref}")
        resp.close()
        remote_digest = resp.headers.get("Docker-Content-Digest")
        if remote_digest and remote_digest != digest:
            raise RegistryError(f"{self.client.host}: the registry stored the manifest as {remote_digest}, "
                                f"not {digest}")

    def _new_upload(self, digest: str) -> str:
        """Start an upload session; its Location."""
        resp = self.client.request("POST", f"/v2/{self.repo}/blobs/uploads/", scopes=self.scopes, ok=(202,),
                                   what=f"upload of {digest}")
        resp.close()
        return self._location(resp)

    def _location(self, resp) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{self.client.host}: upload started without a Location header")
        return urljoin(self.client.base_url + "/", loc)

    def _chunks(self, location: str, digest: str, size: int) -> str:
        """PATCH the blob in ``chunk_size`` pieces. After a failure, ask the registry how much it
        has (``GET`` the upload: ``Range: 0-N``) and continue from there; a registry that dropped
        the session (distribution cancels an upload resumed at a stale offset) gets a new one,
        from byte 0. Returns the last Location."""
        offset = 0
        failures = 0
        with self.content.open(digest) as f:
            while offset < size:
                f.seek(offset)
                chunk = f.read(min(self.chunk_size, size - offset))
                end = offset + len(chunk) - 1
                try:
                    resp = self.client.request(
                        "PATCH", location, scopes=self.scopes, ok=(202,), body=chunk,
                        headers={"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{end}",
                                 "Content-Length": str(len(chunk))}, what=f"upload of {digest}")
                except RegistryError:
                    failures += 1
                    if failures > 3:
                        raise
                    try:
                        status = self.client.request("GET", location, scopes=self.scopes, ok=(204,),
                                                     what=f"upload status of {digest}")
                    except RegistryError:
                        location, offset = self._new_upload(digest), 0
                        continue
                    status.close()
                    # "Range: 0-N" = bytes 0..N received ("0--1" or none: nothing yet)
                    received = re.fullmatch(r"0-(-?\d+)", status.headers.get("Range", "").strip())
                    offset = int(received.group(1)) + 1 if received else 0
                    location = self._location(status) if status.headers.get("Location") else location
                    continue
                resp.close()
                location = self._location(resp)
                offset = end + 1
        return location


def push(store, source: str, destination: str | None = None, *, config: RegistryConfig | None = None,
         progress: Progress = _stderr, workers: int = 6, chunk_threshold: int = CHUNK_THRESHOLD,
         chunk_size: int = CHUNK_SIZE) -> PushResult:
    """Push the local image ``source`` to ``destination`` (default: ``source``'s own name).

    Idempotent: blobs the registry has are skipped, so pushing an unchanged image uploads
    nothing. Raises :class:`RegistryError` with a one-line message.
    """
    try:
        ref = normalize_reference(destination or source)
    except ValueError as exc:
        raise RegistryError(str(exc)) from None
    try:
        digest = store.images.resolve(source)
        load_manifest(store.content, digest)  # a single-platform image manifest, readable
    except ImageNotFound:
        raise RegistryError(f"no image {source!r} in the local store (see `pybuild images`)") from None
    except InvalidImage as exc:
        raise RegistryError(f"cannot push {source}: {exc}") from None
    data = store.content.read_bytes(digest)
    return push_manifest(store, data, ref, config=config, progress=progress, workers=workers,
                         chunk_threshold=chunk_threshold, chunk_size=chunk_size)


def push_manifest(store, data: bytes, ref: RemoteReference, *, config: RegistryConfig | None = None,
                  progress: Progress = _stderr, workers: int = 6, chunk_threshold: int = CHUNK_THRESHOLD,
                  chunk_size: int = CHUNK_SIZE) -> PushResult:
    """Push the manifest ``data`` (an image or artifact manifest whose config and layer blobs are
    all in ``store``'s content store) to ``ref``: blobs first (HEAD, mount, upload), then the
    manifest's exact bytes, so its digest is the sha256 of ``data``."""
    manifest = json.loads(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    media_type = manifest.get("mediaType") or MEDIA_TYPE_MANIFEST
    blobs = {d["digest"]: d for d in [manifest["config"], *manifest.get("layers", [])]}
    config = config if config is not None else load_config()
    sources = BlobSources(store.root)
    client = RegistryClient(api_host(ref.registry), auth_host=ref.registry, config=config)
    pusher = _Pusher(client, ref, store.content, sources, progress, chunk_threshold, chunk_size)
    try:
        with build_lease(store.root):  # an untagged image (build --output type=registry) must outlive a prune
            progress(f"pushing {ref} to {client.host}")
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(blobs))), thread_name_prefix="push") as pool:
                futures = [pool.submit(pusher.blob, d) for d in blobs.values()]
                errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                raise errors[0]
            pusher.manifest(data, media_type, digest)
    finally:
        client.close()
    sources.record(ref.registry, ref.repository, list(blobs))
    return PushResult(ref, digest, len(data), pusher.stats)
