"""The sandbox's opt-in user namespace (``ProcessSpec.userns``, ``--userns=auto``): root inside
is an unprivileged host user, capabilities count in the namespace only, and the idmapped
rootfs keeps files' real ownership on disk (a layer is the same with or without it)."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from pybuild.sandbox import probe
from pybuild.sandbox.idmap import IdMap, IdMapError, default_idmap, parse_subid
from pybuild.sandbox.runner import Mount, ProcessSpec, RootfsSpec, SandboxError
from sandbox_helpers import ENV, make_image, run_captured, sh

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/bin/busybox"),
                                reason="needs root and /bin/busybox")
DOCKER_DEFAULT = 0x00000000A80425FB
MAP = IdMap()  # container 0..65535 -> host 100000..165535


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return make_image(tmp_path_factory.mktemp("img"))


def _ovl(tmp_path: Path, name: str = "ovl") -> tuple[Path, Path]:
    base = tmp_path / name
    (base / "upper").mkdir(parents=True)
    (base / "work").mkdir()
    return base / "upper", base / "work"


def _run(image: Path, upper: Path, work: Path, script: str, **kw):
    spec = ProcessSpec(["sh", "-c", script], dict(ENV), **kw)
    return run_captured(spec, RootfsSpec([image], upper, work))


def _status(out: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def _mountinfo() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split(" ", 4)[4] for line in f]


def _tree(root: Path) -> list[tuple]:
    """Everything a layer keeps of a directory: names, types, modes, owners, xattrs, data."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            xattrs = sorted((x, os.getxattr(p, x, follow_symlinks=False))
                            for x in os.listxattr(p, follow_symlinks=False))
            data = None
            if stat.S_ISREG(st.st_mode):
                data = Path(p).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            out.append((os.path.relpath(p, root), stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                        st.st_uid, st.st_gid, st.st_rdev, st.st_nlink, xattrs, data))
    return sorted(out)


# --- pure: the mapping --------------------------------------------------------------------------

def test_parse_subid_takes_the_owners_lines_only():
    text = "# comment\nalice:100000:65536\nroot:200000:65536\n0:300000:70000\nroot:bad:1\n\nroot:1:0\n"
    assert parse_subid(text, ("root", "0")) == [(200000, 65536), (300000, 70000)]
    assert parse_subid(text, ("bob",)) == []


def test_default_idmap_from_subuid_files_or_the_documented_default(tmp_path):
    none = tmp_path / "absent"
    assert default_idmap(none, none) == IdMap(100000, 100000, 65536)
    (tmp_path / "subuid").write_text("root:231072:65536\n")
    (tmp_path / "subgid").write_text("0:331072:100000\n")
    assert default_idmap(tmp_path / "subuid", tmp_path / "subgid") == IdMap(231072, 331072, 65536)
    (tmp_path / "small").write_text("root:500000:1000\n")
    with pytest.raises(IdMapError, match="small.*smaller than the 65536"):
        default_idmap(tmp_path / "small", none)


def test_a_mapping_onto_host_root_is_refused():
    with pytest.raises(IdMapError, match="must not include 0"):
        IdMap(0, 100000, 65536).validate()
    with pytest.raises(IdMapError, match="32 bits"):
        IdMap(4294967000, 100000, 65536).validate()
    assert IdMap().map_line("uid") == "0 100000 65536\n"
    assert IdMap(1000, 2000, 10).to_host("gid", 3) == 2003


@needs_root
def test_invalid_mapping_is_a_sandbox_error(image):
    with pytest.raises(SandboxError, match="must not include 0"):
        sh(image, "true", userns=IdMap(0, 0, 65536))


# --- inside -------------------------------------------------------------------------------------

@needs_root
def test_uid_map_shows_the_mapping_and_root_is_root_inside(image):
    st, out, err = sh(image, "cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; id -u; id -g",
                      userns=MAP)
    assert st.code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["0", "100000", "65536"]
    assert lines[1].split() == ["0", "100000", "65536"]
    # root wrote the maps from the parent namespace: setgroups stays allowed (USER's groups work)
    assert lines[2:] == ["allow", "0", "0"]
    st, out, _ = sh(image, "cat /proc/self/uid_map", userns=IdMap(200000, 300000, 65536))
    assert out.split() == ["0", "200000", "65536"]
    # without: the host's namespace (the identity map)
    _, out, _ = sh(image, "cat /proc/self/uid_map")
    assert out.split() == ["0", "0", "4294967295"]


