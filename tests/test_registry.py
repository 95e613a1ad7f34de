"""pull/push against a real registry (Debian's docker-registry on 127.0.0.1, plain HTTP).

skopeo is the independent judge of what we push, and the source of images we pull (docker
schema2 and OCI, as another tool pushes them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from pybuild.oci.store import ImageNotFound
from pybuild.registry.client import RegistryError
from pybuild.registry.pull import pull
from pybuild.registry.push import push
from registry_server import have_registry, start_registry

from pybuild.store import Store

pytestmark = [pytest.mark.registry,
              pytest.mark.skipif(not have_registry(), reason="docker-registry not installed (.ci/run installs it)")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No docker credentials or certs.d of the machine; no registries config."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "home" / ".docker"))
    monkeypatch.setenv("PYBUILD_CONFIG", str(tmp_path / "registries.toml"))
    (tmp_path / "registries.toml").write_text("")


def quiet(_line: str) -> None:
    pass


def skopeo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=300, check=True)


def store_snapshot(root: Path) -> tuple[bytes, list[str]]:
    """index.json bytes and the list of blobs: what a failed operation must leave unchanged."""
    return (root / "index.json").read_bytes(), sorted(p.name for p in (root / "blobs" / "sha256").iterdir())


def make_big_image(cli, tmp_path, name: str, size: int) -> None:
    """A one-layer image with `size` random (incompressible) bytes."""
    rootfs = tmp_path / f"rootfs-{name.replace('/', '_').replace(':', '_')}"
    rootfs.mkdir()
    (rootfs / "data").write_bytes(os.urandom(size))
    cli("import", str(rootfs), name, check=True)


def test_push_then_pull_back_is_byte_identical(cli, registry, tmp_path):
    res = cli("push", "busybox:latest", f"{registry.host}/rt/busybox:1", check=True)
    local = Store.open(cli.root).images.resolve("busybox:latest")
    assert f"digest: {local}" in res.stdout
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/rt/busybox:1").stdout)
    assert inspected["Digest"] == local
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/rt/busybox:1").stdout
    assert raw.encode() == (cli.root / "blobs" / "sha256" / local.split(":")[1]).read_bytes()

    fresh = type(cli)(tmp_path / "fresh")
    res = fresh("pull", f"{registry.host}/rt/busybox:1", check=True)
    assert local in res.stdout
    fresh_store = Store.open(fresh.root)
    assert fresh_store.images.resolve(f"{registry.host}/rt/busybox:1") == local
    for p in (fresh.root / "blobs" / "sha256").iterdir():  # every blob verified and complete
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name
    assert not list((fresh.root / "ingest").iterdir())
    out = fresh("run", f"{registry.host}/rt/busybox:1", "echo", "pulled-ok", check=True)
    assert "pulled-ok" in out.stdout


def test_repush_uploads_nothing_and_other_repo_mounts(cli, registry):
    store = Store.open(cli.root)
    first = push(store, "busybox:latest", f"{registry.host}/mnt/a:1", progress=quiet)
    assert first.stats.uploaded + first.stats.skipped == 2
    again = push(store, "busybox:latest", f"{registry.host}/mnt/a:1", progress=quiet)
    assert (again.stats.uploaded, again.stats.skipped, again.stats.mounted) == (0, 2, 0)
    assert again.digest == first.digest
    other = push(store, "busybox:latest", f"{registry.host}/mnt/b:1", progress=quiet)
    assert (other.stats.uploaded, other.stats.mounted) == (0, 2)
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/mnt/b:1").stdout)
    assert inspected["Digest"] == first.digest


def test_chunked_upload_and_pull_of_a_multi_megabyte_layer(cli, registry, tmp_path):
    make_big_image(cli, tmp_path, "big:1", 3 << 20)
    store = Store.open(cli.root)
    result = push(store, "big:1", f"{registry.host}/chunked/big:1", progress=quiet,
                  chunk_threshold=1 << 20, chunk_size=700_000)
    assert result.stats.uploaded == 2
    # skopeo copies it out: the registry assembled the chunks into the right blob
    out = tmp_path / "skopeo-oci"
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/chunked/big:1", f"oci:{out}:big")
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == result.digest
    fresh = Store.open(tmp_path / "fresh")
    pulled = pull(fresh, f"{registry.host}/chunked/big:1", progress=quiet)
    assert pulled.manifest_digest == result.digest and pulled.blobs_fetched == 2


def test_pull_what_skopeo_pushed_docker_schema2_and_build_from_it(cli, registry, tmp_path):
    archive = tmp_path / "bb.tar"
    cli("save", "-o", str(archive), "busybox:latest", check=True)
    skopeo("copy", "--dest-tls-verify=false", "--format", "v2s2", f"oci-archive:{archive}",
           f"docker://{registry.host}/skopeo/bb:v2s2")
    skopeo("copy", "--dest-tls-verify=false", f"oci-archive:{archive}", f"docker://{registry.host}/skopeo/bb:oci")
    fresh = type(cli)(tmp_path / "fresh")
    fresh("pull", f"{registry.host}/skopeo/bb:v2s2", check=True)
    manifest_digest = Store.open(fresh.root).images.resolve(f"{registry.host}/skopeo/bb:v2s2")
    manifest = json.loads((fresh.root / "blobs" / "sha256" / manifest_digest.split(":")[1]).read_text())
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    remote = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/skopeo/bb:v2s2").stdout)
    assert remote["Digest"] == manifest_digest

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {registry.host}/skopeo/bb:v2s2\nRUN echo built > /built\n"
                                    "CMD [\"cat\", \"/built\"]\n")
    fresh("build", "-t", "onv2s2:1", "--pull=never", str(ctx), check=True)
    assert fresh("run", "onv2s2:1", check=True).stdout.strip() == "built"
    built = Store.open(fresh.root).images.image("onv2s2:1")
    assert {layer.media_type for layer in built.layers} == {"application/vnd.oci.image.layer.v1.tar+gzip"}

    # FROM pulls what is missing (the OCI copy), by itself
    (ctx / "Dockerfile").write_text(f"FROM {registry.host}/skopeo/bb:oci\nRUN echo again > /again\n")
    res = fresh("build", "-t", "onoci:1", "--progress", "plain", str(ctx), check=True)
    assert f"pulling {registry.host}/skopeo/bb:oci" in res.stderr
    assert Store.open(fresh.root).images.resolve(f"{registry.host}/skopeo/bb:oci")


def test_index_resolved_to_platform_and_pull_by_digest(cli, registry, tmp_path):
    store = Store.open(cli.root)
    pushed = push(store, "busybox:latest", f"{registry.host}/multi/bb:amd64", progress=quiet)
    size = store.content.size(pushed.digest)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": pushed.digest, "size": size,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": pushed.digest, "size": size,
         "platform": {"os": "linux", "architecture": "amd64"}}]}
    body = json.dumps(index).encode()
    index_digest = "sha256:" + hashlib.sha256(body).hexdigest()
    r = requests.put(f"http://{registry.host}/v2/multi/bb/manifests/multi", data=body,
                     headers={"Content-Type": index["mediaType"]}, timeout=30)
    assert r.status_code == 201, r.text

    fresh = type(cli)(tmp_path / "fresh")
    res = fresh("pull", f"{registry.host}/multi/bb:multi", check=True)
    assert pushed.digest in res.stdout
    res = fresh("pull", "--platform", "linux/s390x", f"{registry.host}/multi/bb:multi")
    assert res.code == 1 and "no image for linux/s390x in the index (it has: linux/amd64, linux/arm64/v8)" \
        in res.stderr and "Traceback" not in res.stderr

    res = fresh("pull", f"{registry.host}/multi/bb@{index_digest}", check=True)
    fresh_store = Store.open(fresh.root)
    assert fresh_store.images.resolve(f"{registry.host}/multi/bb@{index_digest}") == pushed.digest
    assert "<none>" in fresh("images", check=True).stdout
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {registry.host}/multi/bb@{index_digest}\nRUN true\n")
    fresh("build", "--pull=never", "-t", "bydigest:1", str(ctx), check=True)


def test_pull_policies(cli, registry, tmp_path):
    cli("push", "busybox:latest", f"{registry.host}/policy/bb:1", check=True)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {registry.host}/policy/bb:1\nRUN true\n")
    fresh = type(cli)(tmp_path / "fresh")
    res = fresh("build", "--pull=never", str(ctx))
    assert res.code == 1
    assert "Dockerfile:1:6: base image" in res.stderr and "--pull=never forbids pulling it" in res.stderr
    fresh("build", str(ctx), check=True)            # missing: pulls
    res = fresh("build", "--pull", "--progress", "plain", str(ctx), check=True)  # always: asks the registry again
    assert f"pulling {registry.host}/policy/bb:1" in res.stderr
    res = fresh("build", "--progress", "plain", str(ctx), check=True)  # present: no pull
    assert "pulling" not in res.stderr
    res = fresh("build", "--pull=sometimes", str(ctx))
    assert res.code == 2 and "--pull=sometimes: expected --pull, --pull=always" in res.stderr


def test_build_push_and_output_registry(cli, registry, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo pushed > /p\n")
    res = cli("build", "-t", f"{registry.host}/built/app:1", "--push", str(ctx), check=True)
    digest = Store.open(cli.root).images.resolve(f"{registry.host}/built/app:1")
    assert f"digest: {digest}" in res.stderr
    remote = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/built/app:1").stdout)
    assert remote["Digest"] == digest
    res = cli("build", "--output", f"type=registry,name={registry.host}/built/app:2", str(ctx), check=True)
    # the layers are in that repository already: at most the config goes up (only if the cached
    # rebuild's config differs, e.g. its `created` time)
    counts = re.search(r"\((\d+) blobs uploaded, (\d+) already there, 0 mounted\)", res.stderr)
    assert counts and int(counts.group(2)) >= 2 and int(counts.group(1)) + int(counts.group(2)) == 3
    cli("build", "--output", f"type=image,name={registry.host}/built/app:3,push=true", str(ctx), check=True)
    digest3 = Store.open(cli.root).images.resolve(f"{registry.host}/built/app:3")
    remote = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/built/app:3").stdout)
    assert remote["Digest"] == digest3
    res = cli("build", "--push", str(ctx))
    assert res.code == 2 and "--push needs at least one -t" in res.stderr


def test_errors_are_one_line(cli, registry, tmp_path):
    res = cli("pull", f"{registry.host}/nope/nothing:1")
    assert res.code == 1 and "not found" in res.stderr and "manifest unknown" in res.stderr
    assert "Traceback" not in res.stderr
    with socket_port() as port:
        res = cli("push", "busybox:latest", f"127.0.0.1:{port}/x:1")
    assert res.code == 1 and f"cannot connect to 127.0.0.1:{port}: connection refused" in res.stderr
    assert "Traceback" not in res.stderr
    res = cli("push", "nosuchlocal:1", f"{registry.host}/x:1")
    assert res.code == 1 and "no image 'nosuchlocal:1' in the local store" in res.stderr
    res = cli("pull", "--platform", "linux", f"{registry.host}/x:1")
    assert res.code == 2 and "--platform linux: expected OS/ARCH[/VARIANT], e.g. linux/amd64" in res.stderr


class socket_port:
    """A port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        from registry_server import free_port
        return free_port()

    def __exit__(self, *exc) -> None:
        pass


