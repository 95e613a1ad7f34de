"""`pybuild image prune`: dangling (<none>) images go, named ones and those a container uses stay;
-a takes every image no container uses; the build cache is left for `pybuild prune`."""

from __future__ import annotations

import re


def _rows(cli) -> list[list[str]]:
    return [ln.split() for ln in cli("images", check=True).stdout.splitlines()[1:]]


def test_image_prune_removes_dangling_then_unused(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nRUN echo dangling > /d\n")
    dangling = cli("build", "-q", str(tmp_path), check=True).stdout.strip()
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nRUN echo used > /u\n")
    used = cli("build", "-q", str(tmp_path), check=True).stdout.strip()
    cli("run", "--name", "keeper", "--network", "none", used, "true", check=True)  # stopped, still uses it
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nRUN echo named > /n\n")
    cli("build", "-t", "named:1", str(tmp_path), check=True)

    res = cli("image", "prune", input="n\n")  # docker's prompt; "no" removes nothing
    assert res.code == 0 and "WARNING! This will remove all dangling images." in res.stdout
    assert sum(r[0] == "<none>" for r in _rows(cli)) == 2

    res = cli("image", "prune", "-f", check=True)
    assert res.stdout.splitlines()[:2] == ["Deleted Images:", f"deleted: {dangling}"]
    assert re.search(r"^Total reclaimed space: \d", res.stdout, re.M)
    ids = [r[2] for r in _rows(cli)]
    assert dangling[7:19] not in ids and used[7:19] in ids and any(r[0] == "named" for r in _rows(cli))
    assert cli("image", "prune", "-f", check=True).stdout == "Total reclaimed space: 0B\n"
    # the build cache stayed: the dangling image's build is all cache hits
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nRUN echo dangling > /d\n")
    res = cli("build", "--progress=plain", str(tmp_path), check=True)
    assert "#2 CACHED" in res.stderr, res.stderr
    cli("image", "prune", "-f", check=True)

    res = cli("image", "prune", "-a", "-f", check=True)
    assert "untagged: named:1" in res.stdout and used not in res.stdout
    assert [r[2] for r in _rows(cli)] == [used[7:19]]  # the container's image stays
    assert cli("run", "--rm", "--network", "none", used, "cat", "/u", check=True).stdout == "used\n"
    cli("rm", "keeper", check=True)
    assert cli("image", "prune", "-a", "-f", check=True).stdout.splitlines()[1] == f"deleted: {used}"
    assert _rows(cli) == []  # busybox:latest too: no container uses it (as docker)
    assert cli("fsck").code == 0