@needs_root
def test_files_keep_their_real_ownership_on_disk(image, tmp_path):
    upper, work = _ovl(tmp_path)
    st, out, err = _run(image, upper, work,
                        "echo hi > /rootfile && mkdir /home && echo a > /home/a && chown 1000:1000 /home/a"
                        " && ls -ln /bin/busybox", userns=MAP)
    assert st.code == 0, err
    # the image's files (owned by 0 on disk) show as root inside
    assert out.split()[2:4] == ["0", "0"]
    s = os.lstat(upper / "rootfile")
    assert (s.st_uid, s.st_gid) == (0, 0)
    s = os.lstat(upper / "home" / "a")
    assert (s.st_uid, s.st_gid) == (1000, 1000)
    # a non-root USER writes as its own id
    st, _, err = _run(image, upper, work, "echo x > /tmp/alice", user="alice", userns=MAP)
    assert st.code == 0, err
    s = os.lstat(upper / "tmp" / "alice")
    assert (s.st_uid, s.st_gid) == (1000, 1000)


@needs_root
def test_upper_dir_is_the_same_with_and_without_userns(image, tmp_path):
    """Copy-ups, whiteouts, opaque dirs, chown/chmod, links: byte for byte the same layer."""
    script = ("echo more >> /etc/passwd && rm /bin/true && rm -rf /mnt && mkdir /mnt && echo n > /mnt/new"
              " && mkdir -p /srv/a && echo d > /srv/a/f && chown -R 1000:1000 /srv && chmod 4750 /srv/a/f"
              " && ln -s /srv/a/f /srv/link && ln /srv/a/f /srv/hard && mkdir /tmp/t && chmod 1777 /tmp/t"
              " && chown 65534:65534 /etc/group")
    results = []
    for name, userns in (("plain", None), ("userns", MAP)):
        upper, work = _ovl(tmp_path, name)
        st, _, err = _run(image, upper, work, script, userns=userns)
        assert st.code == 0, err
        results.append(_tree(upper))
    assert results[0] == results[1]
    names = {r[0]: r for r in results[1]}
    assert names["bin/true"][1] == stat.S_IFCHR and names["bin/true"][5] == 0  # a whiteout
    assert ("trusted.overlay.opaque", b"y") in names["mnt"][7]
    assert names["srv/a/f"][2:5] == (0o4750, 1000, 1000)
    assert names["etc/group"][3:5] == (65534, 65534)


@needs_root
def test_read_only_rootfs_under_userns(image):
    st, out, err = sh(image, "ls -lnd / /bin; echo x > /f", userns=MAP)
    assert st.code != 0 and "read-only" in err.lower(), err
    assert [line.split()[2:4] for line in out.splitlines()] == [["0", "0"], ["0", "0"]]


@needs_root
def test_host_root_owned_bind_is_not_writable(image, tmp_path):
    host = tmp_path / "hostdir"
    host.mkdir(mode=0o755)
    secret = host / "secret"
    secret.write_text("host only\n")
    os.chmod(secret, 0o600)
    mounts = [Mount("bind", "/host", host)]
    script = "ls -lnd /host; cat /host/secret; echo x > /host/new && echo wrote"
    st, out, err = sh(image, script, mounts=mounts, userns=MAP)
    # not idmapped: host root's files are nobody's inside, and root inside has no power over them
    assert out.splitlines()[0].split()[2:4] == ["65534", "65534"]
    assert "wrote" not in out and "host only" not in out
    assert "denied" in err.lower(), err
    assert not (host / "new").exists()
    # the control: in the host's user namespace root may write there
    st, out, err = sh(image, script, mounts=mounts)
    assert "host only" in out and "wrote" in out, err
    (host / "new").unlink()
    # an idmapped bind (volumes, cache mounts) is the container's own: written as id 0 on disk
    st, out, err = sh(image, script, mounts=[Mount("bind", "/host", host, idmap=True)], userns=MAP)
    assert st.code == 0, err
    assert out.splitlines()[0].split()[2:4] == ["0", "0"]
    assert "host only" in out and "wrote" in out
    s = os.lstat(host / "new")
    assert (s.st_uid, s.st_gid) == (0, 0)