def test_registry_killed_mid_push_gives_clean_error_and_leaves_store_unchanged(cli, tmp_path):
    reg = start_registry(tmp_path / "doomed")
    try:
        make_big_image(cli, tmp_path, "doomed:1", 4 << 20)
        store = Store.open(cli.root)
        before = store_snapshot(cli.root)

        def kill_on_upload(line: str) -> None:
            if "uploading" in line and reg.process.poll() is None:
                reg.kill()  # the registry dies while this blob is being sent

        with pytest.raises(RegistryError) as err:
            push(store, "doomed:1", f"{reg.host}/doomed/app:1", progress=kill_on_upload,
                 chunk_threshold=1 << 20, chunk_size=1 << 20, workers=1)
        assert f"cannot connect to {reg.host}" in str(err.value) and "\n" not in str(err.value)
        assert store_snapshot(cli.root) == before
        assert not list((cli.root / "ingest").iterdir())
    finally:
        reg.stop()


class _DroppingProxy:
    """Forwards to a registry, but cuts every full (non-Range) blob download after half its
    bytes: the puller must resume with a Range request."""

    def __init__(self, upstream: str, corrupt: bool = False):
        self.upstream = upstream
        self.corrupt = corrupt  # instead of cutting, serve every blob with one byte flipped
        self.range_requests: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self.do_GET(head=True)

            def do_GET(self, head=False):
                rng = self.headers.get("Range")
                r = requests.request(self.command, f"http://{proxy.upstream}{self.path}", timeout=60,
                                     headers={k: v for k, v in self.headers.items()
                                              if k.lower() not in ("host", "range")})
                body = r.content
                is_blob = "/blobs/sha256:" in self.path and r.status_code == 200 and not head
                if is_blob and rng:
                    proxy.range_requests.append(rng)
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                    self.send_header("Content-Length", str(len(body) - start))
                    self.end_headers()
                    self.wfile.write(body[start:])
                    return
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                if is_blob and proxy.corrupt:
                    self.wfile.write(bytes([body[0] ^ 1]) + body[1:])
                    return
                if is_blob and len(body) > 1000:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_interrupted_download_resumes_with_range(cli, registry, tmp_path):
    make_big_image(cli, tmp_path, "resume:1", 2 << 20)
    store = Store.open(cli.root)
    pushed = push(store, "resume:1", f"{registry.host}/resume/app:1", progress=quiet)
    proxy = _DroppingProxy(registry.host)
    try:
        fresh = Store.open(tmp_path / "fresh")
        lines: list[str] = []
        result = pull(fresh, f"{proxy.host}/resume/app:1", progress=lines.append)
    finally:
        proxy.stop()
    assert result.manifest_digest == pushed.digest
    assert proxy.range_requests and all(r.startswith("bytes=") for r in proxy.range_requests)
    assert any("resuming" in line for line in lines)
    layer = fresh.images.image(f"{proxy.host}/resume/app:1").layers[0]
    assert fresh.content.rehash(layer.digest) == layer.digest


