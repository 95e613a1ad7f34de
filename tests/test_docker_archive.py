"""docker-archive save/load (skopeo as the judge), load_any, `pybuild export`, zstd layers."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from pybuild.cache.content import ContentStore
from pybuild.cache.layers import (
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    LayerError,
    unpack_layer,
    unpack_tar_stream,
    write_layer,
)
from pybuild.oci import (
    ArchiveError,
    ImageStore,
    load_image,
    new_config,
    save_oci_archive,
    write_image,
)
from pybuild.oci.docker_archive import (
    archive_format,
    load_any,
    load_docker_archive,
    save_docker_archive,
)

from pybuild.store import Store

SKOPEO = shutil.which("skopeo")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts (mknod 0/0, trusted.* xattrs) need root")


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def content(root) -> ContentStore:
    return ContentStore(root)


@pytest.fixture
def store(root, content) -> ImageStore:
    return ImageStore(root, content)


def fresh(tmp_path, name="other"):
    c = ContentStore(tmp_path / name)
    return c, ImageStore(tmp_path / name, c)


def make_tree(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for rel, text in files.items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return path


def make_image(tmp_path, content, layers_files, cmd=("/bin/sh",), compression="gzip", sde=None):
    layers = [
        write_layer(make_tree(tmp_path / f"l{i}", files), content, compression=compression, source_date_epoch=sde)
        for i, files in enumerate(layers_files)
    ]
    cfg = new_config(None)
    cfg["config"]["Cmd"] = list(cmd)
    cfg["history"] = [{"created_by": f"layer {i}"} for i in range(len(layers))]
    return write_image(content, cfg, layers), layers


def run(*argv) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    assert p.returncode == 0, f"{argv} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def tree_of(content, img, dest: Path) -> dict[str, bytes | str]:
    """Unpack each layer with our extractor (overlay form); return {relpath: bytes | '<dir>'}."""
    out = {}
    for i, layer in enumerate(img.layers):
        d = dest / str(i)
        unpack_layer(content, layer, d)
        for dirpath, dirs, files in os.walk(d):
            for n in dirs:
                out[os.path.relpath(os.path.join(dirpath, n), d)] = "<dir>"
            for n in files:
                p = os.path.join(dirpath, n)
                out[os.path.relpath(p, d)] = Path(p).read_bytes()
    return out


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as t:
        return {m.name: m for m in t.getmembers()}


FILES1 = {"hello.txt": "hello world\n", "etc/os-release": "NAME=test\n"}
FILES2 = {"app/main.sh": "echo hi\n"}


# ---------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------


def test_save_layout_and_layers_are_uncompressed_diffs(tmp_path, content):
    rec, layers = make_image(tmp_path, content, [FILES1, FILES2])
    out = tmp_path / "out" / "img.tar"
    save_docker_archive(content, [("hello:1.0", rec.manifest.digest), ("hello:latest", rec.manifest.digest)], out)
    with tarfile.open(out) as t:
        manifest = json.load(t.extractfile("manifest.json"))
        repositories = json.load(t.extractfile("repositories"))
        assert len(manifest) == 1
        entry = manifest[0]
        assert entry["RepoTags"] == ["hello:1.0", "hello:latest"]
        assert entry["Config"] == rec.config.digest.split(":")[1] + ".json"
        cfg_bytes = t.extractfile(entry["Config"]).read()
        assert hashlib.sha256(cfg_bytes).hexdigest() == rec.config.digest.split(":")[1]
        diff_ids = json.loads(cfg_bytes)["rootfs"]["diff_ids"]
        for name, diff_id, layer in zip(entry["Layers"], diff_ids, layers):
            data = t.extractfile(name).read()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == diff_id == layer.diff_id
            assert data[257:262] == b"ustar"  # a plain tar, not gzip
            assert name == diff_id.split(":")[1] + "/layer.tar"
        assert repositories == {"hello": {"1.0": entry["Layers"][-1].split("/")[0],
                                          "latest": entry["Layers"][-1].split("/")[0]}}
    assert not [p for p in out.parent.iterdir() if p.name != "img.tar"]  # no temp file left


def test_save_is_deterministic_and_dedups_layers(tmp_path, content):
    # mtimes clamped, so FILES1 gives the same layer in both images whatever the clock does
    rec_a, _ = make_image(tmp_path / "a", content, [FILES1, FILES2], sde=0)
    rec_b, _ = make_image(tmp_path / "b", content, [FILES1], cmd=("/bin/true",), sde=0)
    images = [("a:1", rec_a.manifest.digest), ("b:1", rec_b.manifest.digest)]
    save_docker_archive(content, images, tmp_path / "1.tar")
    save_docker_archive(content, list(reversed(images))[::-1], tmp_path / "2.tar")
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()
    layer_members = [n for n in members(tmp_path / "1.tar") if n.endswith("/layer.tar")]
    assert len(layer_members) == 2  # FILES1's layer once, shared by both images
    c2, s2 = fresh(tmp_path)
    loaded = load_docker_archive(tmp_path / "1.tar", c2, s2)
    assert sorted((str(r), d) for r, d in loaded) == [("a:1", rec_a.manifest.digest), ("b:1", rec_b.manifest.digest)]


def test_save_refuses_missing_blob_and_leaves_no_file(tmp_path, content):
    rec, layers = make_image(tmp_path, content, [FILES1])
    content.delete(layers[0].digest)
    with pytest.raises(ArchiveError, match="not in the content store"):
        save_docker_archive(content, [("x:1", rec.manifest.digest)], tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.tar")]


@needs_skopeo
def test_skopeo_inspects_and_copies_what_we_save(tmp_path, content):
    rec, layers = make_image(tmp_path, content, [FILES1, FILES2])
    out = tmp_path / "img.tar"
    save_docker_archive(content, [("hello:1.0", rec.manifest.digest)], out)
    info = json.loads(run(SKOPEO, "inspect", f"docker-archive:{out}").stdout)
    assert info["Layers"] == [layer.diff_id for layer in layers]
    assert info["Os"] == "linux" and info["Architecture"] == "amd64"
    raw_cfg = json.loads(run(SKOPEO, "inspect", "--config", f"docker-archive:{out}").stdout)
    assert raw_cfg["rootfs"]["diff_ids"] == [layer.diff_id for layer in layers]
    assert raw_cfg["config"]["Cmd"] == ["/bin/sh"]
    # and skopeo can turn it into an OCI layout that our OCI loader reads
    run(SKOPEO, "copy", f"docker-archive:{out}", f"oci-archive:{tmp_path / 'oci.tar'}:hello:1.0")
    c2, s2 = fresh(tmp_path)
    load_any(tmp_path / "oci.tar", c2, s2)
    img = load_image(c2, s2.resolve("hello:1.0"))
    assert [x.diff_id for x in img.layers] == [x.diff_id for x in layers]


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------


def test_round_trip_keeps_image_id_and_gzip_layers(tmp_path, content):
    rec, layers = make_image(tmp_path, content, [FILES1, FILES2])
    save_docker_archive(content, [("hello:1.0", rec.manifest.digest)], tmp_path / "img.tar")
    c2, s2 = fresh(tmp_path)
    loaded = load_docker_archive(tmp_path / "img.tar", c2, s2)
    assert [str(r) for r, _ in loaded] == ["hello:1.0"]
    img = load_image(c2, s2.resolve("hello:1.0"))
    assert img.config_digest == rec.config.digest  # config kept byte for byte: same image id
    assert [(x.diff_id, x.digest) for x in img.layers] == [(x.diff_id, x.digest) for x in layers]
    assert all(x.media_type == MEDIA_TYPE_LAYER_GZIP for x in img.layers)
    assert all(c2.path(x.digest).read_bytes()[:2] == b"\x1f\x8b" for x in img.layers)
    assert img.manifest_digest == rec.manifest.digest  # deterministic recompression


@needs_skopeo
def test_load_skopeo_docker_archive(tmp_path, content):
    """skopeo copy oci-archive -> docker-archive (its layout: <hex>.tar + symlinked legacy
    dirs, docker.io/ names); our load gives the same diff_ids and the same files."""
    rec, _ = make_image(tmp_path, content, [FILES1, FILES2, FILES1])  # a repeated layer too
    save_oci_archive(content, [("hello:1.0", rec.manifest.digest)], tmp_path / "oci.tar")
    dock = tmp_path / "dock.tar"
    run(SKOPEO, "copy", f"oci-archive:{tmp_path / 'oci.tar'}", f"docker-archive:{dock}:other/name:2")
    assert archive_format(dock) == "docker"
    c2, s2 = fresh(tmp_path)
    loaded = load_any(dock, c2, s2)
    assert [str(r) for r, _ in loaded] == ["other/name:2"]  # docker.io/ prefix made familiar
    img = load_image(c2, s2.resolve("other/name:2"))
    orig = load_image(content, rec.manifest.digest)
    assert [x.diff_id for x in img.layers] == [x.diff_id for x in orig.layers]
    assert img.config_digest == orig.config_digest
    assert tree_of(c2, img, tmp_path / "t2") == tree_of(content, orig, tmp_path / "t1")


def _docker_archive_with(tmp_path, layer_bytes: list[bytes], diff_ids: list[str], legacy_link=False) -> Path:
    """Hand-made archive, docker's own legacy layout, manifest.json last like `docker save`."""
    cfg = new_config(None)
    cfg["rootfs"]["diff_ids"] = diff_ids
    cfg_bytes = json.dumps(cfg).encode()
    cfg_name = hashlib.sha256(cfg_bytes).hexdigest() + ".json"
    out = tmp_path / "hand.tar"
    names = []
    with tarfile.open(out, "w") as t:
        for i, data in enumerate(layer_bytes):
            name = f"{i:064x}/layer.tar"
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
            names.append(name)
        if legacy_link:
            ti = tarfile.TarInfo(f"{99:064x}/layer.tar")
            ti.type = tarfile.SYMTYPE
            ti.linkname = f"../{0:064x}/layer.tar"
            t.addfile(ti)
            names.append(ti.name)
        for name, data in ((cfg_name, cfg_bytes),
                           ("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": ["docker.io/library/hand:1"],
                                                          "Layers": names}]).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return out