@needs_root
def test_capabilities_count_in_the_user_namespace_only(image):
    # privileged (RUN --security=insecure): every capability, but only over the namespace's own
    # objects: a tmpfs mount works, a device node (needs CAP_MKNOD on the host) does not
    script = "grep CapEff /proc/self/status; mount -t tmpfs x /mnt && echo mounted; mknod /dev/shm/n c 1 3 && echo mknod-ok"
    st, out, err = sh(image, script, privileged=True, userns=MAP)
    assert "mounted" in out, err
    assert "mknod-ok" not in out and "not permitted" in err.lower(), err
    assert int(_status(out)["CapEff"], 16) & (1 << 21)  # CAP_SYS_ADMIN, in the namespace
    # control: the same without a user namespace creates the node
    _, out, err = sh(image, "mknod /dev/shm/n c 1 3 && echo mknod-ok", privileged=True)
    assert "mknod-ok" in out, err
    # default policy under userns: Docker's set, so no mount at all
    st, _, err = sh(image, "mount -t tmpfs x /mnt", userns=MAP)
    assert st.code != 0


@needs_root
def test_security_defaults_hold_under_userns(image):
    script = ("cat /proc/self/status; echo ---; wc -c < /proc/kcore; echo x > /proc/sys/kernel/hostname"
              " && echo sysctl-written; ls /proc/self/fd; unshare -U true && echo unshared")
    st, out, err = sh(image, script, userns=MAP)
    status, rest = out.split("---\n", 1)
    s = _status(status)
    assert int(s["CapEff"], 16) == DOCKER_DEFAULT
    assert int(s["CapBnd"], 16) == DOCKER_DEFAULT
    assert s["NoNewPrivs"].strip() == "1"
    assert s["Seccomp"].strip() == "2"
    lines = rest.split()
    assert lines[0] == "0"  # /proc/kcore masked
    assert "sysctl-written" not in rest and "unshared" not in rest
    # fds: stdio and the one ls opens for /proc/self/fd, nothing of pybuild's
    assert max(int(x) for x in lines[1:]) <= 3, out


@needs_root
def test_workdir_proc_self_fd_does_not_escape_under_userns(image, tmp_path):
    upper, work = _ovl(tmp_path)
    spec = ProcessSpec(["sh", "-c", "ls ../../../; pwd"], dict(ENV), cwd="/proc/self/fd/7", userns=MAP)
    try:
        st, out, err = run_captured(spec, RootfsSpec([image], upper, work))
    except SandboxError as e:
        assert "cwd" in str(e)
        return
    assert st.code != 0 or "host" not in out


@needs_root
def test_nothing_is_left_behind(image, tmp_path):
    # (only our paths: other test runs on the machine may mount things meanwhile)
    ours = lambda: [m for m in _mountinfo() if str(tmp_path) in m or f"pybuild-sandbox-{os.getpid()}-" in m]
    before = ours()
    upper, work = _ovl(tmp_path)
    st, _, err = _run(image, upper, work, "sleep 3017 & echo started", userns=MAP)
    assert st.code == 0, err
    assert ours() == before
    assert sorted(os.listdir(upper)) == []  # mount-point stubs removed as without userns
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert "sleep 3017" not in out
    assert not [n for n in os.listdir("/tmp") if n.startswith(f"pybuild-sandbox-{os.getpid()}-")]


@needs_root
def test_unsupported_file_system_is_a_clear_error(image, tmp_path):
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "none", str(mnt)], check=True)
    try:
        lower = mnt / "img"
        lower.mkdir()
        make_image(lower)
        with pytest.raises(SandboxError, match=r"idmapped mount of .*ramfs.*ramfs file system"):
            run_captured(ProcessSpec(["true"], dict(ENV), userns=MAP), RootfsSpec([lower], None, None))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@needs_root
def test_doctor_reports_userns_with_idmapped_overlay():
    checks = {c.name: c for c in probe.probe()}
    c = checks["userns idmapped overlay"]
    assert c.ok, c
    assert "100000-165535" in c.detail and not c.required


# --- CLI: build and run -------------------------------------------------------------------------

