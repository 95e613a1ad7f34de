"""Identical steps in parallel stages run once per build (BuildKit merges identical vertices)."""

from __future__ import annotations

import pytest

DOCKERFILE = """\
FROM busybox AS a
RUN head -c 16 /dev/urandom | od -An -tx1 > /r
FROM busybox AS b
RUN head -c 16 /dev/urandom | od -An -tx1 > /r
FROM busybox
COPY --from=a /r /a
COPY --from=b /r /b
"""


@pytest.mark.parametrize("extra", [[], ["--no-cache"]])
def test_identical_steps_of_two_stages_run_once(cli, tmp_path, extra):
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    res = cli("build", "--progress", "plain", *extra, "-t", "dedupe", str(tmp_path), check=True)
    assert res.stderr.count("RUN head -c 16") == 2          # both steps are shown...
    out = cli("run", "--network", "none", "dedupe", "sh", "-c", "cat /a; cat /b", check=True).stdout
    a, b = out[: len(out) // 2], out[len(out) // 2:]
    assert a == b and a.strip()                              # ...but the random bytes were made once
