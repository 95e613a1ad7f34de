"""Build cache export and import: `--cache-to type=local,dest=DIR` / `--cache-from type=local,src=DIR`.

The exported cache is an OCI image layout directory holding one OCI artifact, so standard tools
can copy it (`skopeo copy oci:DIR:latest docker://...`, `oras`) and the registry code can later
push the very same manifest to a registry::

    DIR/oci-layout                 {"imageLayoutVersion": "1.0.0"}
    DIR/index.json                 an OCI image index with one manifest descriptor, annotated
                                   org.opencontainers.image.ref.name = "latest"
    DIR/blobs/sha256/<hex>         the manifest, its config and the layer blobs

Media types:

* manifest: ``application/vnd.oci.image.manifest.v1+json`` (OCI image-spec 1.1 artifact),
  ``artifactType`` = ``application/vnd.pybuild.cache.v1`` (:data:`ARTIFACT_TYPE`);
* config: ``application/vnd.pybuild.cache.config.v1+json`` (:data:`MEDIA_TYPE_CACHE_CONFIG`),
  a JSON object ``{"schemaVersion": 1, "records": [...]}`` where each record is::

      {"key": "<step cache key>",
       "layer": {"mediaType": ..., "digest": "sha256:...", "size": N} or null (step without a layer),
       "diff_id": "sha256:..." or null,
       "created": "RFC 3339", "created_by": "<step label>", "duration_s": 1.25}

  records are sorted by key, the JSON is canonical (sorted keys, no spaces), so the same
  records always give the same config and manifest digests;
* layers: the layer blobs exactly as in the content store (``application/vnd.oci.image.layer.
  v1.tar+gzip``, ``+zstd`` or plain ``tar``), each once, sorted by digest; every record's
  ``layer`` descriptor is one of them.

Export contract (`export_cache`): DIR is created or updated in place under an flock on
``DIR/.pybuild-cache.lock``; blobs are written first (temp file, fsync, rename: content
addressed, so rewriting is idempotent), then ``index.json`` is replaced atomically - that swap
is the commit point: a reader sees the old cache or the new one, never a mix. Afterwards blobs
the new manifest does not use are deleted. A DIR that exists but is not a pybuild cache layout
(another image layout, any other non-empty directory) is refused, never overwritten.

Import contract (`CacheImport.load`): the manifest and config are read with their digests
verified; records are only consulted when the local index misses (`CacheSources.get`); a hit
copies the layer blob into the content store - verifying its digest and size - only when the
store does not have it, then records the step in the local index so the next build hits locally.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pybuild.atomicfile import fsync_dir, write_atomic
from pybuild.errors import PybuildError

from .content import BlobNotFound, ContentStore, DigestMismatch
from .index import CacheIndex, CacheRecord
from .layers import LayerBlob

__all__ = [
    "ARTIFACT_TYPE", "MEDIA_TYPE_CACHE_CONFIG", "MEDIA_TYPE_MANIFEST", "MEDIA_TYPE_INDEX", "REF_NAME",
    "CacheTransferError", "CacheExportSpec", "CacheImportSpec", "parse_cache_to", "parse_cache_from",
    "cache_manifest", "export_cache", "CacheImport", "CacheSources",
]

ARTIFACT_TYPE = "application/vnd.pybuild.cache.v1"
MEDIA_TYPE_CACHE_CONFIG = "application/vnd.pybuild.cache.config.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
REF_NAME = "latest"
LOCK_NAME = ".pybuild-cache.lock"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class CacheTransferError(PybuildError):
    """A cache directory cannot be written or read; the message names it and says why."""


# -- flags ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheExportSpec:
    dest: Path
    mode: str = "min"  # "min": the final image's steps; "max": every step of every built stage


@dataclass(frozen=True)
class CacheImportSpec:
    src: Path


def _pairs(flag: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key or not value:
            raise ValueError(f"{flag} {text}: expected comma-separated key=value pairs, got {part!r}")
        if key in out:
            raise ValueError(f"{flag} {text}: {key}= given twice")
        out[key] = value.strip()
    if out.get("type") != "local":
        raise ValueError(f"{flag} {text}: only type=local is supported (got type={out.get('type', '')!r})")
    return out


def parse_cache_to(text: str) -> CacheExportSpec:
    """``type=local,dest=DIR[,mode=min|max]`` -> spec; ValueError with a one-line message."""
    spec = _pairs("--cache-to", text)
    unknown = set(spec) - {"type", "dest", "mode"}
    if unknown:
        raise ValueError(f"--cache-to {text}: unknown key {sorted(unknown)[0]!r} (type, dest, mode)")
    if "dest" not in spec:
        raise ValueError(f"--cache-to {text}: type=local needs dest=DIR")
    mode = spec.get("mode", "min")
    if mode not in ("min", "max"):
        raise ValueError(f"--cache-to {text}: mode must be min or max (got {mode!r})")
    return CacheExportSpec(Path(spec["dest"]), mode)


def parse_cache_from(text: str) -> CacheImportSpec:
    """``type=local,src=DIR`` -> spec; ValueError with a one-line message."""
    spec = _pairs("--cache-from", text)
    unknown = set(spec) - {"type", "src"}
    if unknown:
        raise ValueError(f"--cache-from {text}: unknown key {sorted(unknown)[0]!r} (type, src)")
    if "src" not in spec:
        raise ValueError(f"--cache-from {text}: type=local needs src=DIR")
    return CacheImportSpec(Path(spec["src"]))


# -- the artifact -----------------------------------------------------------------------------------

def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _descriptor(layer: LayerBlob) -> dict:
    return {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}


def cache_manifest(records: Iterable[CacheRecord]) -> tuple[bytes, bytes]:
    """(config bytes, manifest bytes) describing ``records``. Pure and deterministic."""
    by_key = {r.key: r for r in records}
    entries, layers = [], {}
    for key in sorted(by_key):
        r = by_key[key]
        entries.append({"key": key, "layer": _descriptor(r.layer) if r.layer else None,
                        "diff_id": r.layer.diff_id if r.layer else None, "created": r.created,
                        "created_by": r.description, "duration_s": r.duration_s})
        if r.layer is not None:
            layers[r.layer.digest] = _descriptor(r.layer)
    config = _canonical({"schemaVersion": 1, "records": entries})
    manifest = _canonical({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": MEDIA_TYPE_CACHE_CONFIG, "digest": _sha256(config), "size": len(config)},
        "layers": [layers[d] for d in sorted(layers)],
    })
    return config, manifest


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- export -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportResult:
    manifest_digest: str
    records: int
    layers: int
    bytes_written: int  # layer/config/manifest bytes copied this time (blobs already there are skipped)


@contextlib.contextmanager
def _dir_lock(directory: Path):
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_cache_layout(dest: Path) -> None:
    """Refuse to touch a DIR that holds anything but a pybuild cache layout."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise CacheTransferError(f"--cache-to dest={dest}: exists and is not a directory")
    index_path = dest / "index.json"
    if not index_path.exists():
        extra = [p.name for p in dest.iterdir() if p.name not in ("oci-layout", "blobs", LOCK_NAME)]
        if extra:
            raise CacheTransferError(f"--cache-to dest={dest}: the directory is not empty and is not a "
                                     f"pybuild cache (found {extra[0]!r}); choose an empty or new directory")
        return
    try:
        index = json.loads(index_path.read_bytes())
        manifests = index["manifests"]
        ours = all(m.get("artifactType") == ARTIFACT_TYPE for m in manifests)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ours = False
    if not ours:
        raise CacheTransferError(f"--cache-to dest={dest}: holds an OCI layout that is not a pybuild cache; "
                                 "refusing to overwrite it")