def _tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_load_gzip_layers_and_legacy_links(tmp_path):
    plain = _tar_of({"a.txt": b"A\n"})
    gz = gzip.compress(_tar_of({"b.txt": b"B\n"}), mtime=0)
    arch = _docker_archive_with(tmp_path, [plain, gz], [_sha(plain), _sha(gzip.decompress(gz)), _sha(plain)],
                                legacy_link=True)
    c2, s2 = fresh(tmp_path)
    # a stream: load_any spools it, then detects the format
    with open(arch, "rb") as f:
        loaded = load_any(f, c2, s2)
    assert [str(r) for r, _ in loaded] == ["hand:1"]  # docker.io/library/ made familiar
    img = load_image(c2, s2.resolve("hand:1"))
    assert img.layers[1].digest == _sha(gz)  # a gzip layer is kept as published
    assert [x.diff_id for x in img.layers] == [_sha(plain), _sha(gzip.decompress(gz)), _sha(plain)]
    tree = tree_of(c2, img, tmp_path / "t")
    assert tree["a.txt"] == b"A\n" and tree["b.txt"] == b"B\n"
    assert not list((tmp_path / "other" / "tmp").iterdir())  # spool file removed


def test_load_rejects_diff_id_mismatch_and_tags_nothing(tmp_path):
    plain = _tar_of({"a.txt": b"A\n"})
    arch = _docker_archive_with(tmp_path, [plain], ["sha256:" + "00" * 32])
    c2, s2 = fresh(tmp_path)
    with pytest.raises(ArchiveError, match="diff_id"):
        load_docker_archive(arch, c2, s2)
    assert s2.list() == []