def test_mirror_is_tried_first_then_the_registry(cli, registry, tmp_path, monkeypatch):
    mirror = start_registry(tmp_path / "mirror")
    try:
        store = Store.open(cli.root)
        push(store, "busybox:latest", f"{mirror.host}/library/busybox:latest", progress=quiet)
        (tmp_path / "registries.toml").write_text(f'[registry."docker.io"]\nmirrors = ["{mirror.host}"]\n')
        fresh = type(cli)(tmp_path / "fresh")
        res = fresh("pull", "busybox", check=True)   # docker.io/library/busybox:latest, via the mirror only
        assert f"from {mirror.host}" in res.stderr
        assert Store.open(fresh.root).images.resolve("busybox:latest")
        # a mirror without the image: the registry itself is tried next (here it fails: no network)
        res = fresh("pull", "busybox:nosuchtag")
        assert res.code == 1 and f"mirror {mirror.host}:" in res.stderr and "registry-1.docker.io" in res.stderr
    finally:
        mirror.stop()
    with pytest.raises(ImageNotFound):
        Store.open(tmp_path / "fresh").images.resolve("busybox:nosuchtag")


class _ScriptedServer:
    """Answers each request with the next scripted action: an HTTP status, or "drop" (close the
    connection without answering); then 200 with a small JSON body."""

    def __init__(self, script: list):
        self.script = list(script)
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.seen.append(self.path)
                action = outer.script.pop(0) if outer.script else 200
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                body = b'{"errors":[{"code":"DENIED","message":"no access"}]}' if action == 403 else b"{}"
                self.send_response(action)
                if action == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retries_on_429_5xx_and_dropped_connections_then_clear_errors():
    from pybuild.registry.client import RegistryClient, Unauthorized
    from pybuild.registry.config import RegistryConfig

    server = _ScriptedServer([503, 429, "drop", 200])
    try:
        client = RegistryClient(f"http://{server.host}", config=RegistryConfig(), backoff=0.01)
        assert client.request("GET", "/v2/r/manifests/t", scopes=()).status_code == 200
        assert server.seen == ["/v2/r/manifests/t"] * 4
        server.script[:] = [500] * 10
        server.seen.clear()
        with pytest.raises(RegistryError, match=r"GET /v2/r/manifests/t failed: HTTP 500"):
            client.request("GET", "/v2/r/manifests/t", scopes=())
        assert len(server.seen) == client.retries + 1
        server.script[:] = [403]
        with pytest.raises(Unauthorized, match=r"denied: .* refused .*: denied: no access"):
            client.request("GET", "/v2/r/manifests/t", scopes=())
    finally:
        server.stop()


