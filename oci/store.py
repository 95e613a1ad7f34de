"""The image store: an OCI image layout whose index.json lists the tagged manifests."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from pybuild.atomicfile import write_atomic
from typing import Iterator

from pybuild.cache.content import BlobInfo, ContentStore

from .image import (
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    Image,
    InvalidImage,
    load_image,
    load_manifest,
)
from .reference import InvalidReference, Reference, parse_reference

__all__ = [
    "ANNOTATION_REF_NAME",
    "ANNOTATION_CREATED",
    "ANNOTATION_CONTAINERD_NAME",
    "ImageStore",
    "ImageStoreError",
    "ImageNotFound",
    "write_json_atomic",
    "rfc3339",
]

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}

# An id prefix needs a few characters: `rmi b` must not delete whatever image id starts with "b".
_HEX_PREFIX_RE = re.compile(r"(?:sha256:)?([0-9a-f]{4,64})")


class ImageStoreError(Exception):
    """The store cannot do what was asked (e.g. tag a manifest whose blobs are missing)."""


class ImageNotFound(KeyError):
    """No image matches the reference."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


def rfc3339(when: datetime | float | int | None = None) -> str:
    """UTC RFC 3339 timestamp (``2024-01-02T03:04:05Z``); ``when`` defaults to now."""
    if when is None:
        when = datetime.now(timezone.utc)
    elif not isinstance(when, datetime):
        when = datetime.fromtimestamp(when, timezone.utc)
    when = when.astimezone(timezone.utc)
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if when.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return when.strftime(fmt)


