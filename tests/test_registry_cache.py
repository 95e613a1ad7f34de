"""The build cache in a registry (registry/cache.py): the cache artifact of cache/transfer.py
pushed to a real docker-registry and read back on an empty store, layers fetched on a hit."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from pybuild.cache.transfer import ARTIFACT_TYPE, CacheSources, CacheTransferError, cache_manifest
from pybuild.registry.cache import RegistryCacheImport, export_cache_to_registry
from pybuild.store import Store
from registry_server import have_registry, start_registry

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
