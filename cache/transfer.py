"""Build cache export and import: `--cache-to type=local,dest=DIR` / `--cache-from type=local,src=DIR`,
and (through :mod:`pybuild.registry.cache`) `type=registry,ref=REF`, which pushes / reads the very
same manifest in a registry (same digest as the directory export of the same records).

The exported cache is an OCI image layout directory holding one OCI artifact, so standard tools
can copy it (`skopeo copy oci:DIR:latest docker://...`, `oras`)::

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

Cache mounts (``mounts=true``): the config gets ``"mounts": [{"id": ID, "layer": descriptor,
"diff_id": ..., "mode": N, "uid": N, "gid": N}, ...]`` (sorted by id; the key is absent without
mounts, so such caches keep their digests), and each mount's layer - a plain tar of the contents
of the ``RUN --mount=type=cache`` directory (instance 0) written by ``cache.layers.write_layer``,
mode/uid/gid being the directory's own - is appended to the manifest's layers after the record
layers, annotated ``org.pybuild.cache.mount.id`` = ID (:data:`MOUNT_ID_ANNOTATION`), even when a
record has the same blob. ``--cache-from`` restores a mount before the build only when the store
has no mount of that id (``CacheSources.restore_mounts``: temp dir + rename, never overwriting).

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
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pybuild.atomicfile import fsync_dir, write_atomic
from pybuild.errors import PybuildError

from .content import BlobNotFound, ContentStore, DigestMismatch
from .index import CacheIndex, CacheRecord
from .layers import LayerBlob, LayerError, unpack_layer, write_layer

__all__ = [
    "ARTIFACT_TYPE",
    "MEDIA_TYPE_CACHE_CONFIG",
    "MEDIA_TYPE_INDEX",
    "MEDIA_TYPE_MANIFEST",
    "MOUNT_ID_ANNOTATION",
    "REF_NAME",
    "CacheExportSpec",
    "CacheImport",
    "CacheImportSpec",
    "CacheMountDirs",
    "CacheMountLayer",
    "CacheSources",
    "CacheTransferError",
    "cache_manifest",
    "export_cache",
    "parse_cache_from",
    "parse_cache_to",
    "read_cache_config",
    "record_from",
    "snapshot_mounts",
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
    """``--cache-to``: ``dest`` for type=local, ``ref`` (a registry reference) for type=registry."""
    dest: Path | None = None
    mode: str = "min"       # "min": the final image's steps; "max": every step of every built stage
    ref: str | None = None
    mounts: bool = False    # also export the contents of the RUN --mount=type=cache dirs the build used

    @property
    def target(self) -> str:
        """Where the cache goes, as messages name it: ``local:DIR`` or ``registry:REF``."""
        return f"registry:{self.ref}" if self.ref is not None else f"local:{self.dest}"


@dataclass(frozen=True)
class CacheImportSpec:
    """``--cache-from``: ``src`` for type=local, ``ref`` for type=registry."""
    src: Path | None = None
    ref: str | None = None


_KEYS = {("--cache-to", "local"): ("dest", "mode", "mounts"), ("--cache-to", "registry"): ("ref", "mode", "mounts"),
         ("--cache-from", "local"): ("src",), ("--cache-from", "registry"): ("ref",)}


def _pairs(flag: str, text: str) -> dict[str, str]:
    """The key=value pairs of one flag value, checked against the keys its type takes."""
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key or not value:
            raise ValueError(f"{flag} {text}: expected comma-separated key=value pairs, got {part!r}")
        if key in out:
            raise ValueError(f"{flag} {text}: {key}= given twice")
        out[key] = value.strip()
    kind = out.get("type")
    if kind not in ("local", "registry"):
        raise ValueError(f"{flag} {text}: type must be local or registry (got type={kind or ''!r})")
    allowed = _KEYS[flag, kind]
    unknown = set(out) - {"type", *allowed}
    if unknown:
        raise ValueError(f"{flag} {text}: unknown key {min(unknown)!r} for type={kind} "
                         f"({', '.join(('type', *allowed))})")
    needed = allowed[0]
    if needed not in out:
        raise ValueError(f"{flag} {text}: type={kind} needs {needed}=" + ("REF" if needed == "ref" else "DIR"))
    if kind == "registry":
        from pybuild.oci.reference import (  # pure parsing
            InvalidReference,
            normalize_reference,
        )
        try:
            normalize_reference(out["ref"])
        except InvalidReference as exc:
            raise ValueError(f"{flag} {text}: ref={out['ref']}: {exc}") from None
    return out


def parse_cache_to(text: str) -> CacheExportSpec:
    """``type=local,dest=DIR`` or ``type=registry,ref=REF``, either with ``[,mode=min|max]
    [,mounts=true|false]`` -> spec; ValueError with a one-line message."""
    spec = _pairs("--cache-to", text)
    mode = spec.get("mode", "min")
    if mode not in ("min", "max"):
        raise ValueError(f"--cache-to {text}: mode must be min or max (got {mode!r})")
    mounts = spec.get("mounts", "false").lower()
    if mounts not in ("true", "false"):
        raise ValueError(f"--cache-to {text}: mounts must be true or false (got {spec['mounts']!r})")
    if spec["type"] == "registry":
        return CacheExportSpec(None, mode, ref=spec["ref"], mounts=mounts == "true")
    return CacheExportSpec(Path(spec["dest"]), mode, mounts=mounts == "true")


def parse_cache_from(text: str) -> CacheImportSpec:
    """``type=local,src=DIR`` or ``type=registry,ref=REF`` -> spec; ValueError with a one-line message."""
    spec = _pairs("--cache-from", text)
    if spec["type"] == "registry":
        return CacheImportSpec(ref=spec["ref"])
    return CacheImportSpec(Path(spec["src"]))


# -- the artifact -----------------------------------------------------------------------------------

def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _descriptor(layer: LayerBlob) -> dict:
    return {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}


MOUNT_ID_ANNOTATION = "org.pybuild.cache.mount.id"


@dataclass(frozen=True)
class CacheMountLayer:
    """The contents of one ``RUN --mount=type=cache`` directory as a layer blob (``mounts=true``):
    ``layer`` is a plain tar of the directory's contents; ``mode``/``uid``/``gid`` are the
    directory's own, restored with it."""
    id: str
    layer: LayerBlob
    mode: int
    uid: int
    gid: int