def test_corrupt_blob_is_refused_and_nothing_is_stored(cli, registry, tmp_path):
    store = Store.open(cli.root)
    push(store, "busybox:latest", f"{registry.host}/corrupt/bb:1", progress=quiet)
    proxy = _DroppingProxy(registry.host, corrupt=True)
    fresh = Store.open(tmp_path / "fresh")
    before = store_snapshot(fresh.root)
    try:
        with pytest.raises(RegistryError, match="does not match its digest"):
            pull(fresh, f"{proxy.host}/corrupt/bb:1", progress=quiet)
    finally:
        proxy.stop()
    assert store_snapshot(fresh.root) == before
    assert not list((fresh.root / "ingest").iterdir())


class _UploadDroppingProxy:
    """Forwards every request to the registry (the Host header kept, so upload Locations point
    back here); the first time the Nth PATCH of an upload arrives it is forwarded, and then the
    connection is dropped before the answer: the client must learn from the registry how much
    it received and continue from there."""

    def __init__(self, upstream: str, drop_patch: int = 2):
        self.upstream = upstream
        self.patches = 0
        self.drop_patch = drop_patch
        self.status_requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "GET" and "/blobs/uploads/" in self.path:
                    proxy.status_requests += 1
                r = requests.request(self.command, f"http://{proxy.upstream}{self.path}", data=body, timeout=60,
                                     headers={k: v for k, v in self.headers.items()
                                              if k.lower() not in ("content-length", "transfer-encoding")},
                                     allow_redirects=False)
                if self.command == "PATCH":
                    proxy.patches += 1
                    if proxy.patches == proxy.drop_patch:
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                data = b"" if self.command == "HEAD" else r.content
                self.send_header("Content-Length", str(len(r.content) if self.command != "HEAD" else
                                                       r.headers.get("Content-Length", 0)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_chunked_upload_continues_after_a_dropped_patch(cli, registry, tmp_path):
    make_big_image(cli, tmp_path, "chunky:1", 3 << 20)
    store = Store.open(cli.root)
    proxy = _UploadDroppingProxy(registry.host)
    try:
        result = push(store, "chunky:1", f"{proxy.host}/chunky/app:1", progress=quiet,
                      chunk_threshold=1 << 20, chunk_size=1 << 20, workers=1)
    finally:
        proxy.stop()
    assert proxy.status_requests >= 1 and proxy.patches >= 4
    out = tmp_path / "copy"
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/chunky/app:1", f"oci:{out}:x")
    assert json.loads((out / "index.json").read_text())["manifests"][0]["digest"] == result.digest


@pytest.mark.skipif(not shutil.which("buildah"), reason="buildah not installed (.ci/run installs it)")
def test_build_on_an_image_buildah_built_and_pushed(cli, registry, tmp_path):
    storage = ["--root", str(tmp_path / "buildah-root"), "--runroot", str(tmp_path / "buildah-run"),
               "--storage-driver", "vfs"]

    def buildah(*args: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}  # buildah wants it to exist
        proc = subprocess.run(["buildah", *storage, *args], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    ctr = buildah("from", "scratch")
    buildah("copy", ctr, "/bin/busybox", "/bin/busybox")
    buildah("config", "--cmd", '["/bin/busybox", "echo", "from-buildah"]', ctr)
    buildah("commit", "-q", "--format", "docker", ctr, "bb-buildah")
    buildah("push", "--tls-verify=false", "bb-buildah", f"docker://{registry.host}/buildah/bb:1")

    fresh = type(cli)(tmp_path / "fresh")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {registry.host}/buildah/bb:1\n"
                                    'RUN ["/bin/busybox", "sh", "-c", "echo built-on-buildah > /x"]\n'
                                    'CMD ["/bin/busybox", "cat", "/x"]\n')
    fresh("build", "-t", "onbuildah:1", str(ctx), check=True)  # FROM pulls it
    assert fresh("run", "onbuildah:1", check=True).stdout.strip() == "built-on-buildah"
    remote = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/buildah/bb:1").stdout)
    assert Store.open(fresh.root).images.resolve(f"{registry.host}/buildah/bb:1") == remote["Digest"]
