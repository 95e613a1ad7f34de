"""OCI image-layout tarballs (save/load) and ``docker import``-style rootfs import."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from pybuild.atomicfile import atomic_write
from typing import IO, BinaryIO, Iterable

from pybuild.cache.content import BlobInfo, ContentStore
from pybuild.cache.layers import unpack_tar_stream, write_layer

from .image import (
    INDEX_MEDIA_TYPES,
    MEDIA_TYPE_INDEX,
    canonical_json,
    load_manifest,
    new_config,
    write_image,
)
from .reference import InvalidReference, Reference, parse_reference
from .store import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    OCI_LAYOUT,
    ImageStore,
    rfc3339,
)

__all__ = ["ArchiveError", "save_oci_archive", "load_oci_archive", "read_oci_archive", "import_rootfs"]

_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ArchiveError(ValueError):
    """An archive is malformed, or its content does not match its digests."""


# -- save ------------------------------------------------------------------------------


class _HashingReader(io.RawIOBase):
    """Reads through ``f`` while hashing; ``check()`` compares with the expected digest."""

    def __init__(self, f: IO[bytes], digest: str):
        self._f = f
        self._digest = digest
        self._h = hashlib.sha256()
        self._n = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._h.update(data)
        self._n += len(data)
        return data

    def readinto(self, b) -> int:  # pragma: no cover - tarfile uses read()
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def check(self) -> None:
        got = "sha256:" + self._h.hexdigest()
        if got != self._digest:
            raise ArchiveError(f"blob {self._digest} is corrupt in the content store (read {got})")


def _tarinfo(name: str, *, size: int = 0, directory: bool = False, mtime: int = 0) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.mode = 0o755 if directory else 0o644
    ti.size = 0 if directory else size
    ti.mtime = mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _blob_closure(content: ContentStore, manifest_digest: str) -> tuple[dict, list[str]]:
    manifest = load_manifest(content, manifest_digest)
    digests = [manifest_digest, manifest["config"]["digest"]]
    digests += [layer["digest"] for layer in manifest.get("layers", [])]
    for d in digests:
        if not content.exists(d):
            raise ArchiveError(f"blob {d} of image {manifest_digest} is not in the content store")
    return manifest, digests


def save_oci_archive(
    content: ContentStore,
    images: Iterable[tuple[Reference | str, str]],
    out: Path,
    *,
    source_date_epoch: int | None = None,
) -> None:
    """Write an OCI image-layout tarball holding ``images`` (``(ref, manifest digest)`` pairs).

    index.json has one entry per reference, annotated with ``org.opencontainers.image.ref.name``
    and ``io.containerd.image.name`` = ``name:tag``; a ref of None gives an entry without
    annotations (an unnamed image, as buildx's ``type=oci`` output without ``name=``), after the
    named ones.  Members are in a fixed order with fixed metadata, so the same images give a
    byte-identical file.  Blobs are streamed (and their digests re-verified); the file appears at
    ``out`` only when complete.
    """
    out = Path(out)
    mtime = int(source_date_epoch or 0)
    entries: dict[str, dict] = {}
    unnamed: dict[str, dict] = {}
    blobs: set[str] = set()
    for ref, manifest_digest in images:
        if ref is None:
            manifest, digests = _blob_closure(content, manifest_digest)
            unnamed[manifest_digest] = {"mediaType": manifest.get("mediaType"), "digest": manifest_digest,
                                        "size": content.size(manifest_digest)}
            blobs.update(digests)
            continue
        ref = parse_reference(ref)
        if ref.tag is None:
            raise InvalidReference(str(ref), "an archive entry needs name:tag")
        manifest, digests = _blob_closure(content, manifest_digest)
        name = ref.tagged
        if name in entries and entries[name]["digest"] != manifest_digest:
            raise ArchiveError(f"{name} is given twice, for different images")
        entries[name] = {
            "mediaType": manifest.get("mediaType"),
            "digest": manifest_digest,
            "size": content.size(manifest_digest),
            "annotations": {ANNOTATION_REF_NAME: name, ANNOTATION_CONTAINERD_NAME: name},
        }
        blobs.update(digests)
    if not entries and not unnamed:
        raise ArchiveError("no images to save")
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [entries[name] for name in sorted(entries)] + [unnamed[d] for d in sorted(unnamed)],
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in (("oci-layout", canonical_json(OCI_LAYOUT)), ("index.json", canonical_json(index))):
                tar.addfile(_tarinfo(name, size=len(data), mtime=mtime), io.BytesIO(data))
            tar.addfile(_tarinfo("blobs", directory=True, mtime=mtime))
            tar.addfile(_tarinfo("blobs/sha256", directory=True, mtime=mtime))
            for digest in sorted(blobs):
                size = content.size(digest)
                with content.open(digest) as src:
                    reader = _HashingReader(src, digest)
                    ti = _tarinfo("blobs/sha256/" + digest.split(":", 1)[1], size=size, mtime=mtime)
                    tar.addfile(ti, reader)
                    reader.check()


# -- load ------------------------------------------------------------------------------


def _member_path(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _pick_platform(content: ContentStore, desc: dict, depth: int = 0) -> dict:
    """Follow nested indexes down to the linux/amd64 (or only) manifest descriptor."""
    if desc.get("mediaType") not in INDEX_MEDIA_TYPES:
        return desc
    if depth > 4:
        raise ArchiveError("image indexes nested too deeply")
    index = json.loads(content.read_bytes(desc["digest"]))
    children = index.get("manifests") or []
    wanted = [
        c for c in children
        if (c.get("platform") or {}).get("os") == "linux"
        and (c.get("platform") or {}).get("architecture") == "amd64"
    ]
    if not wanted and len(children) == 1:
        wanted = children
    if not wanted:
        raise ArchiveError(f"index {desc['digest']} has no linux/amd64 manifest")
    return _pick_platform(content, wanted[0], depth + 1)


def _entry_reference(entry: dict) -> Reference | None:
    annotations = entry.get("annotations") or {}
    for key, need_colon in ((ANNOTATION_CONTAINERD_NAME, False), (ANNOTATION_REF_NAME, True)):
        value = annotations.get(key)
        if not value or (need_colon and ":" not in value.rsplit("/", 1)[-1]):
            continue  # a bare tag ("1.0") as ref.name names no repository
        with contextlib.suppress(InvalidReference):
            ref = parse_reference(value)
            if ref.tag is not None:
                return ref
    return None


def load_oci_archive(
    source: Path | BinaryIO,
    content: ContentStore,
    store: ImageStore,
    *,
    ref: Reference | str | None = None,
) -> list[tuple[Reference | None, str]]:
    """Read an OCI image-layout tarball (any compression), streaming each blob into ``content``
    with its digest and size verified, then tag every named manifest in ``store``.

    Names come from ``io.containerd.image.name`` or a full ``name:tag`` ref.name annotation;
    entries with neither are loaded but left untagged (returned with ``None``).  If ``ref`` is
    given the archive must hold exactly one image, which is tagged ``ref``.
    Returns ``(reference or None, manifest digest)`` per index entry.
    """
    results = read_oci_archive(source, content)
    if ref is not None:
        digests = {d for _, d in results}
        if len(digests) != 1:
            raise ArchiveError(f"archive holds {len(digests)} images; cannot tag them all as {ref}")
        results = [(parse_reference(ref), digests.pop())]
    for r, digest in results:
        if r is not None:
            store.tag(r, _blob_info(content, digest))
    return results


def read_oci_archive(source: Path | BinaryIO, content: ContentStore) -> list[tuple[Reference | None, str]]:
    """The first half of ``load_oci_archive``: stream the archive's blobs into ``content``
    (content-addressed, digests and sizes verified) and return ``(the name its index.json
    gives or None, manifest digest)`` per index entry, WITHOUT tagging anything (what `run
    oci-archive:FILE` uses: the image by its digest, the local tags untouched).  The blobs are
    unreferenced until something tags them or a container record names the manifest, so the
    caller holds a ``build_lease`` while it uses them."""
    index_data: bytes | None = None
    saw_layout = False
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(source, "rb")) if isinstance(source, (str, os.PathLike)) else source
        try:
            tar = stack.enter_context(tarfile.open(fileobj=f, mode="r|*"))
            for member in tar:
                path = _member_path(member.name)
                if member.isdir() or not path:
                    continue
                if not member.isfile():
                    raise ArchiveError(f"unexpected non-regular member {member.name!r}")
                src = tar.extractfile(member)
                if path == "index.json":
                    index_data = src.read(16 << 20)
                elif path == "oci-layout":
                    layout = json.loads(src.read(1 << 16))
                    if layout.get("imageLayoutVersion") != "1.0.0":
                        raise ArchiveError(f"unsupported imageLayoutVersion {layout.get('imageLayoutVersion')!r}")
                    saw_layout = True
                elif path.startswith("blobs/"):
                    parts = path.split("/")
                    if len(parts) != 3 or parts[1] != "sha256" or not _HEX64.fullmatch(parts[2]):
                        raise ArchiveError(f"unsupported blob path {member.name!r}")
                    digest = "sha256:" + parts[2]
                    if content.exists(digest):
                        continue
                    with content.writer() as w:
                        while chunk := src.read(_CHUNK):
                            w.write(chunk)
                        w.commit(expected_digest=digest, expected_size=member.size)
                # other members (e.g. docker's manifest.json, repositories) are ignored
        except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as e:
            raise ArchiveError(f"cannot read OCI archive: {e}") from e
    if not saw_layout:
        raise ArchiveError("not an OCI image layout: no oci-layout file")
    if index_data is None:
        raise ArchiveError("not an OCI image layout: no index.json")
    index = json.loads(index_data)

    results: list[tuple[Reference | None, str]] = []
    for entry in index.get("manifests") or []:
        desc = _pick_platform(content, entry)
        _blob_closure(content, desc["digest"])  # every blob present
        results.append((_entry_reference(entry), desc["digest"]))
    return results


def _blob_info(content: ContentStore, digest: str) -> BlobInfo:
    return BlobInfo(digest=digest, size=content.size(digest))


# -- import ----------------------------------------------------------------------------

_SHELL = ["/bin/sh", "-c"]
_CHANGE_KEYS = {
    "Cmd", "Entrypoint", "Env", "WorkingDir", "User", "ExposedPorts", "Volumes", "Labels", "StopSignal",
}


def _apply_changes(cfg: dict, changes: dict) -> None:
    unknown = set(changes) - _CHANGE_KEYS
    if unknown:
        raise ValueError(f"unsupported import change(s) {sorted(unknown)}; allowed: {sorted(_CHANGE_KEYS)}")
    c = cfg["config"]
    for key, value in changes.items():
        if key in ("Cmd", "Entrypoint"):
            c[key] = _SHELL + [value] if isinstance(value, str) else [str(v) for v in value]
        elif key == "Env":
            items = value.items() if isinstance(value, dict) else (e.split("=", 1) for e in value)
            env = {k: v for k, v in (e.split("=", 1) for e in c.get("Env", []))}
            for item in items:
                if len(item) != 2:
                    raise ValueError(f"Env entry {item!r} is not KEY=VALUE")
                env[item[0]] = item[1]
            c["Env"] = [f"{k}={v}" for k, v in env.items()]
        elif key in ("ExposedPorts", "Volumes"):
            c[key] = {str(p): {} for p in value}
        elif key == "Labels":
            c[key] = {str(k): str(v) for k, v in dict(value).items()}
        else:
            c[key] = str(value)


def import_rootfs(
    source: Path | str | BinaryIO,
    ref: Reference | str,
    content: ContentStore,
    store: ImageStore,
    *,
    changes: dict | None = None,
    message: str | None = None,
    source_date_epoch: int | None = None,
) -> str:
    """Like ``docker import``: make a one-layer image from a directory, a tar file (plain, gzip,
    bzip2 or xz) or a tar stream, tag it ``ref`` and return its manifest digest.

    Tar input is unpacked safely into a temp dir under ``store.root/tmp`` and re-packed with
    ``write_layer``, so the layer is deterministic whatever the input tar looked like.
    ``changes`` sets Cmd/Entrypoint (list, or str for shell form), Env (list of K=V or dict),
    WorkingDir, User, ExposedPorts, Volumes, Labels, StopSignal.
    """
    ref = parse_reference(ref)
    if ref.tag is None:
        raise InvalidReference(str(ref), "cannot import to a digest reference; give name:tag")
    if isinstance(source, str):
        source = Path(source)
    if isinstance(source, Path) and source.is_dir():
        layer = write_layer(source, content, source_date_epoch=source_date_epoch)
        origin = str(source)
    else:
        tmp_root = store.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(dir=tmp_root, prefix="import-"))
        try:
            rootfs = workdir / "rootfs"
            rootfs.mkdir()
            with contextlib.ExitStack() as stack:
                if isinstance(source, Path):
                    raw = stack.enter_context(open(source, "rb"))
                    origin = str(source)
                else:
                    raw = source
                    origin = "-"
                unpack_tar_stream(raw, rootfs)  # detects gzip/bzip2/xz itself
            # unpack_tar_stream turns OCI whiteouts into overlay form; overlay_upper turns them back
            layer = write_layer(rootfs, content, overlay_upper=True, source_date_epoch=source_date_epoch)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    created = rfc3339(source_date_epoch) if source_date_epoch is not None else rfc3339()
    cfg = new_config(None)
    cfg["created"] = created
    if changes:
        _apply_changes(cfg, changes)
    history = {"created": created, "created_by": "pybuild import", "comment": message or f"imported from {origin}"}
    cfg["history"] = [history]
    record = write_image(content, cfg, [layer])
    store.tag(ref, record.manifest, created=created)
    return record.manifest.digest