def cache_manifest(records: Iterable[CacheRecord], mounts: Iterable[CacheMountLayer] = ()) -> tuple[bytes, bytes]:
    """(config bytes, manifest bytes) describing ``records`` and cache ``mounts``. Pure and
    deterministic; without mounts the config has no ``mounts`` key (same digests as before it existed)."""
    by_key = {r.key: r for r in records}
    entries, layers = [], {}
    for key in sorted(by_key):
        r = by_key[key]
        entries.append({"key": key, "layer": _descriptor(r.layer) if r.layer else None,
                        "diff_id": r.layer.diff_id if r.layer else None, "created": r.created,
                        "created_by": r.description, "duration_s": r.duration_s})
        if r.layer is not None:
            layers[r.layer.digest] = _descriptor(r.layer)
    by_id = {m.id: m for m in mounts}
    config_obj: dict = {"schemaVersion": 1, "records": entries}
    if by_id:
        config_obj["mounts"] = [{"id": m.id, "layer": _descriptor(m.layer), "diff_id": m.layer.diff_id,
                                 "mode": m.mode, "uid": m.uid, "gid": m.gid}
                                for m in (by_id[i] for i in sorted(by_id))]
    config = _canonical(config_obj)
    manifest = _canonical({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": MEDIA_TYPE_CACHE_CONFIG, "digest": _sha256(config), "size": len(config)},
        # A mount layer is listed on its own, annotated, even when a record has the same blob.
        "layers": [layers[d] for d in sorted(layers)]
                  + [{**_descriptor(by_id[i].layer), "annotations": {MOUNT_ID_ANNOTATION: i}} for i in sorted(by_id)],
    })
    return config, manifest


