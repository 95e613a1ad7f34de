"""Tests for pybuild.oci: references, images, the image store, archives, import."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pybuild.cache.content import BlobInfo, ContentStore
from pybuild.cache.layers import LayerBlob, write_layer
from pybuild.oci import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_CREATED,
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    ArchiveError,
    ImageNotFound,
    ImageStore,
    ImageStoreError,
    InvalidImage,
    InvalidReference,
    Reference,
    canonical_json,
    import_rootfs,
    load_image,
    load_oci_archive,
    new_config,
    parse_reference,
    save_oci_archive,
    write_image,
)

SKOPEO = shutil.which("skopeo")
UMOCI = shutil.which("umoci")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed")
needs_umoci = pytest.mark.skipif(UMOCI is None, reason="umoci not installed")

D = "sha256:" + "ab" * 32


# ---------------------------------------------------------------------------------------
# fixtures / helpers
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


def make_layer(tmp_path: Path, content: ContentStore, files: dict[str, str], name="src") -> LayerBlob:
    src = tmp_path / name
    src.mkdir()
    for rel, text in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return write_layer(src, content)


def make_image(tmp_path, content, files=None, cmd=None, name="src"):
    layer = make_layer(tmp_path, content, files or {"hello.txt": "hello world\n"}, name=name)
    cfg = new_config(None)
    if cmd:
        cfg["config"]["Cmd"] = cmd
    cfg["history"] = [{"created_by": "test"}]
    return write_image(content, cfg, [layer]), layer


def run(*argv, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{argv} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


# ---------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------

VALID = [
    ("hello", "hello", "latest", None),
    ("hello:1.0", "hello", "1.0", None),
    ("library/hello", "library/hello", "latest", None),
    ("docker.io/library/hello:3.19", "docker.io/library/hello", "3.19", None),
    ("localhost:5000/app", "localhost:5000/app", "latest", None),
    ("localhost:5000/app:v1", "localhost:5000/app", "v1", None),
    ("Registry.Example.com/team/app:V_1-x.y", "Registry.Example.com/team/app", "V_1-x.y", None),
    ("a__b/c-d--e/f.g_h:_tag", "a__b/c-d--e/f.g_h", "_tag", None),
    ("my-app", "my-app", "latest", None),
    ("x" * 255, "x" * 255, "latest", None),
    ("app:" + "t" * 128, "app", "t" * 128, None),
    ("app@" + D, "app", None, D),
    ("app:1@" + D, "app", "1", D),
    ("[::1]:5000/app:1", "[::1]:5000/app", "1", None),
]

INVALID = [
    "",
    "Hello",
    "hello:",
    "hello:-tag",
    "hello:.tag",
    "app:" + "t" * 129,
    "x" * 256,
    "-app",
    "app-",
    "a..b",
    "a/",
    "/a",
    "a//b",
    "app@sha256:abc",
    "app@sha256:" + "AB" * 32,
    "app@" + D + "x",
    "a b",
    " app",
    "app:tag:tag",
    "host:port/app",  # port must be numeric -> tag would contain '/'
    "foo/Bar",
    "a_.b",
]


@pytest.mark.parametrize("text,name,tag,digest", VALID)
def test_parse_reference_valid(text, name, tag, digest):
    ref = parse_reference(text)
    assert (ref.name, ref.tag, ref.digest) == (name, tag, digest)
    expected = text if (":" in text.rsplit("/", 1)[-1] or "@" in text) else f"{text}:latest"
    assert str(ref) == expected
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize("text", INVALID)
def test_parse_reference_invalid(text):
    with pytest.raises(InvalidReference) as ei:
        parse_reference(text)
    assert isinstance(ei.value, ValueError)
    assert repr(text) in str(ei.value)


def test_reference_messages_and_helpers():
    with pytest.raises(InvalidReference, match="must be lowercase"):
        parse_reference("Hello")
    with pytest.raises(InvalidReference, match="invalid tag"):
        parse_reference("hello:-x")
    ref = parse_reference("localhost:5000/team/app:1")
    assert ref.domain == "localhost:5000" and ref.path == "team/app" and ref.tagged == "localhost:5000/team/app:1"
    assert parse_reference("team/app").domain is None
    assert str(Reference("hello", "1.0")) == "hello:1.0"
    assert parse_reference(ref) is ref


# ---------------------------------------------------------------------------------------
# image
# ---------------------------------------------------------------------------------------


def test_canonical_json():
    assert canonical_json({"b": 1, "a": [1, {"d": "é", "c": None}]}) == '{"a":[1,{"c":null,"d":"é"}],"b":1}'.encode()


def test_new_config_defaults_and_base():
    cfg = new_config(None)
    assert cfg == {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }
    base = {"architecture": "arm64", "os": "linux", "config": {"Env": ["A=1"]}, "rootfs": {"type": "layers", "diff_ids": [D]}}
    cfg = new_config(base)
    assert cfg["architecture"] == "arm64" and cfg["config"]["Env"] == ["A=1"] and cfg["rootfs"]["diff_ids"] == [D]
    cfg["config"]["Env"].append("B=2")
    assert base["config"]["Env"] == ["A=1"]  # deep copy


def test_write_and_load_image_roundtrip(tmp_path, content):
    l1 = make_layer(tmp_path, content, {"a.txt": "a"}, name="l1")
    l2 = make_layer(tmp_path, content, {"b/c.txt": "c"}, name="l2")
    cfg = new_config(None)
    cfg["config"]["Cmd"] = ["/bin/sh"]
    rec = write_image(content, cfg, [l1, l2])
    assert cfg["rootfs"]["diff_ids"] == []  # input not mutated
    assert rec.manifest.size == content.size(rec.manifest.digest)

    raw = content.read_bytes(rec.manifest.digest)
    manifest = json.loads(raw)
    assert raw == canonical_json(manifest)
    assert manifest == {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": rec.config.digest, "size": rec.config.size},
        "layers": [
            {"mediaType": l.media_type, "digest": l.digest, "size": l.size} for l in (l1, l2)
        ],
    }
    img = load_image(content, rec.manifest.digest)
    assert img.manifest_digest == rec.manifest.digest
    assert img.id == rec.config.digest
    assert img.config["rootfs"] == {"type": "layers", "diff_ids": [l1.diff_id, l2.diff_id]}
    assert img.config["config"]["Cmd"] == ["/bin/sh"]
    assert img.layers == [l1, l2]
    # deterministic: same input -> same digests
    assert write_image(content, cfg, [l1, l2]) == rec


def test_load_image_errors(tmp_path, content):
    with pytest.raises(InvalidImage, match="not in the content store"):
        load_image(content, D)
    idx = content.put_bytes(canonical_json({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []}))
    with pytest.raises(InvalidImage, match="index"):
        load_image(content, idx.digest)
    rec, _ = make_image(tmp_path, content)
    m = json.loads(content.read_bytes(rec.manifest.digest))
    m["layers"].append(m["layers"][0])
    bad = content.put_bytes(canonical_json(m))
    with pytest.raises(InvalidImage, match="diff_ids"):
        load_image(content, bad.digest)


def test_write_image_refuses_missing_layer(content):
    ghost = LayerBlob(D, D, 10, "application/vnd.oci.image.layer.v1.tar+gzip")
    with pytest.raises(InvalidImage):
        write_image(content, new_config(None), [ghost])


# ---------------------------------------------------------------------------------------
# image store
# ---------------------------------------------------------------------------------------


def test_store_layout_files(root, store):
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["manifests"] == []
    ImageStore(root, store.content)  # reopening keeps things
    assert json.loads((root / "index.json").read_text()) == index


def test_store_tag_resolve_list_untag(tmp_path, root, content, store):
    rec, _ = make_image(tmp_path, content, name="one")
    rec2, _ = make_image(tmp_path, content, files={"other": "x"}, name="two")
    store.tag("hello:1.0", rec.manifest)
    store.tag(parse_reference("hello"), rec.manifest)
    store.tag("registry.local:5000/team/app:v2", rec2.manifest)

    index = json.loads((root / "index.json").read_text())
    names = sorted(e["annotations"][ANNOTATION_REF_NAME] for e in index["manifests"])
    assert names == ["hello:1.0", "hello:latest", "registry.local:5000/team/app:v2"]
    for e in index["manifests"]:
        assert e["mediaType"] == MEDIA_TYPE_MANIFEST
        assert e["annotations"][ANNOTATION_CREATED].endswith("Z")
        assert e["size"] == content.size(e["digest"])

    assert store.resolve("hello:1.0") == rec.manifest.digest
    assert store.resolve("hello") == rec.manifest.digest
    assert store.resolve(parse_reference("registry.local:5000/team/app:v2")) == rec2.manifest.digest
    # digests, digest prefixes, image id prefixes
    assert store.resolve(rec2.manifest.digest) == rec2.manifest.digest
    assert store.resolve(rec2.manifest.digest[7:19]) == rec2.manifest.digest
    assert store.resolve(rec2.manifest.digest[:19]) == rec2.manifest.digest
    assert store.resolve(rec2.config.digest[7:19]) == rec2.manifest.digest
    assert store.resolve("hello@" + rec.manifest.digest) == rec.manifest.digest
    assert store.image("hello:1.0").manifest_digest == rec.manifest.digest

    assert store.list() == [
        (parse_reference("hello:1.0"), rec.manifest.digest),
        (parse_reference("hello:latest"), rec.manifest.digest),
        (parse_reference("registry.local:5000/team/app:v2"), rec2.manifest.digest),
    ]

    # re-tagging replaces the entry
    store.tag("hello:1.0", rec2.manifest)
    assert store.resolve("hello:1.0") == rec2.manifest.digest
    assert len(store.list()) == 3

    assert store.untag("hello:1.0") == rec2.manifest.digest
    with pytest.raises(ImageNotFound) as ei:
        store.resolve("hello:1.0")
    assert str(ei.value) == f'image "hello:1.0" not found in {root}'
    assert isinstance(ei.value, KeyError)
    with pytest.raises(ImageNotFound):
        store.untag("hello:1.0")
    with pytest.raises(ImageNotFound):
        store.resolve("nothere")
    assert [str(r) for r, _ in store.list()] == ["hello:latest", "registry.local:5000/team/app:v2"]


def test_store_ambiguous_prefix(tmp_path, content, store):
    # Images that share their layer and differ only in a config label are cheap to make; make them
    # until two manifest digests share a 4-hex-digit prefix (the shortest id prefix accepted).
    rec, layer = make_image(tmp_path, content)
    base = json.loads(content.read_bytes(rec.config.digest))
    seen: dict[str, str] = {}
    for i in range(5000):
        cfg = dict(base, config={"Labels": {"n": str(i)}})
        r = write_image(content, cfg, [layer])
        prefix = r.manifest.digest[7:11]
        if prefix in seen:
            store.tag("img:first", seen[prefix])
            store.tag("img:second", r.manifest)
            break
        seen[prefix] = r.manifest
    else:
        pytest.fail("no shared 4-digit prefix in 5000 images")
    with pytest.raises(ImageNotFound) as exc:
        store.resolve(prefix)
    assert exc.value.args[0].startswith(f'"{prefix}" is ambiguous')
    # shorter than 4 hex digits is a name, not an id prefix
    with pytest.raises(ImageNotFound) as exc:
        store.resolve(prefix[:3])
    assert exc.value.args[0].startswith(f'image "{prefix[:3]}:latest" not found')


def test_store_refuses_missing_blobs(tmp_path, content, store):
    with pytest.raises(ImageStoreError, match=r"^cannot tag ghost:1: manifest blob sha256:\w+ is missing"):
        store.tag("ghost:1", BlobInfo(D, 100))
    rec, layer = make_image(tmp_path, content)
    os.unlink(content.path(layer.digest))
    with pytest.raises(ImageStoreError, match=r"^cannot tag ghost:1: blob sha256:\w+ of sha256:\w+ is missing"):
        store.tag("ghost:1", rec.manifest)
    with pytest.raises(InvalidReference):
        store.tag("app@" + rec.manifest.digest, rec.manifest)
    assert store.list() == []


def _tag_many(root: str, manifest_digest: str, size: int, prefix: str, n: int, barrier) -> None:
    content = ContentStore(Path(root))
    store = ImageStore(Path(root), content)
    barrier.wait()
    for i in range(n):
        store.tag(f"{prefix}:{i}", BlobInfo(manifest_digest, size))


def test_store_concurrent_tagging_loses_nothing(tmp_path, root, content, store):
    rec, _ = make_image(tmp_path, content)
    ctx = multiprocessing.get_context("fork")
    n, procs = 25, 4
    barrier = ctx.Barrier(procs)
    ps = [
        ctx.Process(target=_tag_many, args=(str(root), rec.manifest.digest, rec.manifest.size, f"p{k}", n, barrier))
        for k in range(procs)
    ]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    names = {str(r) for r, _ in store.list()}
    assert names == {f"p{k}:{i}" for k in range(procs) for i in range(n)}
    assert not [p for p in root.iterdir() if p.name.startswith(".index.json")]  # no temp files left


@pytest.mark.interop
@needs_skopeo
def test_skopeo_inspects_store(tmp_path, root, content, store):
    rec, layer = make_image(tmp_path, content, cmd=["/hello"])
    store.tag("hello:1.0", rec.manifest)
    out = json.loads(run(SKOPEO, "inspect", f"oci:{root}:hello:1.0").stdout)
    assert out["Digest"] == rec.manifest.digest
    assert out["Layers"] == [layer.digest]
    assert out["Architecture"] == "amd64" and out["Os"] == "linux"
    cfg = json.loads(run(SKOPEO, "inspect", "--config", f"oci:{root}:hello:1.0").stdout)
    assert cfg["config"]["Cmd"] == ["/hello"]


@pytest.mark.interop
@needs_umoci
def test_umoci_unpacks_from_store(tmp_path, root, content, store):
    rec, _ = make_image(tmp_path, content, files={"etc/greeting": "hi\n"})
    store.tag("hello:1.0", rec.manifest)
    run(UMOCI, "unpack", "--image", f"{root}:hello:1.0", str(tmp_path / "bundle"))
    assert (tmp_path / "bundle" / "rootfs" / "etc" / "greeting").read_text() == "hi\n"


# ---------------------------------------------------------------------------------------
# archives
# ---------------------------------------------------------------------------------------


def _saved(tmp_path, content, store, refs=("hello:1.0",), files=None):
    rec, layer = make_image(tmp_path, content, files=files, cmd=["/bin/true"])
    for r in refs:
        store.tag(r, rec.manifest)
    out = tmp_path / "out" / "hello.tar"
    save_oci_archive(content, [(parse_reference(r), rec.manifest.digest) for r in refs], out)
    return out, rec, layer


def test_save_oci_archive_layout(tmp_path, content, store):
    out, rec, layer = _saved(tmp_path, content, store, refs=("hello:1.0", "hello:latest"))
    with tarfile.open(out) as tar:
        names = tar.getnames()
        members = tar.getmembers()
        index = json.load(tar.extractfile("index.json"))
        assert json.load(tar.extractfile("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        for m in members:
            assert m.mtime == 0 and m.uid == 0 and m.gid == 0
            if m.isfile() and m.name.startswith("blobs/sha256/"):
                data = tar.extractfile(m).read()
                assert "sha256:" + hashlib.sha256(data).hexdigest() == "sha256:" + m.name.rsplit("/", 1)[1]
    blobs = sorted(f"blobs/sha256/{d[7:]}" for d in (rec.manifest.digest, rec.config.digest, layer.digest))
    assert names == ["oci-layout", "index.json", "blobs", "blobs/sha256", *blobs]
    assert [e["annotations"] for e in index["manifests"]] == [
        {ANNOTATION_REF_NAME: "hello:1.0", ANNOTATION_CONTAINERD_NAME: "hello:1.0"},
        {ANNOTATION_REF_NAME: "hello:latest", ANNOTATION_CONTAINERD_NAME: "hello:latest"},
    ]
    assert all(e["digest"] == rec.manifest.digest for e in index["manifests"])
    # deterministic
    first = out.read_bytes()
    save_oci_archive(content, [(parse_reference("hello:latest"), rec.manifest.digest),
                               ("hello:1.0", rec.manifest.digest)], out)
    assert out.read_bytes() == first
    assert [p.name for p in out.parent.iterdir()] == ["hello.tar"]


def test_save_oci_archive_leaves_nothing_on_error(tmp_path, content, store):
    rec, layer = make_image(tmp_path, content)
    out = tmp_path / "out" / "x.tar"
    out.parent.mkdir()
    os.chmod(content.path(layer.digest), 0o644)
    with open(content.path(layer.digest), "r+b") as f:  # corrupt the layer blob, same size
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ArchiveError, match="corrupt"):
        save_oci_archive(content, [("x:1", rec.manifest.digest)], out)
    assert list(out.parent.iterdir()) == []
    os.unlink(content.path(layer.digest))
    with pytest.raises(ArchiveError, match="not in the content store"):
        save_oci_archive(content, [("x:1", rec.manifest.digest)], out)
    assert list(out.parent.iterdir()) == []


@pytest.mark.interop
@needs_skopeo
def test_skopeo_inspects_saved_archive(tmp_path, content, store):
    out, rec, layer = _saved(tmp_path, content, store)
    for target in (f"oci-archive:{out}", f"oci-archive:{out}:hello:1.0"):
        info = json.loads(run(SKOPEO, "inspect", target).stdout)
        assert info["Digest"] == rec.manifest.digest
        assert info["Layers"] == [layer.digest]


@pytest.mark.interop
@needs_umoci
def test_umoci_unpacks_saved_archive(tmp_path, content, store):
    out, rec, _ = _saved(tmp_path, content, store, files={"hello.txt": "hello from pybuild\n"})
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(out) as tar:
        tar.extractall(layout, filter="data")
    bundle = tmp_path / "bundle"
    run(UMOCI, "unpack", "--image", f"{layout}:hello:1.0", str(bundle))
    assert (bundle / "rootfs" / "hello.txt").read_text() == "hello from pybuild\n"
    assert json.loads((bundle / "config.json").read_text())["process"]["args"] == ["/bin/true"]


def test_load_oci_archive_roundtrip(tmp_path, content, store):
    out, rec, layer = _saved(tmp_path, content, store, refs=("hello:1.0", "reg.io/x/y:2"))
    other_root = tmp_path / "other"
    c2 = ContentStore(other_root)
    s2 = ImageStore(other_root, c2)
    res = load_oci_archive(out, c2, s2)
    assert sorted((str(r), d) for r, d in res) == [("hello:1.0", rec.manifest.digest), ("reg.io/x/y:2", rec.manifest.digest)]
    assert s2.image("reg.io/x/y:2").layers == [layer]
    assert c2.read_bytes(layer.digest) == content.read_bytes(layer.digest)
    # as a gzip stream, retagged
    gz = io.BytesIO(gzip.compress(out.read_bytes()))
    c3 = ContentStore(tmp_path / "third")
    s3 = ImageStore(tmp_path / "third", c3)
    # two refs of one image may be retagged as one ref
    assert load_oci_archive(gz, c3, s3, ref="renamed:9") == [(parse_reference("renamed:9"), rec.manifest.digest)]
    assert s3.resolve("renamed:9") == rec.manifest.digest


def test_load_oci_archive_ref_needs_single_image(tmp_path, content, store):
    rec1, _ = make_image(tmp_path, content, name="a")
    rec2, _ = make_image(tmp_path, content, files={"z": "z"}, name="b")
    out = tmp_path / "two.tar"
    save_oci_archive(content, [("a:1", rec1.manifest.digest), ("b:1", rec2.manifest.digest)], out)
    c2 = ContentStore(tmp_path / "other")
    s2 = ImageStore(tmp_path / "other", c2)
    with pytest.raises(ArchiveError, match="holds 2 images"):
        load_oci_archive(out, c2, s2, ref="one:1")
    assert s2.list() == []
    assert sorted(str(r) for r, _ in load_oci_archive(out, c2, s2)) == ["a:1", "b:1"]


def test_load_oci_archive_rejects_bad_blob(tmp_path, content, store):
    out, rec, layer = _saved(tmp_path, content, store)
    raw = bytearray(out.read_bytes())
    # flip a byte inside the config blob's data (find the config JSON in the tar)
    cfg = content.read_bytes(rec.config.digest)
    pos = bytes(raw).index(cfg)
    raw[pos + 2] ^= 0x01
    c2 = ContentStore(tmp_path / "other")
    s2 = ImageStore(tmp_path / "other", c2)
    with pytest.raises(Exception, match="(?i)mismatch"):
        load_oci_archive(io.BytesIO(bytes(raw)), c2, s2)
    assert not c2.exists(rec.config.digest)
    assert s2.list() == []
    with pytest.raises(ArchiveError, match="oci-layout"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.addfile(tarfile.TarInfo("index.json"), io.BytesIO(b""))
        buf.seek(0)
        load_oci_archive(buf, c2, s2)


@pytest.mark.interop
@needs_skopeo
def test_load_skopeo_written_archive(tmp_path, root, content, store):
    rec, layer = make_image(tmp_path, content)
    store.tag("hello:1.0", rec.manifest)
    arch = tmp_path / "sk.tar"
    run(SKOPEO, "copy", f"oci:{root}:hello:1.0", f"oci-archive:{arch}:hello:1.0")
    c2 = ContentStore(tmp_path / "other")
    s2 = ImageStore(tmp_path / "other", c2)
    res = load_oci_archive(arch, c2, s2)
    assert [(str(r), d) for r, d in res] == [("hello:1.0", rec.manifest.digest)]  # skopeo writes ref.name verbatim
    assert s2.image(res[0][1]).layers[0].diff_id == layer.diff_id


# ---------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------


def _rootfs(tmp_path: Path) -> Path:
    src = tmp_path / "rootfs"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "bin" / "hello", 0o755)
    (src / "etc").mkdir()
    (src / "etc" / "os-release").write_text("ID=pybuild\n")
    return src


def _layer_names(content, img) -> set[str]:
    with content.open(img.layers[0].digest) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        return {m.name.lstrip("./").rstrip("/") for m in tar}


def test_import_rootfs_from_dir(tmp_path, content, store):
    src = _rootfs(tmp_path)
    digest = import_rootfs(src, "imported:1", content, store,
                           changes={"Cmd": ["/bin/hello"], "Env": {"A": "1"}, "WorkingDir": "/etc"},
                           source_date_epoch=1700000000)
    assert store.resolve("imported:1") == digest
    img = store.image("imported:1")
    assert len(img.layers) == 1
    assert img.config["config"] == {"Cmd": ["/bin/hello"], "Env": ["A=1"], "WorkingDir": "/etc"}
    assert img.config["history"][0]["created_by"] == "pybuild import"
    assert img.config["created"] == "2023-11-14T22:13:20Z"
    assert {"bin/hello", "etc/os-release"} <= _layer_names(content, img)
    # deterministic
    assert import_rootfs(src, "imported:2", content, store, changes={"Cmd": ["/bin/hello"], "Env": {"A": "1"},
                         "WorkingDir": "/etc"}, source_date_epoch=1700000000) == digest


def test_import_rootfs_from_tar_gz_and_stream(tmp_path, root, content, store):
    src = _rootfs(tmp_path)
    tgz = tmp_path / "rootfs.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src, arcname=".")
    d1 = import_rootfs(tgz, "fromtgz", content, store, changes={"Entrypoint": "echo hi"}, source_date_epoch=0)
    img = store.image("fromtgz:latest")
    assert img.manifest_digest == d1
    assert img.config["config"]["Entrypoint"] == ["/bin/sh", "-c", "echo hi"]
    assert {"bin/hello", "etc/os-release"} <= _layer_names(content, img)
    # the same rootfs from a plain tar stream gives the same layer
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        tar.add(src, arcname=".")
    plain.seek(0)
    d2 = import_rootfs(plain, "fromstream:1", content, store, changes={"Entrypoint": "echo hi"}, source_date_epoch=0)
    assert store.image(d2).layers == img.layers
    assert d2 != d1  # only the history comment ("imported from ...") differs
    d3 = import_rootfs(io.BytesIO(plain.getvalue()), "fromstream:2", content, store,
                       changes={"Entrypoint": "echo hi"}, source_date_epoch=0, message=f"imported from {tgz}")
    assert d3 == d1
    assert list((root / "tmp").iterdir()) == []  # temp dirs removed
    with pytest.raises(ValueError, match="unsupported import change"):
        import_rootfs(tgz, "bad:1", content, store, changes={"Shell": ["/bin/bash"]})


@pytest.mark.interop
@needs_umoci
def test_umoci_unpacks_imported_image(tmp_path, root, content, store):
    import_rootfs(_rootfs(tmp_path), "imp:1", content, store)
    run(UMOCI, "unpack", "--image", f"{root}:imp:1", str(tmp_path / "bundle"))
    hello = tmp_path / "bundle" / "rootfs" / "bin" / "hello"
    assert hello.read_text().startswith("#!/bin/sh") and os.access(hello, os.X_OK)


def test_import_rootfs_rejects_escaping_tar(tmp_path, root, content, store):
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        data = b"pwned"
        ti = tarfile.TarInfo("../../escape.txt")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
    evil.seek(0)
    with pytest.raises(Exception):
        import_rootfs(evil, "evil:1", content, store)
    assert not (tmp_path / "escape.txt").exists() and not (root / "escape.txt").exists()
    assert store.list() == []
    assert list((root / "tmp").iterdir()) == []
