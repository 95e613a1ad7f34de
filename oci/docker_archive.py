"""``docker save`` archives (docker-archive): write them, and read the ones docker, podman and
skopeo write.

Format (what ``docker load``, ``podman load`` and ``skopeo ... docker-archive:`` read):

    manifest.json         [{"Config": "<hex>.json", "RepoTags": ["name:tag"], "Layers": ["<hex>/layer.tar", ...]}]
    repositories          {"name": {"tag": "<top layer hex>"}}   (legacy, still written by docker)
    <config hex>.json     the image config, byte for byte (so the image id is unchanged)
    <diff_id hex>/layer.tar   each layer *uncompressed*: its sha256 is the config's diff_id

Reading accepts the classic layout above, docker >= 25's ``blobs/sha256/<hex>`` layout and
skopeo's ``<hex>.tar``; layers may be plain, gzip or zstd.  Every layer is verified against
the config's ``rootfs.diff_ids`` and stored gzip-compressed (a gzip layer is kept as is), so
the manifest we write points at gzip blobs while the diff_ids stay the uncompressed digests.
Nothing is tagged unless the whole archive checks out.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from pybuild.cache.content import BlobInfo, ContentStore
from pybuild.cache.layers import (
    GZIP_MAGIC,
    MEDIA_TYPE_LAYER_GZIP,
    ZSTD_MAGIC,
    LayerBlob,
    LayerError,
    _LayerSink,
    open_decompressed,
)

from pybuild.atomicfile import atomic_write

from .archive import ArchiveError, _member_path, _tarinfo
from .image import MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST, canonical_json, load_image
from .reference import InvalidReference, Reference, parse_reference
from .store import ImageStore

__all__ = ["archive_format", "load_any", "load_docker_archive", "save_docker_archive"]

_CHUNK = 1 << 20
_JSON_LIMIT = 16 << 20  # manifest.json / configs are small; refuse to buffer more than this


# -- save ------------------------------------------------------------------------------


class _UncompressedLayer:
    """The uncompressed tar of a stored layer, read once to learn its size and check its
    diff_id, then streamed into the archive (memory stays flat; no temp file)."""

    def __init__(self, content: ContentStore, layer: LayerBlob):
        self.content = content
        self.layer = layer
        h = hashlib.sha256()
        size = 0
        with self._open() as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
        got = "sha256:" + h.hexdigest()
        if got != layer.diff_id:
            raise ArchiveError(f"layer {layer.digest}: uncompressed content hashes to {got}, not diff_id {layer.diff_id}")
        self.size = size

    @contextlib.contextmanager
    def _open(self):
        if not self.content.exists(self.layer.digest):
            raise ArchiveError(f"layer blob {self.layer.digest} is not in the content store")
        with self.content.open(self.layer.digest) as raw:
            try:
                yield open_decompressed(raw)
            except (OSError, EOFError, zlib.error, LayerError) as e:
                raise ArchiveError(f"layer {self.layer.digest}: corrupt stream: {e}") from e

    def add_to(self, tar: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        ti.size = self.size
        with self._open() as f:
            h = _Hashing(f)
            tar.addfile(ti, h)
        if "sha256:" + h.h.hexdigest() != self.layer.diff_id:  # changed under us
            raise ArchiveError(f"layer {self.layer.digest} changed while being saved")


class _Hashing:
    def __init__(self, f):
        self.f = f
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def save_docker_archive(
    content: ContentStore,
    images: Iterable[tuple[Reference | str, str]],
    out: Path,
    *,
    source_date_epoch: int | None = None,
) -> None:
    """Write a ``docker save`` archive of ``images`` (``(ref, manifest digest)`` pairs).

    One manifest.json entry per distinct image (its RepoTags sorted; a ref of None adds no tag,
    so an image given only so has ``"RepoTags": []``, as ``docker save IMAGE-ID``); layers stored
    once per diff_id, uncompressed.  Deterministic (fixed member order and metadata); the file
    appears at ``out`` only when complete.
    """
    out = Path(out)
    mtime = int(source_date_epoch or 0)
    order: list[str] = []
    tags: dict[str, set[str]] = {}
    for ref, manifest_digest in images:
        if ref is not None:
            ref = parse_reference(ref)
            if ref.tag is None:
                raise InvalidReference(str(ref), "an archive entry needs name:tag")
        if manifest_digest not in tags:
            order.append(manifest_digest)
            tags[manifest_digest] = set()
        if ref is not None:
            tags[manifest_digest].add(ref.tagged)
    if not order:
        raise ArchiveError("no images to save")

    manifest_json: list[dict] = []
    repositories: dict[str, dict[str, str]] = {}
    configs: dict[str, bytes] = {}  # member name -> bytes
    layers: dict[str, LayerBlob] = {}  # member name -> layer
    for manifest_digest in order:
        img = load_image(content, manifest_digest)
        cfg_hex = img.config_digest.split(":", 1)[1]
        configs[f"{cfg_hex}.json"] = content.read_bytes(img.config_digest)
        names = []
        for layer in img.layers:
            name = layer.diff_id.split(":", 1)[1] + "/layer.tar"
            layers.setdefault(name, layer)
            names.append(name)
        repo_tags = sorted(tags[manifest_digest])
        manifest_json.append({"Config": f"{cfg_hex}.json", "RepoTags": repo_tags, "Layers": names})
        top = names[-1].split("/", 1)[0] if names else cfg_hex
        for t in repo_tags:
            repo, _, tag = t.rpartition(":")
            repositories.setdefault(repo, {})[tag] = top

    prepared = {name: _UncompressedLayer(content, layer) for name, layer in layers.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(prepared):
                tar.addfile(_tarinfo(name.split("/", 1)[0], directory=True, mtime=mtime))
                prepared[name].add_to(tar, _tarinfo(name, mtime=mtime))
            meta = sorted(configs.items())
            meta.append(("manifest.json", json.dumps(manifest_json, separators=(",", ":")).encode()))
            meta.append(("repositories", canonical_json(repositories)))
            for name, data in meta:
                tar.addfile(_tarinfo(name, size=len(data), mtime=mtime), io.BytesIO(data))


# -- load ------------------------------------------------------------------------------


def _is_layer(path: str, head: bytes, size: int) -> bool:
    """Members are told apart by content, since docker >= 25 names every blob by digest."""
    if head.startswith((GZIP_MAGIC, ZSTD_MAGIC)):
        return True
    if len(head) >= 262 and head[257:262] == b"ustar":
        return True
    if head and head == bytes(len(head)) and size % 512 == 0:
        return True  # an empty layer: just the end-of-archive blocks
    return path.endswith(".tar") and head.lstrip()[:1] not in (b"{", b"[")


def _ingest_layer(src: BinaryIO, head: bytes, content: ContentStore) -> LayerBlob:
    """Stream one archive member (a plain, gzip or zstd tar) into ``content`` as a gzip blob;
    return it with the diff_id computed from the uncompressed bytes."""
    stream = _Prefixed(head, src)
    if head.startswith(GZIP_MAGIC):
        # keep the publisher's gzip blob; decompress alongside only to learn the diff_id
        diff = hashlib.sha256()
        d = zlib.decompressobj(wbits=31)
        with content.writer() as w:
            while chunk := stream.read(_CHUNK):
                w.write(chunk)
                while chunk:
                    diff.update(d.decompress(chunk))
                    if d.eof:
                        chunk = d.unused_data
                        d = zlib.decompressobj(wbits=31)  # multi-member gzip
                    else:
                        chunk = b""
            info = w.commit()
        return LayerBlob(digest=info.digest, diff_id="sha256:" + diff.hexdigest(),
                         size=info.size, media_type=MEDIA_TYPE_LAYER_GZIP)
    plain = open_decompressed(stream) if head.startswith(ZSTD_MAGIC) else stream
    with content.writer() as w:
        sink = _LayerSink(w, "gzip")
        try:
            while chunk := plain.read(_CHUNK):
                sink.write(chunk)
            diff_id = sink.close()
        finally:
            sink.abort()
        info = w.commit()
    return LayerBlob(digest=info.digest, diff_id=diff_id, size=info.size, media_type=MEDIA_TYPE_LAYER_GZIP)


class _Prefixed:
    def __init__(self, head: bytes, f):
        self.head = head
        self.f = f

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self.f.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data
        return self.f.read(n)


def _familiar(name: str) -> str:
    """docker's familiar form, as ``docker load`` shows it: podman/skopeo write
    ``docker.io/library/alpine:3`` where docker writes ``alpine:3``."""
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            if name.startswith("library/") and name.count("/") == 1:
                name = name[len("library/"):]
            break
    return name


def _read_json_member(data: bytes, what: str):
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArchiveError(f"{what} is not valid JSON: {e}") from e


def load_docker_archive(
    source: Path | str | BinaryIO,
    content: ContentStore,
    store: ImageStore,
    *,
    ref: Reference | str | None = None,
) -> list[tuple[Reference | None, str]]:
    """Read a ``docker save`` / ``podman save`` / skopeo docker-archive tarball (plain or
    compressed, streamed in one pass), store its images as OCI images with gzip layers, and
    tag every RepoTag.  Untagged images are returned with ``None``; if ``ref`` is given the
    archive must hold exactly one image, tagged ``ref``.  Returns ``(ref or None, manifest
    digest)`` per RepoTag (or per untagged image)."""
    small: dict[str, bytes] = {}
    aliases: dict[str, str] = {}
    small_total = 0
    layers: dict[str, LayerBlob] = {}
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(source, "rb")) if isinstance(source, (str, os.PathLike)) else source
        try:
            tar = stack.enter_context(tarfile.open(fileobj=f, mode="r|*"))
            for member in tar:
                path = _member_path(member.name)
                if member.isdir() or not path:
                    continue
                if member.issym() or member.islnk():
                    # docker's legacy layout links a repeated layer (<id2>/layer.tar -> ../<id1>/layer.tar)
                    base = posixpath.dirname(path) if member.issym() else ""
                    aliases[path] = _member_path(posixpath.normpath(posixpath.join(base, member.linkname)))
                    continue
                if not member.isfile():
                    raise ArchiveError(f"unexpected non-regular member {member.name!r}")
                src = tar.extractfile(member)
                head = src.read(512)
                if _is_layer(path, head, member.size):
                    try:
                        layers[path] = _ingest_layer(src, head, content)
                    except (OSError, EOFError, zlib.error, LayerError) as e:
                        raise ArchiveError(f"layer {member.name!r}: {e}") from e
                elif member.size <= _JSON_LIMIT:
                    small_total += member.size
                    if small_total > 4 * _JSON_LIMIT:
                        raise ArchiveError("too much non-layer data (manifest/config files) in the archive")
                    small[path] = head + src.read()
                # anything else (huge non-tar members) is not part of an image: ignored
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise ArchiveError(f"cannot read docker archive: {e}") from e

    if "manifest.json" not in small:
        raise ArchiveError("not a docker archive: no manifest.json")
    entries = _read_json_member(small["manifest.json"], "manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ArchiveError("manifest.json lists no images")

    planned: list[tuple[list[str], str]] = []  # (repo tags, manifest digest)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise ArchiveError(f"manifest.json entry {i} has no Config")
        cfg_path = _member_path(entry["Config"])
        cfg_path = aliases.get(cfg_path, cfg_path)
        if cfg_path not in small:
            raise ArchiveError(f"manifest.json entry {i}: config {entry['Config']!r} is not in the archive")
        cfg_bytes = small[cfg_path]
        cfg = _read_json_member(cfg_bytes, f"config {entry['Config']!r}")
        diff_ids = ((cfg.get("rootfs") or {}).get("diff_ids") or []) if isinstance(cfg, dict) else []
        layer_paths = entry.get("Layers") or []
        if len(diff_ids) != len(layer_paths):
            raise ArchiveError(
                f"manifest.json entry {i}: {len(layer_paths)} layers but the config lists {len(diff_ids)} diff_ids"
            )
        descs = []
        for lp, diff_id in zip(layer_paths, diff_ids):
            lp_path = _member_path(str(lp))
            for _ in range(8):
                if lp_path not in aliases:
                    break
                lp_path = aliases[lp_path]
            layer = layers.get(lp_path)
            if layer is None:
                raise ArchiveError(f"manifest.json entry {i}: layer {lp!r} is not in the archive")
            if layer.diff_id != diff_id:
                raise ArchiveError(f"layer {lp!r} hashes to {layer.diff_id}, but the config says diff_id {diff_id}")
            descs.append({"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size})
        config_blob = content.put_bytes(cfg_bytes)  # byte for byte: the image id is unchanged
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config_blob.digest, "size": config_blob.size},
            "layers": descs,
        }
        manifest_blob = content.put_bytes(canonical_json(manifest))
        repo_tags = entry.get("RepoTags") or []
        if not isinstance(repo_tags, list):
            raise ArchiveError(f"manifest.json entry {i}: RepoTags is not a list")
        planned.append(([str(t) for t in repo_tags], manifest_blob.digest))

    results: list[tuple[Reference | None, str]] = []
    for repo_tags, digest in planned:
        if not repo_tags:
            results.append((None, digest))
        for t in repo_tags:
            try:
                r = parse_reference(_familiar(t))
            except InvalidReference as e:
                raise ArchiveError(f"manifest.json: bad RepoTag {t!r}: {e}") from e
            results.append((r if r.tag is not None else None, digest))
    if ref is not None:
        digests = {d for _, d in planned}
        if len(digests) != 1:
            raise ArchiveError(f"archive holds {len(digests)} images; cannot tag them all as {ref}")
        results = [(parse_reference(ref), digests.pop())]
    for r, digest in results:
        if r is not None:
            store.tag(r, BlobInfo(digest=digest, size=content.size(digest)))
    return results


# -- either format ----------------------------------------------------------------------


def archive_format(path: Path | str) -> str:
    """``"oci"`` if the tarball at ``path`` is an OCI image layout (has ``oci-layout``; docker
    >= 25 archives are both, and load fine as OCI), else ``"docker"`` if it has
    ``manifest.json``.  Reads member headers only."""
    names: set[str] = set()
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                names.add(_member_path(member.name))
                if "oci-layout" in names:
                    return "oci"
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ArchiveError(f"cannot read archive {path}: {e}") from e
    if "manifest.json" in names:
        return "docker"
    if "index.json" in names:
        return "oci"  # load_oci_archive explains what is missing
    raise ArchiveError(f"{path} is neither an OCI image layout nor a docker archive (no oci-layout or manifest.json)")


def load_any(
    source: Path | str | BinaryIO,
    content: ContentStore,
    store: ImageStore,
    *,
    ref: Reference | str | None = None,
) -> list[tuple[Reference | None, str]]:
    """Load an OCI archive or a docker archive, whichever ``source`` is.  A stream (e.g.
    stdin) is first spooled to a temp file under ``store.root/tmp``, since telling the two
    apart needs the member list."""
    from .archive import load_oci_archive

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        loader = load_oci_archive if archive_format(path) == "oci" else load_docker_archive
        return loader(path, content, store, ref=ref)
    tmp_root = store.root / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_root, prefix="load-", suffix=".tar")
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(source, f, _CHUNK)
        return load_any(Path(tmp), content, store, ref=ref)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