def write_json_atomic(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON to ``path`` via temp file + fsync + rename + dir fsync."""
    data = json.dumps(obj, indent=2, sort_keys=True).encode("utf-8") + b"\n"
    write_atomic(path, data)


class ImageStore:
    """``root`` is an OCI image layout; blobs live in ``content`` (rooted at the same dir)."""

    def __init__(self, root: Path, content: ContentStore):
        self.root = Path(root)
        self.content = content
        self.index_path = self.root / "index.json"
        self.lock_path = self.root / "locks" / "index.lock"
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists() or not self.index_path.exists():
            with self._locked():
                if not layout.exists():
                    write_json_atomic(layout, OCI_LAYOUT)
                if not self.index_path.exists():
                    write_json_atomic(self.index_path, self._empty_index())

    # -- index.json ------------------------------------------------------------------

    @staticmethod
    def _empty_index() -> dict:
        return {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _read_index(self) -> dict:
        try:
            with open(self.index_path, "rb") as f:
                index = json.load(f)
        except FileNotFoundError:
            return self._empty_index()
        except json.JSONDecodeError as e:
            raise ImageStoreError(f"{self.index_path} is corrupt: {e}") from e
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise ImageStoreError(f"{self.index_path} is not an OCI image index")
        index.setdefault("manifests", [])
        return index

    @staticmethod
    def _ref_name(entry: dict) -> str | None:
        return (entry.get("annotations") or {}).get(ANNOTATION_REF_NAME)

    # -- public API --------------------------------------------------------------------

    def tag(self, ref: str | Reference, manifest: BlobInfo, *, created: str | None = None) -> None:
        """Point ``ref`` (``name:tag``) at ``manifest``, replacing any previous entry for it; the
        image the name leaves is kept nameless (docker's dangling ``<none>`` image) unless
        another entry still records it.

        Refuses (``ImageStoreError``) if the manifest, its config or any layer blob is missing.
        """
        ref = parse_reference(ref)
        if ref.tag is None:
            raise InvalidReference(str(ref), "cannot tag with a digest reference; give name:tag")
        self._put_entry(ref.tagged, manifest, created)

    def keep_untagged(self, manifest: BlobInfo, *, created: str | None = None) -> None:
        """Record ``manifest`` with no name (docker's dangling ``<none>`` image: what a build
        without ``-t`` makes), so its id and digest resolve and GC keeps it until ``rmi``.  A
        manifest already in the index, named or not, is left as it is.  Same checks and
        atomicity as :meth:`tag`."""
        if any(e.get("digest") == manifest.digest for e in self._read_index()["manifests"]):
            return
        self._put_entry(None, manifest, created)

    def untagged(self) -> list[str]:
        """Manifest digests recorded without a name, oldest first."""
        return [e["digest"] for e in self._read_index()["manifests"] if not self._ref_name(e) and e.get("digest")]

    def _put_entry(self, ref_name: str | None, manifest: BlobInfo, created: str | None) -> None:
        """Write the index.json entry named ``ref_name`` for ``manifest`` (see :meth:`tag`); with
        ``ref_name`` None a nameless entry (see :meth:`keep_untagged`)."""
        what = ref_name or f"untagged {manifest.digest}"
        if not self.content.exists(manifest.digest):
            raise ImageStoreError(f"cannot tag {what}: manifest blob {manifest.digest} is missing")
        try:
            m = load_manifest(self.content, manifest.digest)
            config_digest = m["config"]["digest"]
            for d in [config_digest] + [layer["digest"] for layer in m.get("layers", [])]:
                if not self.content.exists(d):
                    raise ImageStoreError(f"cannot tag {what}: blob {d} of {manifest.digest} is missing")
            config = json.loads(self.content.read_bytes(config_digest))
        except (InvalidImage, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ImageStoreError(f"cannot tag {what}: {e}") from e
        entry: dict = {
            "mediaType": m.get("mediaType", MEDIA_TYPE_MANIFEST),
            "digest": manifest.digest,
            "size": self.content.size(manifest.digest),
            "annotations": {ANNOTATION_CREATED: created or rfc3339()},
        }
        if ref_name is not None:
            entry["annotations"][ANNOTATION_REF_NAME] = ref_name
        if isinstance(config, dict) and config.get("architecture") and config.get("os"):
            entry["platform"] = {"architecture": config["architecture"], "os": config["os"]}
            if config.get("variant"):
                entry["platform"]["variant"] = config["variant"]
        with self._locked():
            index = self._read_index()
            if ref_name is None:
                if any(e.get("digest") == manifest.digest for e in index["manifests"]):
                    return  # recorded meanwhile (named or not): nothing to add
                manifests = index["manifests"]
            else:  # the name moves here; a nameless entry of this manifest is not needed any more
                manifests = [e for e in index["manifests"] if self._ref_name(e) != ref_name
                             and (self._ref_name(e) or e.get("digest") != manifest.digest)]
                # the image the name leaves stays, nameless, when nothing else names it: docker's
                # dangling <none> image (a rebuild's old image), which `image prune` removes
                for old in index["manifests"]:
                    if self._ref_name(old) == ref_name and old.get("digest") != manifest.digest and not any(
                            e.get("digest") == old.get("digest") for e in manifests):
                        dangling = dict(old, annotations={k: v for k, v in (old.get("annotations") or {}).items()
                                                          if k not in (ANNOTATION_REF_NAME, ANNOTATION_CONTAINERD_NAME)})
                        manifests.append(dangling)
            manifests.append(entry)
            index["manifests"] = manifests
            write_json_atomic(self.index_path, index)

    def pin(self, ref: str | Reference, manifest: BlobInfo) -> None:
        """Record ``name@digest`` (a pull by digest, which has no tag): an index.json entry whose
        ref.name annotation is ``name@digest``, pointing at ``manifest`` (the platform manifest
        the digest resolved to), so later lookups of that reference work offline and GC keeps it.
        Same checks and atomicity as :meth:`tag`."""
        ref = parse_reference(ref)
        if ref.digest is None:
            raise InvalidReference(str(ref), "pin needs a name@digest reference")
        self._put_entry(f"{ref.name}@{ref.digest}", manifest, None)

    def untag(self, ref: str | Reference) -> str:
        """Remove the entry for ``ref``; return the manifest digest it pointed at."""
        ref = parse_reference(ref)
        with self._locked():
            index = self._read_index()
            keep, removed = [], []
            for e in index["manifests"]:
                (removed if self._ref_name(e) == ref.tagged else keep).append(e)
            if not removed:
                raise ImageNotFound(f'image "{ref.tagged}" not found in {self.root}')
            index["manifests"] = keep
            write_json_atomic(self.index_path, index)
        return removed[-1]["digest"]

    def list(self) -> list[tuple[Reference, str]]:
        """Tagged images, sorted by reference string."""
        out = []
        for e in self._read_index()["manifests"]:
            name = self._ref_name(e)
            if not name:
                continue
            try:
                out.append((parse_reference(name), e["digest"]))
            except InvalidReference:
                continue  # an entry written by another tool with a bare tag as ref.name
        out.sort(key=lambda item: str(item[0]))
        return out

    def resolve(self, ref: str | Reference) -> str:
        """Manifest digest for ``name:tag``, ``name@digest``, a manifest digest, or a unique
        prefix of a manifest digest or image id (config digest)."""
        text = str(ref)
        entries = self._read_index()["manifests"]
        parsed: Reference | None
        try:
            parsed = parse_reference(ref)
        except InvalidReference:
            parsed = None
        if parsed is not None and parsed.digest is not None:
            for e in reversed(entries):  # pinned by a pull by digest (the digest may be an index's)
                if self._ref_name(e) == f"{parsed.name}@{parsed.digest}":
                    return e["digest"]
            if any(e.get("digest") == parsed.digest for e in entries):
                return parsed.digest
            if parsed.digest.startswith("sha256:") and self.content.exists(parsed.digest):
                return parsed.digest
            raise ImageNotFound(f'image "{text}" not found in {self.root}')
        if parsed is not None:
            for e in reversed(entries):
                if self._ref_name(e) == parsed.tagged:
                    return e["digest"]
        m = _HEX_PREFIX_RE.fullmatch(text)
        if m:
            digest = self._resolve_prefix(m.group(1), entries, text)
            if digest:
                return digest
        raise ImageNotFound(f'image "{parsed.tagged if parsed else text}" not found in {self.root}')

    def _resolve_prefix(self, prefix: str, entries: list[dict], text: str) -> str | None:
        full = "sha256:" + prefix
        if len(prefix) == 64 and self.content.exists(full) and any(e.get("digest") == full for e in entries):
            return full
        matches: set[str] = set()
        for e in entries:
            digest = e.get("digest", "")
            if digest.startswith(full):
                matches.add(digest)
                continue
            with contextlib.suppress(Exception):
                if load_manifest(self.content, digest)["config"]["digest"].startswith(full):
                    matches.add(digest)
        if len(matches) > 1:
            raise ImageNotFound(f'"{text}" is ambiguous in {self.root}: matches {", ".join(sorted(matches))}')
        if matches:
            return matches.pop()
        if len(prefix) == 64 and self.content.exists(full):
            with contextlib.suppress(InvalidImage):
                load_manifest(self.content, full)
                return full  # an untagged manifest in the content store
        return None

    def image(self, ref: str | Reference) -> Image:
        return load_image(self.content, self.resolve(ref))

    # -- added for rmi / fsck / gc -----------------------------------------------------------

    def entries(self) -> list[dict]:
        """Every descriptor in index.json (copies), tagged or not, in file order."""
        return json.loads(json.dumps(self._read_index()["manifests"]))

    def ref_names(self, manifest_digest: str) -> list[str]:
        """The ``name:tag`` names in index.json that point at ``manifest_digest``, sorted."""
        return sorted({n for e in self._read_index()["manifests"]
                       if e.get("digest") == manifest_digest and (n := self._ref_name(e))})

    def remove_entries(self, predicate) -> list[dict]:
        """Atomically (under the index lock) drop every index.json entry for which
        ``predicate(entry)`` is true; return the dropped entries."""
        with self._locked():
            index = self._read_index()
            keep, removed = [], []
            for e in index["manifests"]:
                (removed if predicate(e) else keep).append(e)
            if removed:
                index["manifests"] = keep
                write_json_atomic(self.index_path, index)
        return removed
