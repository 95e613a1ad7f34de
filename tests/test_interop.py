"""podman and buildah as independent judges of our images, in both directions.

- ours -> theirs: `pybuild save` (OCI and docker-archive) is loaded by `podman load` and
  run by `podman run` (the file a RUN wrote is there; podman's image id is our config
  digest); `buildah from oci-archive:` mounts the same tree and reads our config.
- theirs -> ours: buildah builds on top of our busybox (FROM oci-archive:), with a deleted
  file (`.wh.` whiteout), an opaque dir (`.wh..wh..opq`, from buildah's overlay driver)
  and a directory replaced by a file; `buildah push` to oci-archive and docker-archive;
  `pybuild load` reads both, `pybuild run` sees exactly the expected tree, and a
  pybuild build uses it as a base.

podman and buildah run against a private storage and config in a temp dir
(CONTAINERS_CONF / CONTAINERS_STORAGE_CONF): runc (crun fails on this host's hybrid
cgroup layout), cgroupfs, no network, no default ulimits, events to a file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PybuildCLI, mountinfo

pytestmark = pytest.mark.interop

TOOLS = ("podman", "buildah", "runc")


@pytest.fixture(scope="module")
def containers(tmp_path_factory):
    """Environment for podman/buildah with storage and config under a temp dir; on
    teardown every container, image and mount of that storage is removed."""
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (.ci/run installs them)")
    if os.geteuid() != 0:
        pytest.skip("needs root (podman/buildah storage as root); CI runs as root")
    base = tmp_path_factory.mktemp("containers")
    conf, storage = base / "containers.conf", base / "storage.conf"
    conf.write_text(
        "[containers]\n"
        "default_ulimits = []\n"
        'netns = "none"\n'
        'log_driver = "k8s-file"\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{base}/events.log"\n'
    )
    # overlay (not vfs): buildah then writes opaque dirs as .wh..wh..opq, as docker does
    storage.write_text(f'[storage]\ndriver = "overlay"\nrunroot = "{base}/run"\ngraphroot = "{base}/graph"\n')
    env = dict(os.environ, CONTAINERS_CONF=str(conf), CONTAINERS_STORAGE_CONF=str(storage))
    yield env
    for cmd in (["buildah", "rm", "--all"], ["podman", "rm", "-a", "-f"], ["podman", "rmi", "-a", "-f"]):
        subprocess.run(cmd, check=False, env=env, capture_output=True, timeout=120)
    for line in reversed(mountinfo()):
        mp = line.split(" ", 1)[0].encode().decode("unicode_escape")
        if mp.startswith(str(base) + "/"):
            subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def tool(env, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def store(busybox_store, tmp_path_factory) -> PybuildCLI:
    """One pybuild store for the module: busybox plus an image whose RUN wrote files."""
    root = tmp_path_factory.mktemp("interop") / "store"
    shutil.copytree(busybox_store, root, symlinks=True)
    cli = PybuildCLI(root)
    ctx = root.parent / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox:latest\n"
        "ENV GREETING=hi\n"
        "RUN echo made-by-run > /hello.txt && mkdir -p /data/sub && echo deep > /data/sub/f"
        " && ln /hello.txt /data/hard && ln -s ../hello.txt /data/soft && chmod 0751 /data\n"
        'CMD ["cat", "/hello.txt"]\n'
    )
    cli("-t", "interop:1", str(ctx), check=True)
    return cli


def _config_digest(cli: PybuildCLI, ref: str) -> str:
    return json.loads(cli("inspect", ref, check=True).stdout)[0]["Id"]


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_podman_loads_and_runs_what_we_save(store, containers, tmp_path, fmt):
    archive = tmp_path / f"interop-{fmt}.tar"
    store("save", "--format", fmt, "-o", str(archive), "interop:1", check=True)
    out = tool(containers, "podman", "load", "-i", str(archive))
    assert "interop:1" in out
    name = "localhost/interop:1" if fmt == "oci" else "interop:1"
    podman_id = tool(containers, "podman", "image", "inspect", "--format", "{{.Id}}", name).strip()
    assert "sha256:" + podman_id == _config_digest(store, "interop:1")
    run = ["podman", "run", "--rm", "--network", "none", name]
    assert tool(containers, *run) == "made-by-run\n"  # the image's CMD
    listing = tool(containers, *run, "sh", "-c",
                   "cat /data/sub/f /data/hard /data/soft; stat -c %a /data; stat -c '%a %h' /hello.txt; echo $GREETING")
    assert listing.splitlines() == ["deep", "made-by-run", "made-by-run", "751", "644 2", "hi"]
    tool(containers, "podman", "rmi", name)


def test_buildah_mounts_and_inspects_our_oci_archive(store, containers, tmp_path):
    archive = tmp_path / "interop.tar"
    store("save", "-o", str(archive), "interop:1", check=True)
    ctr = tool(containers, "buildah", "from", "--pull-never", f"oci-archive:{archive}").strip()
    try:
        mnt = Path(tool(containers, "buildah", "mount", ctr).strip())
        try:
            assert (mnt / "hello.txt").read_text() == "made-by-run\n"
            assert (mnt / "data" / "sub" / "f").read_text() == "deep\n"
            assert os.readlink(mnt / "data" / "soft") == "../hello.txt"
            assert os.stat(mnt / "data" / "hard").st_ino == os.stat(mnt / "hello.txt").st_ino
            assert (mnt / "bin" / "busybox").is_file()
        finally:
            tool(containers, "buildah", "umount", ctr)
        info = json.loads(tool(containers, "buildah", "inspect", ctr))
        ours = json.loads(store("inspect", "interop:1", check=True).stdout)[0]
        assert info["OCIv1"]["config"]["Cmd"] == ["cat", "/hello.txt"]
        assert "GREETING=hi" in info["OCIv1"]["config"]["Env"]
        assert info["OCIv1"]["rootfs"]["diff_ids"] == ours["RootFS"]["Layers"]
    finally:
        tool(containers, "buildah", "rm", ctr)


BUD_DOCKERFILE = """\
FROM oci-archive:{base}
RUN mkdir -p /opq/sub /gone && echo old > /opq/old && echo deep > /opq/sub/x && echo bye > /rmme \\
    && echo x > /gone/x
