"""--cache-to / --cache-from (an OCI layout holding the cache records and layers) and
--no-cache-filter."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from pybuild.builder.mounts import CacheMounts
from pybuild.cache import (
    MEDIA_TYPE_LAYER_GZIP,
    CacheIndex,
    CacheRecord,
    ContentStore,
    LayerBlob,
    transfer,
)
from pybuild.cache.layers import write_layer
from pybuild.cache.transfer import (
    ARTIFACT_TYPE,
    MEDIA_TYPE_CACHE_CONFIG,
    CacheImport,
    CacheSources,
    CacheTransferError,
    cache_manifest,
    export_cache,
    parse_cache_from,
    parse_cache_to,
)

# -- flags ------------------------------------------------------------------------------------------


def test_parse_flags():
    assert parse_cache_to("type=local,dest=/c") == transfer.CacheExportSpec(Path("/c"), "min")
    assert parse_cache_to("type=local,dest=c,mode=max").mode == "max"
    assert parse_cache_from("type=local,src=/c").src == Path("/c")
    reg = parse_cache_to("type=registry,ref=127.0.0.1:5000/app:buildcache,mode=max,mounts=true")
    assert (reg.ref, reg.dest, reg.mode, reg.mounts) == ("127.0.0.1:5000/app:buildcache", None, "max", True)
    assert reg.target == "registry:127.0.0.1:5000/app:buildcache"
    assert parse_cache_to("type=local,dest=/c,mounts=false").mounts is False
    assert parse_cache_from("type=registry,ref=r.example/a:c") == transfer.CacheImportSpec(ref="r.example/a:c")
    for bad, message in [("type=s3,bucket=x", "type must be local or registry"), ("type=local", "needs dest="),
                         ("type=registry", "type=registry needs ref="),
                         ("type=registry,ref=x,dest=d", "unknown key 'dest' for type=registry"),
                         ("type=registry,ref=Bad//Ref", "ref=Bad//Ref"),
                         ("type=local,dest=d,mode=all", "mode must be min or max"),
                         ("type=local,dest=d,mounts=yes", "mounts must be true or false"),
                         ("type=local,dest=d,compression=zstd", "unknown key 'compression'"),
                         ("dest=d", "type must be local or registry"), ("type=local,dest", "key=value")]:
        with pytest.raises(ValueError, match=message):
            parse_cache_to(bad)
    with pytest.raises(ValueError, match="needs src="):
        parse_cache_from("type=local")
    with pytest.raises(ValueError, match="unknown key 'dest'"):
        parse_cache_from("type=local,dest=x")
    with pytest.raises(ValueError, match="unknown key 'mode' for type=registry"):
        parse_cache_from("type=registry,ref=r.example/a:c,mode=max")


# -- the layout -------------------------------------------------------------------------------------

def _records(content: ContentStore, n: int = 3) -> list[CacheRecord]:
    out = []
    for i in range(n):
        blob = content.put_bytes(f"layer {i}".encode())
        out.append(CacheRecord(f"sha256:{i:064x}", LayerBlob(blob.digest, f"sha256:{i + 100:064x}", blob.size,
                                                             MEDIA_TYPE_LAYER_GZIP), "2024-01-01T00:00:00Z",
                               1.5 + i, f"[{i + 2}/5] RUN step {i}"))
    out.append(CacheRecord("sha256:" + "e" * 64, None, "2024-01-01T00:00:00Z", 0.0, "[5/5] WORKDIR /"))
    return out


def _blob_names(dest: Path) -> set[str]:
    return {p.name for p in (dest / "blobs" / "sha256").iterdir()}


def test_manifest_is_an_oci_artifact_and_deterministic(tmp_path):
    content = ContentStore(tmp_path / "store")
    records = _records(content)
    config, manifest = cache_manifest(records)
    assert cache_manifest(reversed(records)) == (config, manifest)
    m = json.loads(manifest)
    assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json" and m["artifactType"] == ARTIFACT_TYPE
    assert m["config"]["mediaType"] == MEDIA_TYPE_CACHE_CONFIG
    assert [d["digest"] for d in m["layers"]] == sorted(r.layer.digest for r in records if r.layer)
    cfg = json.loads(config)
    assert [r["key"] for r in cfg["records"]] == sorted(r.key for r in records)
    assert cfg["records"][0]["created_by"] == "[2/5] RUN step 0" and cfg["records"][0]["duration_s"] == 1.5


def test_export_then_import_roundtrip(tmp_path):
    content = ContentStore(tmp_path / "a")
    records = _records(content)
    dest = tmp_path / "cache"
    result = export_cache(content, records, dest)
    assert result.records == 4 and result.layers == 3
    assert json.loads((dest / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["digest"] == result.manifest_digest
    assert len(_blob_names(dest)) == 5  # 3 layers, config, manifest
    assert not [p for p in dest.rglob("*") if p.name.startswith(".tmp")]

    imp = CacheImport.load(dest)
    assert imp.records == {r.key: r for r in records}

    # A new store: an imported hit copies (and verifies) the blob, then the local index has it.
    b_content = ContentStore(tmp_path / "b")
    b_index = CacheIndex(tmp_path / "b", b_content)
    sources = CacheSources(b_index, [imp])
    hit, origin = sources.get(records[1].key)
    assert hit == records[1] and origin == f"local:{dest}"
    assert b_content.read_bytes(records[1].layer.digest) == b"layer 1"
    assert not b_content.exists(records[0].layer.digest)  # copied only when needed
    assert sources.get(records[1].key) == (records[1], None)  # now a local hit
    assert sources.get("sha256:" + "f" * 64) is None


def test_reexport_updates_in_place_and_drops_unused_blobs(tmp_path):
    content = ContentStore(tmp_path / "a")
    records = _records(content)
    dest = tmp_path / "cache"
    export_cache(content, records, dest)
    first = _blob_names(dest)
    again = export_cache(content, records, dest)
    assert again.bytes_written == 0 and _blob_names(dest) == first  # idempotent
    export_cache(content, records[:1], dest)
    m = json.loads((dest / "blobs" / "sha256" / json.loads((dest / "index.json").read_text())
                    ["manifests"][0]["digest"].split(":")[1]).read_text())
    assert _blob_names(dest) == {m["config"]["digest"][7:], records[0].layer.digest[7:],
                                 json.loads((dest / "index.json").read_text())["manifests"][0]["digest"][7:]}
    assert set(CacheImport.load(dest).records) == {records[0].key}


def test_export_refuses_a_directory_that_is_not_a_cache(tmp_path):
    content = ContentStore(tmp_path / "a")
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(CacheTransferError, match="not empty and is not a pybuild cache"):
        export_cache(content, _records(content), other)
    image_layout = tmp_path / "image"
    image_layout.mkdir()
    (image_layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "0" * 64, "size": 1}]}))
    with pytest.raises(CacheTransferError, match="not a pybuild cache; refusing"):
        export_cache(content, _records(content), image_layout)
    assert (other / "precious.txt").read_text() == "keep me" and sorted(os.listdir(image_layout)) == ["index.json"]


def test_broken_sources(tmp_path):
    content = ContentStore(tmp_path / "a")
    records = _records(content)
    dest = tmp_path / "cache"
    export_cache(content, records, dest)
    with pytest.raises(CacheTransferError, match="no such directory"):
        CacheImport.load(tmp_path / "missing")
    warnings = []
    sources = CacheSources.open(CacheIndex(tmp_path / "b"), [transfer.CacheImportSpec(tmp_path / "missing")],
                                warn=warnings.append)
    assert sources.imports == [] and "ignoring this cache source" in warnings[0]

    # A corrupt layer blob: the step misses with a warning, nothing enters the store.
    layer_path = dest / "blobs" / "sha256" / records[2].layer.digest[7:]
    os.chmod(layer_path, 0o644)
    layer_path.write_bytes(b"tampered")
    b_content = ContentStore(tmp_path / "b")
    warnings.clear()
    sources = CacheSources(CacheIndex(tmp_path / "b", b_content), [CacheImport.load(dest)], warn=warnings.append)
    assert sources.get(records[2].key) is None
    assert "is corrupt" in warnings[0] and not b_content.exists(records[2].layer.digest)
    assert CacheIndex(tmp_path / "b").read(records[2].key) is None

    # A corrupt manifest: the whole source is refused.
    manifest_digest = json.loads((dest / "index.json").read_text())["manifests"][0]["digest"]
    path = dest / "blobs" / "sha256" / manifest_digest[7:]
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes().replace(b"schemaVersion", b"schemaversion"))
    with pytest.raises(CacheTransferError, match="manifest .* is corrupt"):
        CacheImport.load(dest)


def _mount_layer(content: ContentStore, src: Path, cache_id: str, files: dict[str, str]) -> transfer.CacheMountLayer:
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    return transfer.CacheMountLayer(cache_id, write_layer(src, content), 0o750, 1000, 1000)


def test_cache_mounts_in_the_layout_and_restored(tmp_path):
    content = ContentStore(tmp_path / "a")
    records = _records(content, 1)
    pip = _mount_layer(content, tmp_path / "pip-src", "pip", {"wheel.txt": "w\n"})
    npm = _mount_layer(content, tmp_path / "npm-src", "npm", {"pkg.txt": "p\n"})
    assert cache_manifest(records, []) == cache_manifest(records)  # no mounts: the digests of before
    config, manifest = cache_manifest(records, [pip, npm])
    assert cache_manifest(records, [npm, pip]) == (config, manifest)
    m = json.loads(manifest)
    assert [d.get("annotations") for d in m["layers"]] == [None, {transfer.MOUNT_ID_ANNOTATION: "npm"},
                                                           {transfer.MOUNT_ID_ANNOTATION: "pip"}]
    assert [(e["id"], e["mode"], e["uid"]) for e in json.loads(config)["mounts"]] == [("npm", 0o750, 1000),
                                                                                      ("pip", 0o750, 1000)]
    dest = tmp_path / "cache"
    assert export_cache(content, records, dest, [pip, npm]).layers == 3
    imp = CacheImport.load(dest)
    assert imp.mounts == {"pip": pip, "npm": npm} and set(imp.records) == {r.key for r in records}

    # Store b has an npm mount already: only pip is created; npm is left as it is.
    b = tmp_path / "b"
    mount_dirs = CacheMounts(b)
    assert mount_dirs.restore("npm", lambda d: (d / "mine.txt").write_text("local\n"), mode=0o755, uid=0, gid=0)
    warnings: list[str] = []
    sources = CacheSources(CacheIndex(b, ContentStore(b)), [imp], warn=warnings.append)
    assert sources.restore_mounts(mount_dirs) == [("pip", f"local:{dest}")] and warnings == []
    with mount_dirs.reading("pip") as data:
        assert (data / "wheel.txt").read_text() == "w\n"
        st = data.stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o750, 1000, 1000)
    with mount_dirs.reading("npm") as data:
        assert os.listdir(data) == ["mine.txt"]
    with mount_dirs.reading("never-made") as data:
        assert data is None
    assert sources.restore_mounts(mount_dirs) == []  # idempotent
    assert [m.id for m in transfer.snapshot_mounts(mount_dirs, ["pip", "never-made"], ContentStore(b))] == ["pip"]
    assert transfer.snapshot_mounts(mount_dirs, ["pip"], ContentStore(b))[0].layer == pip.layer  # same bytes

    # A corrupt mount layer: a warning, and no half-made mount directory.
    c = tmp_path / "c"
    blob = dest / "blobs" / "sha256" / pip.layer.digest[7:]
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes()[:-8] + b"garbage!")
    sources = CacheSources(CacheIndex(c, ContentStore(c)), [CacheImport.load(dest)], warn=warnings.append)
    assert sources.restore_mounts(CacheMounts(c)) == [("npm", f"local:{dest}")]
    assert len(warnings) == 1 and "cache mount 'pip' not restored" in warnings[0] and "corrupt" in warnings[0]
    with CacheMounts(c).reading("pip") as data:
        assert data is None


def test_malformed_cache_mount_entry(tmp_path):
    content = ContentStore(tmp_path / "a")
    pip = _mount_layer(content, tmp_path / "pip-src", "pip", {"w": "w"})
    config, manifest = cache_manifest([], [pip])
    bad = json.loads(config)
    bad["mounts"][0]["id"] = "other"
    with pytest.raises(CacheTransferError, match="where: malformed cache mount .* not the manifest's layer"):
        transfer.read_cache_config(json.loads(manifest), json.dumps(bad).encode(), "where")


# -- end to end -------------------------------------------------------------------------------------

DOCKERFILE = """\
FROM busybox:latest AS tools
RUN head -c 32 /dev/urandom | od -x > /tool.bin