def _write_blob(blobs: Path, digest: str, size: int, source: Callable[[], object]) -> int:
    """Put one blob into ``blobs`` (temp file, fsync, rename) unless a file of that size is there.
    ``source()`` returns a binary file to copy from. Returns the bytes written."""
    final = blobs / digest.split(":", 1)[1]
    try:
        if final.stat().st_size == size:
            return 0
    except FileNotFoundError:
        pass
    tmp = blobs / f".tmp-{os.getpid()}-{final.name[:16]}"
    h = hashlib.sha256()
    written = 0
    try:
        with source() as src, open(tmp, "wb") as out:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
                written += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if "sha256:" + h.hexdigest() != digest or written != size:
            raise CacheTransferError(f"blob {digest} changed while it was exported")
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return written


def export_cache(content: ContentStore, records: Iterable[CacheRecord], dest: Path) -> ExportResult:
    """Write ``records`` and their layer blobs to the cache layout ``dest`` (see the module
    docstring for the format and the atomicity contract). The caller holds a GC lease, so the
    blobs stay in the content store while they are copied."""
    dest = Path(dest)
    records = list(records)
    _check_cache_layout(dest)
    config, manifest = cache_manifest(records)
    manifest_digest = _sha256(manifest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        blobs = dest / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        with _dir_lock(dest):
            _check_cache_layout(dest)  # again, under the lock
            written = 0
            layers = {r.layer.digest: r.layer for r in records if r.layer is not None}
            for layer in layers.values():
                written += _write_blob(blobs, layer.digest, layer.size, lambda d=layer.digest: content.open(d))
            written += _write_blob(blobs, _sha256(config), len(config), lambda: io.BytesIO(config))
            written += _write_blob(blobs, manifest_digest, len(manifest), lambda: io.BytesIO(manifest))
            fsync_dir(blobs)
            if not (dest / "oci-layout").exists():
                write_atomic(dest / "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
            index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [{
                "mediaType": MEDIA_TYPE_MANIFEST, "artifactType": ARTIFACT_TYPE, "digest": manifest_digest,
                "size": len(manifest), "annotations": {REF_NAME_ANNOTATION: REF_NAME}}]}
            write_atomic(dest / "index.json", json.dumps(index, indent=2).encode() + b"\n")  # commit point
            keep = {h.split(":", 1)[1] for h in [*layers, _sha256(config), manifest_digest]}
            for p in blobs.iterdir():
                if p.name not in keep and (_HEX.match(p.name) or p.name.startswith(".tmp-")):
                    p.unlink(missing_ok=True)
    except BlobNotFound as exc:
        raise CacheTransferError(f"--cache-to dest={dest}: layer {exc.args[0]} is no longer in the store") from None
    except OSError as exc:
        raise CacheTransferError(f"--cache-to dest={dest}: {exc.strerror or exc}: "
                                 f"{exc.filename or dest}") from None
    return ExportResult(manifest_digest, len(records), len(layers), written)


# -- import -----------------------------------------------------------------------------------------

def _record_from(obj, layers: dict[str, dict], where: str) -> CacheRecord:
    try:
        key = obj["key"]
        layer = obj.get("layer")
        if layer is not None:
            if layer.get("digest") not in layers or layers[layer["digest"]] != layer:
                raise ValueError("its layer is not one of the manifest's layers")
            if not isinstance(obj.get("diff_id"), str) or not _DIGEST.match(obj["diff_id"]):
                raise ValueError("bad diff_id")
            blob = LayerBlob(digest=layer["digest"], diff_id=obj["diff_id"], size=int(layer["size"]),
                             media_type=layer["mediaType"])
        else:
            blob = None
        rec = CacheRecord(key=key, layer=blob, created=str(obj.get("created") or ""),
                          duration_s=float(obj.get("duration_s") or 0.0), description=str(obj.get("created_by") or ""))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CacheTransferError(f"{where}: malformed cache record {str(obj)[:80]}: {exc}") from None
    return rec


class CacheImport:
    """The records of one cache layout directory, read (and verified) once."""

    def __init__(self, src: Path, records: dict[str, CacheRecord]):
        self.src = Path(src)
        self.records = records

    @property
    def origin(self) -> str:
        return f"local:{self.src}"

    def _blob_path(self, digest: str) -> Path:
        return self.src / "blobs" / "sha256" / digest.split(":", 1)[1]

    def _read_verified(self, desc: dict, what: str) -> bytes:
        digest, size = desc.get("digest"), desc.get("size")
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise CacheTransferError(f"--cache-from src={self.src}: {what} has a bad digest {digest!r}")
        try:
            data = self._blob_path(digest).read_bytes()
        except OSError as exc:
            raise CacheTransferError(f"--cache-from src={self.src}: {what} {digest}: {exc.strerror}") from None
        if _sha256(data) != digest or (size is not None and size != len(data)):
            raise CacheTransferError(f"--cache-from src={self.src}: {what} {digest} is corrupt")
        return data

    @classmethod
    def load(cls, src: Path) -> "CacheImport":
        """Read the layout at ``src``; CacheTransferError says what is wrong with it."""
        src = Path(src)
        self = cls(src, {})
        where = f"--cache-from src={src}"
        if not src.is_dir():
            raise CacheTransferError(f"{where}: no such directory")
        try:
            index = json.loads((src / "index.json").read_bytes())
            manifests = index["manifests"]
            if not isinstance(manifests, list):
                raise TypeError("manifests is not a list")
        except FileNotFoundError:
            raise CacheTransferError(f"{where}: no index.json: not an OCI layout") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CacheTransferError(f"{where}: index.json is unreadable: {exc}") from None
        found = False
        for desc in manifests:
            if not isinstance(desc, dict) or desc.get("artifactType", ARTIFACT_TYPE) != ARTIFACT_TYPE:
                continue
            try:
                manifest = json.loads(self._read_verified(desc, "manifest"))
                config_desc = manifest["config"]
                if config_desc.get("mediaType") != MEDIA_TYPE_CACHE_CONFIG:
                    continue  # some other artifact or image
                config = json.loads(self._read_verified(config_desc, "cache config"))
                layers = {d["digest"]: d for d in manifest.get("layers") or []}
                raw_records = config["records"]
                if not isinstance(raw_records, list):
                    raise TypeError("records is not a list")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CacheTransferError(f"{where}: malformed cache manifest: {exc}") from None
            found = True
            for obj in raw_records:
                rec = _record_from(obj, layers, where)
                self.records[rec.key] = rec
        if not found:
            raise CacheTransferError(f"{where}: holds no pybuild cache manifest ({ARTIFACT_TYPE})")
        return self

    def fetch(self, record: CacheRecord, content: ContentStore) -> int:
        """Make ``record``'s layer blob present in ``content`` (copied with its digest and size
        verified, unless already there). Returns the bytes copied."""
        if record.layer is None or content.exists(record.layer.digest):
            return 0
        try:
            with open(self._blob_path(record.layer.digest), "rb") as src, content.writer() as w:
                while chunk := src.read(_CHUNK):
                    w.write(chunk)
                w.commit(expected_digest=record.layer.digest, expected_size=record.layer.size)
        except OSError as exc:
            raise CacheTransferError(f"--cache-from src={self.src}: layer {record.layer.digest}: "
                                     f"{exc.strerror}") from None
        except DigestMismatch as exc:
            raise CacheTransferError(f"--cache-from src={self.src}: layer {record.layer.digest} is corrupt: "
                                     f"{exc}") from None
        return record.layer.size


class CacheSources:
    """The local index first, then each imported cache in the order given (thread-safe: the
    index is, and imports are read-only once loaded)."""

    def __init__(self, index: CacheIndex, imports: Iterable[CacheImport] = (),
                 warn: Callable[[str], None] = lambda message: None):
        self.index = index
        self.imports = list(imports)
        self.warn = warn

    @classmethod
    def open(cls, index: CacheIndex, specs: Iterable[CacheImportSpec],
             warn: Callable[[str], None] = lambda message: None) -> "CacheSources":
        """Load every ``--cache-from`` source; one that cannot be read is skipped with a warning
        (a CI job's first run has no cache yet, and a broken cache must not fail a build)."""
        imports = []
        for spec in specs:
            try:
                imports.append(CacheImport.load(spec.src))
            except CacheTransferError as exc:
                warn(f"{exc}: ignoring this cache source")
        return cls(index, imports, warn)

    def get(self, key: str) -> tuple[CacheRecord, str | None] | None:
        """(record, origin) for ``key``: origin is None for the local index, else where the record
        was imported from (its blob is in the content store by then, and the record in the local
        index). None on a miss; an imported record whose blob is missing or corrupt is a miss
        with a warning."""
        record = self.index.get(key)
        if record is not None:
            return record, None
        for imp in self.imports:
            rec = imp.records.get(key)
            if rec is None:
                continue
            try:
                imp.fetch(rec, self.index.content)
            except CacheTransferError as exc:
                self.warn(f"{exc}; the step is rebuilt")
                continue
            self.index.put(key, rec)
            return rec, imp.origin
        return None