def read_cache_config(manifest: dict, config: bytes, where: str) -> tuple[dict[str, CacheRecord],
                                                                          dict[str, CacheMountLayer]]:
    """The records and cache mounts of a cache artifact, from its parsed ``manifest`` and its
    (already digest-verified) ``config`` bytes. Pure; CacheTransferError names ``where``."""
    try:
        layers, mount_layers = {}, {}
        for d in manifest.get("layers") or []:
            mount_id = (d.get("annotations") or {}).get(MOUNT_ID_ANNOTATION)
            plain = {k: d[k] for k in ("mediaType", "digest", "size")}
            if mount_id is None:
                layers[d["digest"]] = plain
            else:
                mount_layers[mount_id] = plain
        obj = json.loads(config)
        raw_records, raw_mounts = obj["records"], obj.get("mounts") or []
        if not isinstance(raw_records, list) or not isinstance(raw_mounts, list):
            raise TypeError("records or mounts is not a list")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CacheTransferError(f"{where}: malformed cache manifest: {exc}") from None
    records = {}
    for raw in raw_records:
        rec = record_from(raw, layers, where)
        records[rec.key] = rec
    mounts = {}
    for raw in raw_mounts:
        try:
            mount_id, layer = raw["id"], raw["layer"]
            if not isinstance(mount_id, str) or mount_layers.get(mount_id) != layer:
                raise ValueError("its layer is not the manifest's layer for that mount id")
            if not isinstance(raw.get("diff_id"), str) or not _DIGEST.match(raw["diff_id"]):
                raise ValueError("bad diff_id")
            mounts[mount_id] = CacheMountLayer(
                mount_id, LayerBlob(digest=layer["digest"], diff_id=raw["diff_id"], size=int(layer["size"]),
                                    media_type=layer["mediaType"]),
                mode=int(raw["mode"]) & 0o7777, uid=int(raw["uid"]), gid=int(raw["gid"]))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise CacheTransferError(f"{where}: malformed cache mount {str(raw)[:80]}: {exc}") from None
    return records, mounts


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


