"""A cached step always comes with the parent layer it was built on.

Regression (found by a new user): a `--no-cache` build replaced step 2's record with a new
layer and then failed at step 3; the next plain build took step 2's new layer from cache and
stacked step 3's OLD layer (built on the old step 2) on it: an image whose /stamp and
/stamp.copy differ, a filesystem no build ever made."""

from __future__ import annotations

DOCKERFILE = """FROM busybox:latest
RUN cat /proc/sys/kernel/random/uuid > /stamp
ARG FAIL=0
RUN cp /stamp /stamp.copy && test "$FAIL" = 0
"""


def _stamps(cli, image: str) -> list[str]:
    return cli("run", "--rm", "--network", "none", image, "cat", "/stamp", "/stamp.copy", check=True).stdout.split()


def test_a_failed_no_cache_build_does_not_mix_layers(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    cli("build", "-q", "-t", "inc:1", str(tmp_path), check=True)
    first = _stamps(cli, "inc:1")
    assert first[0] == first[1]
    res = cli("build", "--no-cache", "--progress=plain", "--build-arg", "FAIL=1", "-t", "inc:1", str(tmp_path))
    assert res.code == 1
    res = cli("build", "--progress=plain", "-t", "inc:1", str(tmp_path), check=True)
    assert "#2 CACHED" in res.stderr  # step 2: the --no-cache build's new layer
    assert "#3 CACHED" not in res.stderr  # step 3 was built on the old one: it must run again
    again = _stamps(cli, "inc:1")
    assert again[0] == again[1] != first[0]
    # and from here on it is cached as a whole
    res = cli("build", "--progress=plain", "-t", "inc:1", str(tmp_path), check=True)
    assert "#2 CACHED" in res.stderr and "#3 CACHED" in res.stderr
    assert _stamps(cli, "inc:1") == again


def test_a_no_cache_rebuild_leaves_a_consistent_chain(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    cli("build", "-q", "-t", "inc:1", str(tmp_path), check=True)
    cli("build", "-q", "--no-cache", "-t", "inc:1", str(tmp_path), check=True)
    rebuilt = _stamps(cli, "inc:1")
    res = cli("build", "--progress=plain", "-t", "inc:1", str(tmp_path), check=True)
    assert "#2 CACHED" in res.stderr and "#3 CACHED" in res.stderr  # the --no-cache build's chain
    assert _stamps(cli, "inc:1") == rebuilt and rebuilt[0] == rebuilt[1]
