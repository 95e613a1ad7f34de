"""SOURCE_DATE_EPOCH: two cold builds in two empty stores give the same manifest digest.

BuildKit (docs "Reproducible builds with SOURCE_DATE_EPOCH"): the variable, from the
environment or `--build-arg SOURCE_DATE_EPOCH=`, sets the image config's `created` and every
history entry's `created`, and with the exporter's rewrite-timestamp option clamps file
timestamps in the layers to it. pybuild always clamps when the variable is set, so the
same Dockerfile and context contents give the same bytes wherever and whenever they are
built: different store paths, context paths, inode numbers and file mtimes do not leak in.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

from conftest import PybuildCLI

SDE = 1_700_000_000          # 2023-11-14T22:13:20Z
SDE_TEXT = "2023-11-14T22:13:20Z"

DOCKERFILE = """\
FROM busybox:latest AS build
WORKDIR /work
COPY src/ ./src/
RUN mkdir -p out && cat src/a.txt src/sub/b.txt > out/all.txt && touch out/stamp && mkdir -p /var/cache/x
ADD bundle.tar.gz /opt/bundle/

FROM busybox:latest
ENV APP=demo
LABEL org.example.version=1
WORKDIR /app
COPY --from=build /work/out/ ./out/
COPY --from=build /opt/bundle/ /opt/bundle/
ADD bundle.tar.gz /opt/again/
COPY --chown=1:1 --chmod=640 src/a.txt /app/a.txt
RUN echo built > /app/built.txt && mkdir -p /app/empty
CMD ["cat", "/app/out/all.txt"]
"""


class _CLIWithEnv(PybuildCLI):
    """The CLI with extra environment variables (the fixture's CLI removes SOURCE_DATE_EPOCH)."""

    def __init__(self, root: Path, extra: dict[str, str]):
        super().__init__(root)
        self.extra = extra

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}


def _make_context(path: Path) -> None:
    (path / "src" / "sub").mkdir(parents=True)
    (path / "src" / "a.txt").write_text("alpha\n")
    (path / "src" / "sub" / "b.txt").write_text("beta\n")
    payload = path / "payload"
    (payload / "etc").mkdir(parents=True)
    (payload / "etc" / "conf").write_text("conf\n")
    with tarfile.open(path / "bundle.tar.gz", "w:gz") as tf:
        tf.add(payload, arcname=".")
    shutil.rmtree(payload)
    (path / "Dockerfile").write_text(DOCKERFILE)


def _touch_all(root: Path, when: float) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (when, when))
    os.utime(root, (when, when))


def _blob(store: Path, digest: str) -> bytes:
    return (store / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def _base_layer_count(store: Path) -> int:
    for m in json.loads((store / "index.json").read_text())["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "busybox:latest":
            return len(json.loads(_blob(store, m["digest"]))["layers"])
    raise AssertionError("busybox:latest is not in the store")


def test_two_cold_builds_give_the_same_manifest_digest(busybox_store, tmp_path):
    stores = [tmp_path / "store-a", tmp_path / "store-b"]
    for s in stores:
        shutil.copytree(busybox_store, s, symlinks=True)
    ctx_a = tmp_path / "one" / "context"
    ctx_a.mkdir(parents=True)
    _make_context(ctx_a)
    ctx_b = tmp_path / "elsewhere" / "deeper" / "ctx"
    shutil.copytree(ctx_a, ctx_b, copy_function=shutil.copy)  # new inodes, new ctimes
    now = time.time()
    _touch_all(ctx_a, now - 3600)
    _touch_all(ctx_b, now - 60)

    # One build takes the epoch from the environment, the other from --build-arg, as BuildKit allows.
    a = _CLIWithEnv(stores[0], {"SOURCE_DATE_EPOCH": str(SDE)})
    b = _CLIWithEnv(stores[1], {})
    meta_a, meta_b = tmp_path / "meta-a.json", tmp_path / "meta-b.json"
    a("build", "-t", "repro:1", "--metadata-file", str(meta_a), str(ctx_a), check=True)
    res = b("build", "-t", "repro:1", "--build-arg", f"SOURCE_DATE_EPOCH={SDE}", "--metadata-file", str(meta_b),
            str(ctx_b), check=True)
    assert "SOURCE_DATE_EPOCH" not in res.stderr  # not reported as an unused build argument

    digest_a = json.loads(meta_a.read_text())["containerimage.digest"]
    digest_b = json.loads(meta_b.read_text())["containerimage.digest"]
    assert digest_a == digest_b

    # What makes it so: every time in the config is the epoch, and no layer entry is newer.
    manifest = json.loads(_blob(stores[0], digest_a))
    config = json.loads(_blob(stores[0], manifest["config"]["digest"]))
    assert config["created"] == SDE_TEXT
    ours = [h for h in config["history"] if h.get("comment") == "buildkit.dockerfile.v0"]  # not the base's
    assert len(ours) >= 9 and {h["created"] for h in ours} == {SDE_TEXT}
    base_layers = _base_layer_count(stores[0])
    newest = 0
    for layer in manifest["layers"][base_layers:]:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(_blob(stores[0], layer["digest"])))) as tf:
            newest = max([newest, *(m.mtime for m in tf.getmembers())])
    assert 0 < newest <= SDE
    assert "SOURCE_DATE_EPOCH" not in json.dumps(config)  # a build arg never reaches the config


def test_invalid_source_date_epoch_is_a_usage_error(cli, tmp_path):
    ctx = tmp_path / "c"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nLABEL a=b\n")
    res = cli("build", "--build-arg", "SOURCE_DATE_EPOCH=yesterday", str(ctx))
    assert res.code == 2
    assert "SOURCE_DATE_EPOCH='yesterday': expected a whole number of seconds" in res.stderr