RUN rm /rmme /etc/group && rm -rf /opq && mkdir /opq && echo new > /opq/new \\
    && rm -rf /gone && echo now-a-file > /gone && ln -s /opq/new /lnk
"""


def _layer_names(layout: Path, manifest: dict) -> list[list[str]]:
    import tarfile

    out = []
    for layer in manifest["layers"]:
        with tarfile.open(layout / "blobs" / "sha256" / layer["digest"].split(":")[1]) as tf:
            out.append(tf.getnames())
    return out


def test_buildah_image_with_whiteouts_loads_and_runs_in_pybuild(store, containers, tmp_path):
    import tarfile

    base = tmp_path / "busybox.tar"
    store("save", "-o", str(base), "busybox:latest", check=True)
    ctx = tmp_path / "bud"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(BUD_DOCKERFILE.format(base=base))
    tool(containers, "buildah", "bud", "--layers", "--isolation", "chroot", "-t", "bud:1", str(ctx), timeout=300)
    oci, dock = tmp_path / "bud-oci.tar", tmp_path / "bud-docker.tar"
    tool(containers, "buildah", "push", "bud:1", f"oci-archive:{oci}:bud:1")
    tool(containers, "buildah", "push", "bud:1", f"docker-archive:{dock}:bud-docker:1")

    # the judge really produced the whiteout kinds under test
    layout = tmp_path / "layout"
    with tarfile.open(oci) as tf:
        tf.extractall(layout, filter="data")
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    top = _layer_names(layout, manifest)[-1]
    assert {".wh.rmme", "etc/.wh.group", "opq/.wh..wh..opq", "gone"} <= set(top), top

    assert "bud:1" in store("load", "-i", str(oci), check=True).stdout
    assert "bud-docker:1" in store("load", "-i", str(dock), check=True).stdout
    script = ("ls -A /opq; cat /opq/new /gone; test -e /rmme || echo rmme-gone; "
              "test -e /etc/group || echo group-gone; test -f /etc/passwd && echo passwd-kept; readlink /lnk")
    expected = ["new", "new", "now-a-file", "rmme-gone", "group-gone", "passwd-kept", "/opq/new"]
    for ref in ("bud:1", "bud-docker:1"):
        res = store("run", ref, "sh", "-c", script, check=True)
        assert res.stdout.splitlines() == expected, (ref, res.output)
    # both archives carry the same layers, so pybuild gives the same image id
    assert _config_digest(store, "bud:1") == _config_digest(store, "bud-docker:1")

    # and a pybuild build on top of it
    ctx2 = tmp_path / "on-bud"
    ctx2.mkdir()
    (ctx2 / "Dockerfile").write_text("FROM bud:1\nRUN ls -A /opq > /listing && cat /gone >> /listing\n")
    store("-t", "on-bud:1", str(ctx2), check=True)
    assert store("run", "on-bud:1", "cat", "/listing", check=True).stdout == "new\nnow-a-file\n"
