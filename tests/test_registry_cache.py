"""The build cache in a registry (registry/cache.py): the cache artifact of cache/transfer.py
pushed to a real docker-registry and read back on an empty store, layers fetched on a hit;
`pybuild build --cache-to/--cache-from type=registry,...` end to end, and cache mounts
(`mounts=true`) carried to a new store."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
import test_cache_transfer as local_cache  # its Dockerfile and helpers (a module: pytest does not re-collect it)
from pybuild.cache.transfer import (
    ARTIFACT_TYPE,
    CacheSources,
    CacheTransferError,
    cache_manifest,
)
from pybuild.registry.cache import RegistryCacheImport, export_cache_to_registry
from registry_server import have_registry, htpasswd_line, make_certs, start_registry

from pybuild.store import Store

pytestmark = [pytest.mark.registry,
              pytest.mark.skipif(not have_registry(), reason="docker-registry not installed (.ci/run installs it)")]


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PYBUILD_CONFIG", str(tmp_path / "registries.toml"))
    (tmp_path / "registries.toml").write_text("")
    reg = start_registry(tmp_path / "registry")
    yield reg
    reg.stop()


def test_cache_round_trip_through_a_registry(cli, registry, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo one > /one\nRUN echo two > /two\n")
    cli("build", "-t", "cached:1", str(ctx), check=True)
    store = Store.open(cli.root)
    records = [r for k in store.index.keys() if (r := store.index.read(k)) is not None]
    with_layers = [r for r in records if r.layer is not None]
    assert len(with_layers) >= 2

    ref = f"{registry.host}/app/cache:buildcache"
    first = export_cache_to_registry(store, records, ref)
    assert first.push.digest == "sha256:" + hashlib.sha256(cache_manifest(records)[1]).hexdigest()
    again = export_cache_to_registry(store, records, ref)
    assert again.push.stats.uploaded == 0 and again.push.digest == first.push.digest
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                                    capture_output=True, text=True, check=True).stdout)
    assert raw["artifactType"] == ARTIFACT_TYPE

    fresh = Store.open(tmp_path / "fresh")
    imported = RegistryCacheImport.load(ref)
    try:
        assert set(imported.records) == {r.key for r in records}
        sources = CacheSources(fresh.index, [imported])
        target = with_layers[0]
        assert not fresh.content.exists(target.layer.digest)  # nothing downloaded by load()
        hit = sources.get(target.key)
        assert hit is not None and hit[1] == f"registry:{registry.host}/app/cache:buildcache"
        assert fresh.content.rehash(target.layer.digest) == target.layer.digest
        assert fresh.index.get(target.key) is not None   # the next build hits locally
        assert not fresh.content.exists(with_layers[1].layer.digest)  # only what a hit needs
    finally:
        imported.close()


def test_cache_from_a_missing_or_foreign_ref_is_a_clear_error(cli, registry):
    with pytest.raises(CacheTransferError, match=r"--cache-from ref=.*not found"):
        RegistryCacheImport.load(f"{registry.host}/none/cache:x")
    cli("push", "busybox:latest", f"{registry.host}/img/bb:1", check=True)
    with pytest.raises(CacheTransferError, match="not a pybuild cache"):
        RegistryCacheImport.load(f"{registry.host}/img/bb:1")


def _skopeo_raw(ref: str) -> dict:
    return json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                                     capture_output=True, text=True, check=True).stdout)


def test_build_cache_to_and_from_a_registry(cli, busybox_store, registry, tmp_path):
    a = local_cache._cli_with_epoch(cli)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(local_cache.DOCKERFILE)
    (ctx / "app.txt").write_text("version 1\n")
    ref = f"{registry.host}/app:buildcache"
    meta_a = tmp_path / "a.json"
    r = a("build", "--progress", "plain", "-t", "app:1", "--metadata-file", str(meta_a),
          "--cache-to", f"type=registry,ref={ref},mode=max", str(ctx), check=True)
    assert f"to registry:{ref} (mode=max)" in r.stderr

    raw = _skopeo_raw(ref)
    assert raw["schemaVersion"] == 2 and raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert raw["artifactType"] == ARTIFACT_TYPE
    assert raw["config"]["mediaType"] == "application/vnd.pybuild.cache.config.v1+json"
    records = RegistryCacheImport.load(ref)
    try:
        by_step = {rec.description.split("] ", 1)[1]: rec for rec in records.records.values()}
    finally:
        records.close()
    assert len(raw["layers"]) == len({rec.layer.digest for rec in by_step.values() if rec.layer})
    after_copy = by_step["RUN head -c 32 /dev/urandom | od -x > /app/after-copy.txt"].layer.digest

    # A brand-new store: every step from the registry, nothing run (RUNs write random bytes).
    b = local_cache._fresh_store(cli, busybox_store, tmp_path, "store-b")
    meta_b = tmp_path / "b.json"
    r = b("build", "--progress", "plain", "-t", "app:1", "--metadata-file", str(meta_b),
          "--cache-from", f"type=local,src={tmp_path / 'no-such-dir'}",   # mixable with type=local
          "--cache-from", f"type=registry,ref={ref}", str(ctx), check=True)
    steps = local_cache._steps(r.stderr)
    assert len(steps) == 6 and set(steps.values()) == {"CACHED"}, steps
    assert f"cache imported from registry:{ref}" in r.stderr
    assert "no-such-dir: no such directory: ignoring this cache source" in r.stderr
    digest = lambda p: json.loads(p.read_text())["containerimage.digest"]
    assert digest(meta_b) == digest(meta_a)

    # A changed file misses from its COPY on; the layers after it are never downloaded.
    (ctx / "app.txt").write_text("version 2\n")
    c = local_cache._fresh_store(cli, busybox_store, tmp_path, "store-c")
    r = c("build", "--progress", "plain", "-t", "app:2", "--cache-from", f"type=registry,ref={ref}", str(ctx),
          check=True)
    steps = {label.split("] ", 1)[1]: result for label, result in local_cache._steps(r.stderr).items()}
    assert steps == {"RUN head -c 32 /dev/urandom | od -x > /tool.bin": "CACHED", "WORKDIR /app": "CACHED",
                     "RUN head -c 32 /dev/urandom | od -x > /app/random.txt": "CACHED", "COPY app.txt ./": "DONE",
                     "RUN head -c 32 /dev/urandom | od -x > /app/after-copy.txt": "DONE",
                     "COPY --from=tools /tool.bin /app/": "DONE"}, steps
    c_content = Store.open(c.root).content
    assert c_content.exists(by_step["RUN head -c 32 /dev/urandom | od -x > /app/random.txt"].layer.digest)
    assert not c_content.exists(after_copy)


def test_a_missing_cache_is_a_warning_and_a_failed_export_an_error(cli, registry, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN echo hi > /hi\n")
    # The first CI run: no cache pushed yet.
    r = cli("build", "--cache-from", f"type=registry,ref={registry.host}/app:buildcache", str(ctx), check=True)
    warnings = [line for line in r.stderr.splitlines() if f"ref={registry.host}/app:buildcache" in line]
    assert len(warnings) == 1 and "not found" in warnings[0] and "ignoring this cache source" in warnings[0]

    secure = start_registry(tmp_path / "secure", certs=make_certs(tmp_path / "certs"),
                            htpasswd=htpasswd_line("ci", "pass"))
    try:
        ref = f"{secure.host}/app:buildcache"
        r = cli("build", "--cache-from", f"type=registry,ref={ref}", str(ctx), check=True)
        warnings = [line for line in r.stderr.splitlines() if f"--cache-from ref={ref}" in line]
        assert len(warnings) == 1 and "TLS certificate not trusted" in warnings[0], r.stderr
        r = cli("build", "-t", "app:cached", "--cache-to", f"type=registry,ref={ref}", str(ctx))
        assert r.code == 1 and f"--cache-to ref={ref}" in r.stderr and "TLS certificate not trusted" in r.stderr
        assert "Traceback" not in r.stderr and "app:cached" not in cli("images").stdout  # nothing tagged

        certs_d = tmp_path / "home" / ".config" / "pybuild" / "certs.d" / secure.host
        certs_d.mkdir(parents=True)
        (certs_d / "ca.crt").write_bytes(secure.certs.ca.read_bytes())
        r = cli("build", "--cache-from", f"type=registry,ref={ref}", str(ctx), check=True)
        warnings = [line for line in r.stderr.splitlines() if f"--cache-from ref={ref}" in line]
        assert len(warnings) == 1 and "unauthorized" in warnings[0], r.stderr
        r = cli("build", "-t", "app:cached", "--cache-to", f"type=registry,ref={ref}", str(ctx))
        assert r.code == 1 and f"--cache-to ref={ref}" in r.stderr and "unauthorized" in r.stderr
        assert "app:cached" not in cli("images").stdout
    finally:
        secure.stop()


MOUNT_DOCKERFILE = """\
FROM busybox:latest
COPY stamp.txt /stamp.txt
RUN --mount=type=cache,target=/c,id=pkgs,uid=1000,mode=0750 sh -c 'echo "run $(cat /stamp.txt)" >> /c/log; cp /c/log /seen'
"""


@pytest.mark.parametrize("kind", ["registry", "local"])
def test_cache_mounts_travel_with_the_cache(cli, busybox_store, registry, tmp_path, kind):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(MOUNT_DOCKERFILE)
    (ctx / "stamp.txt").write_text("A\n")
    cli("build", str(ctx), check=True)   # the mount now holds two runs of A's history
    (ctx / "stamp.txt").write_text("A2\n")
    if kind == "registry":
        to, source = f"type=registry,ref={registry.host}/app:buildcache", f"registry:{registry.host}/app:buildcache"
    else:
        to, source = f"type=local,dest={tmp_path / 'cache'}", f"local:{tmp_path / 'cache'}"
    frm = to.replace("dest=", "src=")
    r = cli("build", "--progress", "plain", "--cache-to", f"{to},mounts=true", str(ctx), check=True)
    assert "1 cache mounts" in r.stderr and f"to {source}" in r.stderr

    # A new store, an earlier step changed: the RUN runs and finds A's cache mount content.
    (ctx / "stamp.txt").write_text("B\n")
    b = local_cache._fresh_store(cli, busybox_store, tmp_path, "store-b")
    out = tmp_path / "out"
    r = b("build", "--progress", "plain", "--cache-from", frm, "-o", f"type=local,dest={out}", str(ctx), check=True)
    assert f"cache mount 'pkgs' restored from {source}" in r.stderr
    assert (out / "seen").read_text() == "run A\nrun A2\nrun B\n"
    mount_dir = next(p for p in (b.root / "cache" / "mounts").iterdir() if (p / "0").is_dir())
    st = (mount_dir / "0").stat()
    assert (st.st_uid, oct(st.st_mode & 0o7777)) == (1000, "0o750")
    assert json.loads((mount_dir / "meta.json").read_text())["id"] == "pkgs"

    # A mount that exists is never overwritten by an import.
    out2 = tmp_path / "out2"
    r = b("build", "--progress", "plain", "--no-cache", "--cache-from", frm, "-o", f"type=local,dest={out2}",
          str(ctx), check=True)
    assert "restored" not in r.stderr
    assert (out2 / "seen").read_text() == "run A\nrun A2\nrun B\nrun B\n"
