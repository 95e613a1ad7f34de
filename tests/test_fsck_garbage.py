"""`pybuild fsck` on a store after ordinary rebuilds: what it calls garbage, and why."""

import re


def _ctx(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN head -c 1000 /dev/urandom > /r\nRUN echo two > /t\n")
    return ctx


def test_cached_rebuild_leaves_no_garbage(cli, tmp_path):
    ctx = _ctx(tmp_path)
    cli("build", "-t", "g:1", str(ctx), check=True)
    cli("build", "-t", "g:1", str(ctx), check=True)  # fully cached: the same image, nothing left over
    r = cli("fsck")
    assert r.code == 0 and r.stdout == "", r.stdout + r.stderr
    # a changed step: the old layers stay held by their cache records, not garbage either
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN head -c 1000 /dev/urandom > /r\nRUN echo three > /t\n")
    cli("build", "-t", "g:1", str(ctx), check=True)
    r = cli("fsck")
    assert r.code == 0 and r.stdout == "", r.stdout + r.stderr


def test_no_cache_rebuild_keeps_the_old_image_dangling(cli, tmp_path):
    """The image a rebuild takes the tag from stays as docker's <none> image (it was garbage
    before: its snapshots no longer named by any cache record), until `image prune`."""
    ctx = _ctx(tmp_path)
    old = cli("build", "-q", "-t", "g:1", str(ctx), check=True).stdout.strip()
    new = cli("build", "-q", "--no-cache", "-t", "g:1", str(ctx), check=True).stdout.strip()
    assert old != new
    assert cli("fsck", check=True).stdout == ""
    rows = cli("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", check=True).stdout.splitlines()
    assert f"<none>:<none> {old[7:19]}" in rows and f"g:1 {new[7:19]}" in rows
    assert f"deleted: {old}" in cli("image", "prune", "-f", check=True).stdout
    assert cli("fsck", check=True).stdout == ""


def test_garbage_left_by_a_busy_store_is_explained(cli, tmp_path):
    from pybuild.cache import gc

    ctx = _ctx(tmp_path)
    cli("build", "-t", "g:1", str(ctx), check=True)
    cli("build", "--no-cache", "-t", "g:1", str(ctx), check=True)
    with gc.build_lease(cli.root):  # a build running: image prune drops the image, not its data
        res = cli("image", "prune", "-f", check=True)
    assert "unreferenced blobs are left for the next rmi or prune" in res.stderr
    r = cli("fsck")
    assert r.code == 0, r.stdout + r.stderr  # garbage, not damage
    lines = r.stdout.splitlines()
    assert lines and all(re.fullmatch(r"snapshot sha256:[0-9a-f]{64}: .*", line) for line in lines)
    for line in lines:
        assert "not used by any image, container or cache record" in line
        assert "removed (rmi, image prune) while the store was busy" in line and "interrupted build" in line
        assert "prune removes it" in line
    cli("prune", "-f", check=True)
    assert cli("fsck", check=True).stdout == ""


def _image_blobs(cli, ref):
    """(config digest, [layer digests]) of ``ref`` in the cli's store, read from the files."""
    import json

    index = json.loads((cli.root / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"]
                  if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == ref)
    manifest = json.loads((cli.root / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    return manifest["config"]["digest"], [layer["digest"] for layer in manifest["layers"]]


def _corrupt(cli, digest):
    with open(cli.root / "blobs" / "sha256" / digest.split(":")[1], "ab") as f:
        f.write(b"x")


def _one_error_line(res, digest, code=1):
    assert res.code == code, res.output
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), res.stderr
    assert digest in lines[0] and "run `pybuild fsck --repair`" in lines[0], res.stderr


def test_a_corrupt_config_blob_is_one_error_line_naming_it_and_the_repair(cli, tmp_path):
    """One damaged blob: everyday commands say which blob and what to run, no traceback; `images`
    still lists the other images and warns about the broken one (was: DigestMismatch traceback)."""
    cli("tag", "busybox:latest", "ok:1", check=True)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nLABEL broken=yes\n")
    cli("build", "-t", "broken:1", str(ctx), check=True)
    config, _ = _image_blobs(cli, "broken:1")
    _corrupt(cli, config)

    res = cli("images")
    assert res.code == 0 and "Traceback" not in res.stderr, res.output
    assert [line.split()[:2] for line in res.stdout.splitlines()[1:]] == [["busybox", "latest"], ["ok", "1"]]
    assert res.stderr.startswith("WARNING: image broken:1 not listed: ") and config in res.stderr
    assert "pybuild fsck --repair" in res.stderr
    _one_error_line(cli("run", "--rm", "--network", "none", "broken:1", "true"), config, code=125)
    _one_error_line(cli("history", "broken:1"), config)
    _one_error_line(cli("inspect", "broken:1"), config)
    (tmp_path / "ctx2").mkdir()
    (tmp_path / "ctx2" / "Dockerfile").write_text("FROM broken:1\nRUN true\n")
    res = cli("build", "--progress", "plain", "-t", "child:1", str(tmp_path / "ctx2"))
    assert res.code == 1 and "Traceback" not in res.stderr and res.stderr.strip().splitlines()[-1].startswith(
        f"ERROR: blob {config} is corrupt"), res.stderr
    # and the advice is right: after the repair the rest of the store works
    assert cli("fsck", "--repair").code == 0
    assert "broken" not in cli("images", check=True).stdout


def test_a_corrupt_layer_blob_makes_save_fail_with_one_line_and_write_nothing(cli, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo layer > /l\n")
    cli("build", "-t", "lay:1", str(ctx), check=True)
    _, layers = _image_blobs(cli, "lay:1")
    _corrupt(cli, layers[-1])
    for fmt in ("oci", "docker"):
        out = tmp_path / f"{fmt}.tar"
        _one_error_line(cli("save", "--format", fmt, "-o", str(out), "lay:1"), layers[-1])
        assert not out.exists()
    res = cli("save", "lay:1")  # to stdout (a pipe): nothing written when the store is damaged
    _one_error_line(res, layers[-1])
    assert res.stdout == "" and list((cli.root / "tmp").iterdir()) == []