def export_cache(content: ContentStore, records: Iterable[CacheRecord], dest: Path,
                 mounts: Iterable[CacheMountLayer] = ()) -> ExportResult:
    """Write ``records``, cache ``mounts`` and their layer blobs to the cache layout ``dest`` (see
    the module docstring for the format and the atomicity contract). The caller holds a GC lease,
    so the blobs stay in the content store while they are copied."""
    dest = Path(dest)
    records, mounts = list(records), list(mounts)
    _check_cache_layout(dest)
    config, manifest = cache_manifest(records, mounts)
    manifest_digest = _sha256(manifest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        blobs = dest / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        with _dir_lock(dest):
            _check_cache_layout(dest)  # again, under the lock
            written = 0
            layers = {r.layer.digest: r.layer for r in records if r.layer is not None}
            layers.update((m.layer.digest, m.layer) for m in mounts)
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


class CacheMountDirs(Protocol):
    """The store's cache mount directories (``pybuild.builder.mounts.CacheMounts`` implements it)."""

    def reading(self, cache_id: str) -> contextlib.AbstractContextManager[Path | None]:
        """The mount's data directory, held against exclusive users; None if it does not exist."""

    def restore(self, cache_id: str, fill: Callable[[Path], None], *, mode: int, uid: int, gid: int) -> bool:
        """Create the mount from ``fill(dir)`` unless it exists (atomically); False if it existed."""


def snapshot_mounts(mount_dirs: CacheMountDirs, ids: Iterable[str], content: ContentStore, *,
                    compression: str = "gzip") -> list[CacheMountLayer]:
    """``mounts=true``: each existing cache mount of ``ids`` as a layer blob written into ``content``
    (``cache.layers.write_layer``; unreferenced afterwards, so the caller holds a GC lease until
    the export is done). Mounts that do not exist (a step that never ran here) are skipped."""
    out = []
    for cache_id in sorted(set(ids)):
        with mount_dirs.reading(cache_id) as data:
            if data is None:
                continue
            st = os.stat(data)
            layer = write_layer(data, content, compression=compression)
        out.append(CacheMountLayer(cache_id, layer, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
    return out


# -- import -----------------------------------------------------------------------------------------

def record_from(obj, layers: dict[str, dict], where: str) -> CacheRecord:
    """One config record -> CacheRecord; its layer must be one of ``layers`` (digest -> descriptor)."""
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
    """The records and cache mounts of one cache layout directory, read (and verified) once."""

    def __init__(self, src: Path, records: dict[str, CacheRecord],
                 mounts: dict[str, CacheMountLayer] | None = None):
        self.src = Path(src)
        self.records = records
        self.mounts = mounts or {}

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
    def load(cls, src: Path) -> CacheImport:
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
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CacheTransferError(f"{where}: malformed cache manifest: {exc}") from None
            records, mounts = read_cache_config(manifest, self._read_verified(config_desc, "cache config"), where)
            found = True
            self.records.update(records)
            self.mounts.update(mounts)
        if not found:
            raise CacheTransferError(f"{where}: holds no pybuild cache manifest ({ARTIFACT_TYPE})")
        return self

    def fetch(self, record: CacheRecord, content: ContentStore) -> int:
        """Make ``record``'s layer blob present in ``content``; see :meth:`fetch_layer`."""
        return self.fetch_layer(record.layer, content) if record.layer is not None else 0

    def fetch_layer(self, layer: LayerBlob, content: ContentStore) -> int:
        """Make ``layer``'s blob present in ``content`` (copied with its digest and size verified,
        unless already there). Returns the bytes copied."""
        if content.exists(layer.digest):
            return 0
        try:
            with open(self._blob_path(layer.digest), "rb") as src, content.writer() as w:
                while chunk := src.read(_CHUNK):
                    w.write(chunk)
                w.commit(expected_digest=layer.digest, expected_size=layer.size)
        except OSError as exc:
            raise CacheTransferError(f"--cache-from src={self.src}: layer {layer.digest}: "
                                     f"{exc.strerror}") from None
        except DigestMismatch as exc:
            raise CacheTransferError(f"--cache-from src={self.src}: layer {layer.digest} is corrupt: "
                                     f"{exc}") from None
        return layer.size

    def close(self) -> None:
        """Release what the import holds open (nothing for a directory); idempotent."""


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
             warn: Callable[[str], None] = lambda message: None) -> CacheSources:
        """Load every ``--cache-from`` source; one that cannot be read is skipped with a warning
        (a CI job's first run has no cache yet, and a broken cache must not fail a build)."""
        imports: list[CacheImport] = []
        for spec in specs:
            try:
                if spec.ref is not None:
                    from pybuild.registry.cache import (
                        RegistryCacheImport,  # the registry client is big
                    )
                    imports.append(RegistryCacheImport.load(spec.ref))
                else:
                    imports.append(CacheImport.load(spec.src))
            except CacheTransferError as exc:
                warn(f"{exc}: ignoring this cache source")
        return cls(index, imports, warn)

    def close(self) -> None:
        """Close every import (registry connections); idempotent. The build calls it when done."""
        for imp in self.imports:
            imp.close()

    def restore_mounts(self, mount_dirs: CacheMountDirs) -> list[tuple[str, str]]:
        """Create each imported cache mount that ``mount_dirs`` does not have yet from its layer
        (the first source listing an id wins; an existing mount is never touched). Returns
        (mount id, origin) of those restored; a layer that cannot be fetched or unpacked is skipped
        with a warning and leaves no directory behind."""
        restored, seen = [], set()
        for imp in self.imports:
            for cache_id, mount in sorted(imp.mounts.items()):
                if cache_id in seen:
                    continue
                seen.add(cache_id)
                try:
                    imp.fetch_layer(mount.layer, self.index.content)
                    made = mount_dirs.restore(
                        cache_id, lambda d, layer=mount.layer: unpack_layer(self.index.content, layer, d),
                        mode=mount.mode, uid=mount.uid, gid=mount.gid)
                except (CacheTransferError, LayerError, OSError) as exc:
                    self.warn(f"{imp.origin}: cache mount {cache_id!r} not restored: {exc}")
                    continue
                if made:
                    restored.append((cache_id, imp.origin))
        return restored

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
