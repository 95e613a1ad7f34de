"""sandbox.runner.Mount: bind and tmpfs mounts inside the sandbox (needs root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sandbox_helpers import ENV, make_image, run_captured

from pybuild.sandbox.runner import Mount, ProcessSpec, RootfsSpec, SandboxError

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/bin/busybox"),
                                reason="needs root and /bin/busybox")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    root = make_image(tmp_path_factory.mktemp("image"))
    (root / "data").mkdir()
    (root / "data/keep.txt").write_text("image\n")
    (root / "link").symlink_to("/../../../../../../tmp")
    return root


@pytest.fixture
def ovl(tmp_path):
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return upper, work


def _mounts() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def sh(image, ovl, script, mounts, **kw):
    spec = ProcessSpec(["sh", "-c", script], dict(ENV), mounts=mounts, **kw)
    return run_captured(spec, RootfsSpec([image], *ovl))


def test_bind_dir_rw_writes_reach_host_not_layer(image, ovl, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "in.txt").write_text("host\n")
    before = _mounts()
    st, out, err = sh(image, ovl, "cat /cache/dir/in.txt; echo made > /cache/dir/out.txt",
                      [Mount("bind", "/cache/dir", src)])
    assert st.code == 0, err
    assert out == "host\n"
    assert (src / "out.txt").read_text() == "made\n"
    upper, _ = ovl
    assert os.listdir(upper) == []  # the stub /cache/dir (and /cache) never enters the layer
    assert _mounts() == before


def test_bind_readonly(image, ovl, tmp_path):
    src = tmp_path / "ro"
    src.mkdir()
    st, _, err = sh(image, ovl, "touch /ro/x", [Mount("bind", "/ro", src, readonly=True)])
    assert st.code == 1 and "Read-only file system" in err
    assert os.listdir(src) == []


def test_bind_file(image, ovl, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t")
    st, out, err = sh(image, ovl, "cat /run/secrets/token",
                      [Mount("bind", "/run/secrets/token", secret, readonly=True)])
    assert (st.code, out) == (0, "s3cr3t"), err
    assert os.listdir(ovl[0]) == []


def test_bind_over_existing_dir_hides_and_keeps_it(image, ovl, tmp_path):
    src = tmp_path / "over"
    src.mkdir()
    st, out, _ = sh(image, ovl, "ls /data", [Mount("bind", "/data", src)])
    assert (st.code, out) == (0, "")
    assert (image / "data/keep.txt").read_text() == "image\n"
    assert os.listdir(ovl[0]) == []


def test_tmpfs_mount_is_empty_and_gone(image, ovl):
    st, out, err = sh(image, ovl, "echo x > /scratch/f; cat /scratch/f; grep ' /scratch ' /proc/mounts",
                      [Mount("tmpfs", "/scratch", options=("size=1m", "mode=0700"))])
    assert st.code == 0, err
    assert out.startswith("x\n") and "tmpfs" in out and "size=1024k" in out and "mode=700" in out
    assert os.listdir(ovl[0]) == []


def test_target_through_symlink_stays_inside_root(image, ovl, tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "marker").write_text("m")
    st, out, err = sh(image, ovl, "cat /link/marker", [Mount("bind", "/link/mnt", src)])
    # /link -> /tmp inside the root: the mount lands on the root's /tmp/mnt, never the host's
    assert st.code == 1 and "No such file" in err
    assert not Path("/tmp/mnt").exists()


def test_file_in_the_way_of_dir_mount_is_an_error(image, ovl, tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    with pytest.raises(SandboxError, match="in the way"):
        sh(image, ovl, "true", [Mount("bind", "/bin/sh", src)])
    assert os.listdir(ovl[0]) == []


@pytest.mark.parametrize("mount,msg", [
    (Mount("bind", "rel", Path("/tmp")), "not an absolute path"),
    (Mount("bind", "/x", Path("/nonexistent/src")), "does not exist"),
    (Mount("bind", "/x", None), "not an absolute path"),
    (Mount("tmpfs", "/x", options=("size=1m,exec",)), "invalid option"),
    (Mount("overlay", "/x"), "unknown mount type"),
])
def test_invalid_mounts_are_refused(image, ovl, mount, msg):
    with pytest.raises(SandboxError, match=msg):
        sh(image, ovl, "true", [mount])


def test_read_only_rootfs_with_writable_bind(image, tmp_path):
    src = tmp_path / "vol"
    src.mkdir()
    spec = ProcessSpec(["sh", "-c", "echo v > /vol/f && touch /data/no"], dict(ENV),
                       mounts=[Mount("bind", "/vol", src)])
    st, _, err = run_captured(spec, RootfsSpec([image], None, None))
    assert st.code == 1 and "Read-only file system" in err
    assert (src / "f").read_text() == "v\n"