def _manifest(cli, ref: str) -> dict:
    index = json.loads((cli.root / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            return json.loads((cli.root / "blobs" / "sha256" / m["digest"].split(":")[1]).read_text())
    raise AssertionError(f"{ref} not in index.json")


def _layer_headers(cli, ref: str) -> list[tuple]:
    last = _manifest(cli, ref)["layers"][-1]
    blob = cli.root / "blobs" / "sha256" / last["digest"].split(":")[1]
    with tarfile.open(fileobj=gzip.open(blob)) as tf:
        return [(m.name, m.type, m.mode, m.uid, m.gid, m.uname, m.gname, m.linkname, m.size,
                 m.devmajor, m.devminor, sorted(m.pax_headers.items())) for m in tf.getmembers()]


def _run_step_states(plain: str) -> list[str]:
    """The final state (DONE, CACHED) of each RUN step in plain progress output."""
    run_ids = [line.split()[0] for line in plain.splitlines() if line.startswith("#") and "] RUN " in line]
    states = []
    for sid in dict.fromkeys(run_ids):
        words = [line.split()[1] for line in plain.splitlines() if line.startswith(sid + " ")]
        states.append(next(w for w in reversed(words) if w in ("DONE", "CACHED", "ERROR")))
    return states


DOCKERFILE = (
    "FROM busybox:latest\n"
    "RUN mkdir -p /srv/a /data && echo d > /srv/a/f && chown -R 1000:50 /srv && chmod 4750 /srv/a/f"
    " && rm -rf /home && mkdir /home && ln -s /srv/a/f /data/link && echo root > /data/r"
    " && rm /bin/true && echo x >> /etc/passwd\n"
)


@needs_root
def test_build_layer_has_the_same_tar_headers_with_and_without_userns(cli, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    cli("build", "--userns=host", "-t", "plain:1", str(ctx), check=True)
    res = cli("build", "--userns=auto", "--no-cache", "--progress", "plain", "-t", "userns:1", str(ctx), check=True)
    assert _run_step_states(res.stderr) == ["DONE"]
    plain, userns = _layer_headers(cli, "plain:1"), _layer_headers(cli, "userns:1")
    assert plain == userns
    by_name = {h[0]: h for h in userns}
    assert by_name["srv/a/f"][2:5] == (0o4750, 1000, 50)
    assert by_name["data/r"][3:5] == (0, 0)
    assert "bin/.wh.true" in by_name and "home/.wh..wh..opq" in by_name
    # --userns is not part of the cache key: the same step is a cache hit either way
    again = cli("build", "--userns=auto", "--progress", "plain", "-t", "again:1", str(ctx), check=True)
    assert _run_step_states(again.stderr) == ["CACHED"]


@needs_root
def test_build_runs_under_the_mapping_and_cache_mounts_stay_writable(cli, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox:latest\n"
        "RUN cat /proc/self/uid_map > /uid_map.txt\n"
        "RUN --mount=type=cache,target=/cache echo x >> /cache/log && wc -l < /cache/log > /count\n")
    cli("build", "--userns=auto", "-t", "m:1", str(ctx), check=True)
    out = cli("run", "--rm", "--network", "none", "m:1", "cat", "/uid_map.txt", "/count", check=True).stdout
    assert out.split() == ["0", "100000", "65536", "1"]


@needs_root
def test_run_userns_auto_and_exec_joins_it(cli):
    res = cli("run", "--rm", "--userns=auto", "--network", "none", "busybox:latest",
              "sh", "-c", "cat /proc/self/uid_map; id -u; ls -ln /bin/busybox", check=True)
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["0", "100000", "65536"] and lines[1] == "0"
    assert lines[2].split()[2:4] == ["0", "0"]
    cli("run", "-d", "--name", "u1", "--userns=auto", "--network", "none", "busybox:latest",
        "sleep", "300", check=True)
    try:
        out = cli("exec", "u1", "sh", "-c", "cat /proc/self/uid_map; id -u; echo hi > /x; ls -ln /x",
                  check=True).stdout.splitlines()
        assert out[0].split() == ["0", "100000", "65536"] and out[1] == "0"
        assert out[2].split()[2:4] == ["0", "0"]
    finally:
        cli("rm", "-f", "u1", check=True)


@needs_root
def test_userns_flag_is_checked(cli, tmp_path):
    res = cli("run", "--rm", "--userns=keep-id", "busybox:latest", "true")
    assert res.code == 125 and "--userns" in res.stderr  # docker run: 125 for its own errors
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN true\n")
    res = cli("build", "--userns", "private", str(ctx))
    assert res.code == 2 and "--userns" in res.stderr
