"""Pull an image from a registry into the local store.

The manifest is fetched by tag or digest (an index / manifest list is resolved to one
platform), then the config and layer blobs are fetched concurrently, each streamed into the
content store's writer, which verifies digest and size before the blob becomes visible: a
broken or interrupted download never leaves a partial blob.  A dropped connection resumes
where it stopped with an HTTP ``Range`` request.  The image is tagged locally (under its
familiar name, e.g. ``busybox:latest``) only after every blob is in, so a failed pull leaves the
local store's tags as they were.  The stored manifest is the registry's exact bytes, so the
local manifest digest equals the remote one.
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
from dataclasses import dataclass

import requests
import urllib3
from pybuild.cache.content import BlobInfo, ContentStore, DigestMismatch
from pybuild.cache.gc import build_lease
from pybuild.oci.image import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    InvalidImage,
    load_image,
)
from pybuild.oci.reference import RemoteReference, normalize_reference

from pybuild.commands._format import human_size

from .client import RegistryClient, RegistryError, api_host
from .config import RegistryConfig, load_config
from .sources import BlobSources

__all__ = ["DEFAULT_PLATFORM", "MANIFEST_ACCEPT", "PullResult", "parse_platform", "pull", "select_platform"]

DEFAULT_PLATFORM = "linux/amd64"
MANIFEST_ACCEPT = ", ".join([MEDIA_TYPE_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX,
                             MEDIA_TYPE_DOCKER_MANIFEST_LIST])
MAX_MANIFEST_BYTES = 4 << 20
RESUME_ATTEMPTS = 5
_CHUNK = 1 << 20
Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PullResult:
    reference: RemoteReference
    manifest_digest: str        # the platform manifest's digest, as the registry computes it
    local_name: str             # what the local store calls it (name:tag, or name@digest)
    blobs_fetched: int
    bytes_fetched: int


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """``os/arch[/variant]`` -> (os, arch, variant). Raises ValueError naming the text."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"invalid platform {text!r} (want os/arch[/variant], e.g. linux/amd64)")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def select_platform(index: dict, platform: str) -> dict:
    """The index entry for ``platform`` (pure). arm64 without a variant matches v8, as
    containerd's default matcher does; attestation manifests (unknown/unknown) never match."""
    want_os, want_arch, want_variant = parse_platform(platform)
    candidates = []
    for entry in index.get("manifests") or []:
        p = entry.get("platform") or {}
        if p.get("os") != want_os or p.get("architecture") != want_arch:
            continue
        variant = p.get("variant")
        if want_variant and variant != want_variant and not (want_arch == "arm64" and want_variant == "v8"
                                                             and variant is None):
            continue
        candidates.append(entry)
    if not candidates:
        offered = sorted({"/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
                          for e in index.get("manifests") or [] if (p := e.get("platform") or {})})
        raise RegistryError(f"no image for {platform} in the index (it has: {', '.join(offered) or 'nothing'})")
    # Prefer the exact variant (or no variant when none was asked for).
    candidates.sort(key=lambda e: (e.get("platform") or {}).get("variant") != want_variant)
    return candidates[0]


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Puller:
    def __init__(self, client: RegistryClient, ref: RemoteReference, content: ContentStore | None,
                 progress: Progress):
        """``content`` receives blobs (``blob``); None when only manifests are read."""
        self.client = client
        self.ref = ref
        self.repo = ref.repository
        self.scopes = (f"repository:{self.repo}:pull",)
        self.content = content
        self.progress = progress
        self.fetched = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of the manifest at ``reference`` (tag or digest)."""
        resp = self.client.request("GET", f"/v2/{self.repo}/manifests/{reference}", scopes=self.scopes,
                                   headers={"Accept": MANIFEST_ACCEPT}, what=f"manifest {self.repo}:{reference}"
                                   if ":" not in reference else f"manifest {self.repo}@{reference}")
        data = resp.content
        if len(data) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{self.client.host}: manifest {reference} is larger than 4 MiB")
        digest = _digest_of(data)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"{self.client.host}: manifest {reference} has content hashing to {digest}")
        header = resp.headers.get("Docker-Content-Digest")
        if header and header.startswith("sha256:") and header != digest:
            raise RegistryError(f"{self.client.host}: manifest {reference}: Docker-Content-Digest {header} "
                                f"does not match its content ({digest})")
        try:
            body = json.loads(data)
        except ValueError:
            raise RegistryError(f"{self.client.host}: manifest {reference} is not JSON") from None
        media_type = body.get("mediaType") or resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not media_type and "manifests" in body:
            media_type = MEDIA_TYPE_INDEX
        if not media_type:
            media_type = MEDIA_TYPE_MANIFEST
        return data, media_type, digest

    def blob(self, desc: dict) -> None:
        """Fetch one blob into the content store (verified), resuming after dropped connections."""
        digest, size = desc["digest"], int(desc["size"])
        if self.content.exists(digest):
            return
        short = digest.split(":", 1)[1][:12]
        self.progress(f"{short}: downloading {human_size(size)}")
        started = time.monotonic()
        writer = self.content.writer()
        try:
            failures = 0
            while True:
                # identity: the bytes must be the blob itself, never a transfer-compressed form of it
                headers = {"Accept-Encoding": "identity"}
                if writer.size:
                    headers["Range"] = f"bytes={writer.size}-"
                try:
                    resp = self.client.request("GET", f"/v2/{self.repo}/blobs/{digest}", scopes=self.scopes,
                                               ok=(200, 206), headers=headers, stream=True,
                                               what=f"blob {digest}")
                except RegistryError:
                    if writer.size and failures < RESUME_ATTEMPTS:
                        failures += 1
                        time.sleep(0.25 * 2 ** failures)
                        continue
                    raise
                with resp:
                    resumed_at = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                    if writer.size and (resp.status_code == 200 or not resumed_at
                                        or int(resumed_at.group(1)) != writer.size):
                        writer.abort()  # Range ignored, or answered from elsewhere: start over
                        writer = self.content.writer()
                        if resp.status_code == 206:
                            continue
                    before = writer.size
                    try:
                        for chunk in resp.raw.stream(_CHUNK, decode_content=False):
                            writer.write(chunk)
                            if writer.size > size:
                                raise RegistryError(f"{self.client.host}: blob {digest} is larger than the "
                                                    f"{size} bytes its descriptor says")
                    except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
                        if writer.size == before:
                            failures += 1
                        if failures > RESUME_ATTEMPTS:
                            raise RegistryError(f"{self.client.host}: download of blob {digest} kept failing "
                                                f"at byte {writer.size} of {size}: {exc}") from None
                        self.progress(f"{short}: connection dropped at {human_size(writer.size)}, resuming")
                        continue
                if writer.size >= size:
                    break
                failures += 1  # ended early without an error: ask for the rest
                if failures > RESUME_ATTEMPTS:
                    raise RegistryError(f"{self.client.host}: blob {digest} ended at byte {writer.size} of {size}")
            try:
                writer.commit(expected_digest=digest, expected_size=size)
            except DigestMismatch as exc:
                raise RegistryError(f"{self.client.host}: blob {digest} does not match its digest: {exc}") from None
        finally:
            writer.abort()  # no-op after commit; otherwise removes the ingest file
        elapsed = time.monotonic() - started
        with self._lock:
            self.fetched += 1
            self.bytes += size
        self.progress(f"{short}: done {human_size(size)} in {elapsed:.1f}s")


def _endpoints(registry: str, config: RegistryConfig) -> list[str]:
    return [*config.mirrors_for(registry), api_host(registry)]


def pull(store, reference: str | RemoteReference, *, platform: str = DEFAULT_PLATFORM,
         config: RegistryConfig | None = None, progress: Progress = _stderr, workers: int = 6,
         client_factory: Callable[..., RegistryClient] = RegistryClient) -> PullResult:
    """Pull ``reference`` into ``store`` (a :class:`pybuild.store.Store`) and tag it locally.

    Mirrors of the registry are tried first, in order; a mirror that fails or lacks the image
    is skipped (its error is reported as a progress line).  Idempotent: blobs already in the
    content store are not fetched again.  Raises :class:`RegistryError` (or ValueError for a
    bad ``platform``); on failure no tag changes and no partial blob remains.
    """
    parse_platform(platform)
    ref = reference if isinstance(reference, RemoteReference) else normalize_reference(reference)
    config = config if config is not None else load_config()
    endpoints = _endpoints(ref.registry, config)
    last_error: RegistryError | None = None
    for i, endpoint in enumerate(endpoints):
        is_mirror = i < len(endpoints) - 1
        client = client_factory(endpoint, auth_host=ref.registry if not is_mirror else None, config=config)
        try:
            return _pull_from(store, client, ref, platform, progress, workers)
        except RegistryError as exc:
            if not is_mirror:
                raise
            progress(f"mirror {endpoint}: {exc}; trying the next source")
            last_error = exc
        finally:
            client.close()
    raise last_error or RegistryError(f"no endpoint for {ref.registry}")


def _pull_from(store, client: RegistryClient, ref: RemoteReference, platform: str, progress: Progress,
               workers: int) -> PullResult:
    puller = _Puller(client, ref, store.content, progress)
    progress(f"pulling {ref} from {client.host}")
    with build_lease(store.root):  # blobs are written before the tag: keep GC away until then
        data, media_type, digest = puller.manifest(ref.digest or ref.tag or "latest")
        body = json.loads(data)
        if media_type in INDEX_MEDIA_TYPES or "manifests" in body:
            # The index itself is not stored: local lookups by its digest go through the pin
            # (name@index-digest -> platform manifest) that a pull by digest records.
            entry = select_platform(body, platform)
            progress(f"resolved {platform} in index {digest[:19]}… to {entry['digest']}")
            data, media_type, digest = puller.manifest(entry["digest"])
            body = json.loads(data)
        if media_type not in MANIFEST_MEDIA_TYPES or body.get("schemaVersion") != 2:
            raise RegistryError(f"{client.host}: {ref} has an unsupported manifest type {media_type!r} "
                                "(want OCI or docker schema2)")
        try:
            blobs = [body["config"], *body.get("layers", [])]
            for d in blobs:
                if not (isinstance(d, dict) and isinstance(d.get("digest"), str)
                        and d["digest"].startswith("sha256:") and isinstance(d.get("size"), int)):
                    raise KeyError(d)
        except (KeyError, TypeError):
            raise RegistryError(f"{client.host}: manifest {digest} has malformed descriptors") from None
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(blobs))), thread_name_prefix="pull") as pool:
            futures = [pool.submit(puller.blob, d) for d in blobs]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        store.content.put_bytes(data, expected_digest=digest)
        try:
            load_image(store.content, digest)  # config parses; layer count matches diff_ids
        except InvalidImage as exc:
            raise RegistryError(f"{client.host}: {ref}: {exc}") from None
        local = ref.local()
        info = BlobInfo(digest, len(data))
        if local.tag is not None:
            store.images.tag(local.tagged, info)
            local_name = local.tagged
        else:
            store.images.pin(local, info)
            local_name = f"{local.name}@{local.digest}"
    BlobSources(store.root).record(ref.registry, ref.repository, [d["digest"] for d in blobs])
    progress(f"digest: {digest}")
    return PullResult(ref, digest, local_name, puller.fetched, puller.bytes)
