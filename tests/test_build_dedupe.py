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


RANDOM_STEP = """\
FROM busybox
RUN sleep 3 && head -c 16 /dev/urandom | od -An -tx1 > /r
RUN cat /r
"""


def test_two_builds_at_once_run_a_step_once(cli, tmp_path):
    # Two processes on one store (two CI jobs on one runner): the second waits for the first's
    # step instead of running it again, then uses its result; both images are the same.
    import subprocess
    import sys

    (tmp_path / "Dockerfile").write_text(RANDOM_STEP)
    first = subprocess.Popen([sys.executable, "-m", "pybuild", "build", "--progress", "plain", "-t", "one",
                              str(tmp_path)], env=cli.env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        lines = []
        for line in first.stderr:  # its miss is reported once it holds the step's lock
            lines.append(line)
            if line.startswith("#2 cache miss"):
                break
        second = cli("build", "--progress", "plain", "-t", "two", str(tmp_path), check=True)
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, "".join(lines) + err
    assert f"#2 waiting: another pybuild process {first.pid} is running this step" in second.stderr
    assert "#2 CACHED" in second.stderr and "#2 DONE" not in second.stderr
    images = cli("images", "--digests", check=True).stdout
    rows = {ln.split()[0]: ln.split()[2:4] for ln in images.splitlines()[1:]}  # DIGEST, IMAGE ID
    assert rows["one"] == rows["two"], images