def test_load_rejects_missing_layer_and_truncation(tmp_path, content):
    rec, _ = make_image(tmp_path, content, [FILES1])
    save_docker_archive(content, [("hello:1.0", rec.manifest.digest)], tmp_path / "img.tar")
    data = (tmp_path / "img.tar").read_bytes()
    (tmp_path / "trunc.tar").write_bytes(data[: len(data) // 2])
    c2, s2 = fresh(tmp_path)
    with pytest.raises(ArchiveError):
        load_docker_archive(tmp_path / "trunc.tar", c2, s2)
    # drop the layer member
    with tarfile.open(tmp_path / "img.tar") as src, tarfile.open(tmp_path / "nolayer.tar", "w") as dst:
        for m in src.getmembers():
            if not m.name.endswith("layer.tar"):
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    with pytest.raises(ArchiveError, match="not in the archive"):
        load_docker_archive(tmp_path / "nolayer.tar", c2, s2)
    assert s2.list() == []


def test_load_any_detects_oci_and_rejects_other(tmp_path, content):
    rec, _ = make_image(tmp_path, content, [FILES1])
    save_oci_archive(content, [("hello:1.0", rec.manifest.digest)], tmp_path / "oci.tar")
    assert archive_format(tmp_path / "oci.tar") == "oci"
    c2, s2 = fresh(tmp_path)
    assert [str(r) for r, _ in load_any(tmp_path / "oci.tar", c2, s2)] == ["hello:1.0"]
    (tmp_path / "junk.tar").write_bytes(_tar_of({"x": b"y"}))
    with pytest.raises(ArchiveError, match="neither"):
        load_any(tmp_path / "junk.tar", c2, s2)


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------


@needs_root
def test_export_flattens_with_whiteouts(tmp_path):
    from pybuild.commands import export

    st = Store.open(tmp_path / "root")
    base = make_tree(tmp_path / "base", {"a.txt": "A", "b.txt": "B", "d/x": "X", "keep/k": "K"})
    os.link(base / "b.txt", base / "b-link")
    l1 = write_layer(base, st.content)
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    os.mknod(upper / "a.txt", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # a.txt deleted
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")  # d/ replaced wholesale
    (upper / "d" / "y").write_text("Y")
    (upper / "new").write_text("N")
    l2 = write_layer(upper, st.content, overlay_upper=True)
    rec = write_image(st.content, new_config(None), [l1, l2])
    st.images.tag("wh:1", rec.manifest)

    args = argparse.Namespace(output=str(tmp_path / "out" / "fs.tar"), image="wh:1")
    assert export.run(args, lambda: st) == 0
    ms = members(tmp_path / "out" / "fs.tar")
    assert sorted(ms) == ["b-link", "b.txt", "d", "d/y", "keep", "keep/k", "new"]
    assert ms["b.txt"].islnk() and ms["b.txt"].linkname == "b-link"  # "b-link" sorts first
    assert not any(".wh." in n for n in ms)
    with tarfile.open(tmp_path / "out" / "fs.tar") as t:
        assert t.extractfile("d/y").read() == b"Y"
        assert t.extractfile("b-link").read() == b"B"
        assert "trusted.overlay.opaque" not in str(t.getmember("d").pax_headers)
    # deterministic
    args2 = argparse.Namespace(output=str(tmp_path / "fs2.tar"), image="wh:1")
    assert export.run(args2, lambda: st) == 0
    assert (tmp_path / "fs2.tar").read_bytes() == (tmp_path / "out" / "fs.tar").read_bytes()


def test_export_unknown_image(tmp_path):
    from pybuild.commands import export
    from pybuild.errors import PybuildError

    st = Store.open(tmp_path / "root")
    with pytest.raises(PybuildError, match="No such image"):
        export.run(argparse.Namespace(output=str(tmp_path / "x.tar"), image="nope:1"), lambda: st)
    assert not (tmp_path / "x.tar").exists()


# ---------------------------------------------------------------------------------------
# zstd
# ---------------------------------------------------------------------------------------


def test_zstd_layer_round_trip(tmp_path, content):
    pytest.importorskip("zstandard")
    src = make_tree(tmp_path / "src", {"big.bin": "z" * 300_000, "sub/small": "s"})
    z = write_layer(src, content, compression="zstd")
    g = write_layer(src, content, compression="gzip")
    assert z.media_type == MEDIA_TYPE_LAYER_ZSTD == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert z.diff_id == g.diff_id and z.digest != g.digest
    assert content.path(z.digest).read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert write_layer(src, content, compression="zstd") == z  # deterministic
    unpack_layer(content, z, tmp_path / "u1")
    assert (tmp_path / "u1" / "big.bin").read_text() == "z" * 300_000
    with open(content.path(z.digest), "rb") as f:  # unpack_tar_stream detects zstd by magic
        unpack_tar_stream(f, tmp_path / "u2")
    assert (tmp_path / "u2" / "sub" / "small").read_text() == "s"
    # a corrupt zstd blob is a LayerError, not a crash
    bad = content.put_bytes(content.path(z.digest).read_bytes()[:40])
    from pybuild.cache.layers import LayerBlob

    with pytest.raises(LayerError):
        unpack_layer(content, LayerBlob(bad.digest, z.diff_id, bad.size, z.media_type), tmp_path / "u3")


def test_zstd_image_saves_to_both_archive_formats(tmp_path, content):
    pytest.importorskip("zstandard")
    rec, layers = make_image(tmp_path, content, [FILES1], compression="zstd")
    save_docker_archive(content, [("z:1", rec.manifest.digest)], tmp_path / "d.tar")
    c2, s2 = fresh(tmp_path)
    load_any(tmp_path / "d.tar", c2, s2)
    img = load_image(c2, s2.resolve("z:1"))
    assert img.layers[0].diff_id == layers[0].diff_id and img.layers[0].media_type == MEDIA_TYPE_LAYER_GZIP
    if SKOPEO:
        save_oci_archive(content, [("z:1", rec.manifest.digest)], tmp_path / "o.tar")
        raw = json.loads(run(SKOPEO, "inspect", "--raw", f"oci-archive:{tmp_path / 'o.tar'}").stdout)
        assert raw["layers"][0]["mediaType"] == MEDIA_TYPE_LAYER_ZSTD
        run(SKOPEO, "copy", f"oci-archive:{tmp_path / 'o.tar'}", f"dir:{tmp_path / 'dir'}")  # digests check out
        # skopeo 1.9 cannot put zstd into a docker-archive itself; ours decompresses it
        info = json.loads(run(SKOPEO, "inspect", f"docker-archive:{tmp_path / 'd.tar'}").stdout)
        assert info["Layers"] == [layers[0].diff_id]