FROM busybox:latest
WORKDIR /app
RUN head -c 32 /dev/urandom | od -x > /app/random.txt
COPY app.txt ./
RUN head -c 32 /dev/urandom | od -x > /app/after-copy.txt
COPY --from=tools /tool.bin /app/
"""


def _cli_with_epoch(cli):
    """The same CLI with SOURCE_DATE_EPOCH, so equal layers give equal manifest digests."""
    env = cli.env

    def with_epoch():
        e = env()
        e["SOURCE_DATE_EPOCH"] = "1700000000"
        return e

    cli.env = with_epoch
    return cli


def _fresh_store(cli, busybox_store, tmp_path, name):
    from conftest import PybuildCLI

    root = tmp_path / name
    shutil.copytree(busybox_store, root, symlinks=True)
    return _cli_with_epoch(PybuildCLI(root))


def _steps(output: str) -> dict[str, str]:
    """'[2/5] RUN ...' -> 'CACHED' | 'DONE' from plain progress."""
    labels, results = {}, {}
    for line in output.splitlines():
        m = re.match(r"#(\d+) (\[.*)", line)
        if m:
            labels[m.group(1)] = m.group(2)
        m = re.match(r"#(\d+) (CACHED|DONE)", line)
        if m and m.group(1) in labels:
            results[labels[m.group(1)]] = m.group(2)
    return {k: v for k, v in results.items() if " FROM " not in k}


def _export_config(dest: Path) -> dict:
    index = json.loads((dest / "index.json").read_text())
    manifest = json.loads((dest / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    return json.loads((dest / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_text())


def test_cache_export_import_between_stores(cli, busybox_store, tmp_path):
    a = _cli_with_epoch(cli)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "app.txt").write_text("version 1\n")
    dest = tmp_path / "exported"
    meta_a = tmp_path / "a.json"
    r = a("build", "--progress", "plain", "-t", "app:1", "--metadata-file", str(meta_a),
          "--cache-to", f"type=local,dest={dest},mode=max", str(ctx), check=True)
    assert "CACHED" not in r.stderr.replace("FROM", "")
    assert f"to local:{dest} (mode=max)" in r.stderr
    records = _export_config(dest)["records"]
    assert any("/tool.bin" in rec["created_by"] for rec in records)  # mode=max: the tools stage too

    b = _fresh_store(cli, busybox_store, tmp_path, "store-b")
    meta_b = tmp_path / "b.json"
    r = b("build", "--progress", "plain", "-t", "app:1", "--metadata-file", str(meta_b),
          "--cache-from", f"type=local,src={dest}", str(ctx), check=True)
    steps = _steps(r.stderr)
    assert len(steps) == 6 and set(steps.values()) == {"CACHED"}, steps
    assert f"cache imported from local:{dest}" in r.stderr
    digest = lambda p: json.loads(p.read_text())["containerimage.digest"]
    assert digest(meta_b) == digest(meta_a)  # random RUN output: equal only if nothing ran

    # A changed file misses from its COPY on, in another new store.
    (ctx / "app.txt").write_text("version 2\n")
    c = _fresh_store(cli, busybox_store, tmp_path, "store-c")
    r = c("build", "--progress", "plain", "-t", "app:2", "--cache-from", f"type=local,src={dest}", str(ctx),
          check=True)
    steps = _steps(r.stderr)
    order = list(steps)
    copy_at = next(i for i, label in enumerate(order) if "COPY app.txt" in label)
    final_stage = [label for label in order if "/tool.bin" not in label and "tools" not in label]
    assert all(steps[label] == "CACHED" for label in final_stage[:final_stage.index(order[copy_at])]), steps
    assert all(steps[label] == "DONE" for label in final_stage[final_stage.index(order[copy_at]):]), steps
    assert steps[next(label for label in order if "[tools" in label)] == "CACHED"


def test_mode_min_exports_only_the_final_image_steps(cli, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "app.txt").write_text("v\n")
    dest = tmp_path / "min"
    cli("build", "--progress", "plain", "--cache-to", f"type=local,dest={dest}", str(ctx), check=True)
    created_by = [rec["created_by"] for rec in _export_config(dest)["records"]]
    assert len(created_by) == 5 and not any("tool.bin >" in c for c in created_by)
    assert any("COPY --from=tools" in c for c in created_by)


def test_no_cache_filter(cli, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "app.txt").write_text("v\n")
    cli("build", "--progress", "plain", str(ctx), check=True)
    r = cli("build", "--progress", "plain", "--no-cache-filter", "TOOLS", str(ctx), check=True)
    steps = _steps(r.stderr)
    assert [v for k, v in steps.items() if k.startswith("[tools")] == ["DONE"]
    # The final stage hits, except the COPY of the tools stage's output, whose content did change.
    assert {k.split("] ", 1)[1]: v for k, v in steps.items() if not k.startswith("[tools")} == {
        "WORKDIR /app": "CACHED", "RUN head -c 32 /dev/urandom | od -x > /app/random.txt": "CACHED",
        "COPY app.txt ./": "CACHED", "RUN head -c 32 /dev/urandom | od -x > /app/after-copy.txt": "CACHED",
        "COPY --from=tools /tool.bin /app/": "DONE"}
    assert "cache miss: --no-cache-filter tools" in r.stderr
    r = cli("build", "--no-cache-filter", "tools,nope", str(ctx))
    assert r.code == 2 and "--no-cache-filter nope: no stage of that name" in r.stderr


def test_cache_flag_usage_errors(cli, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN true\n")
    for flag, value, message in [("--cache-to", "type=gha", "type must be local or registry"),
                                 ("--cache-from", "type=local", "needs src=")]:
        r = cli("build", flag, value, str(ctx))
        assert r.code == 2 and message in r.stderr, r.output
    (tmp_path / "file").write_text("x")
    r = cli("build", "--cache-to", f"type=local,dest={tmp_path / 'file'}", "-t", "x:1", str(ctx))
    assert r.code == 1 and "exists and is not a directory" in r.stderr
    assert "x:1" not in cli("images").stdout  # a failed export tags nothing
