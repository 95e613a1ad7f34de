"""An image a container uses stays: rmi needs -f (and then only untags), fsck counts it as used.

Regression (found by trying it): `rmi` of a running container's image deleted it, `fsck` then
called the container's snapshot unreferenced and `fsck --repair` removed it under the container.
"""

from __future__ import annotations


def test_rmi_of_a_containers_image_needs_force_and_keeps_the_data(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nRUN echo 4 > /four\n")
    cli("build", "-t", "q:4", str(tmp_path), check=True)
    cli("run", "-d", "--network", "none", "--name", "user", "q:4", "sleep", "300", check=True)
    try:
        res = cli("rmi", "q:4")
        assert res.code == 1 and "conflict: unable to remove repository reference 'q:4' (must force)" in res.stderr
        assert "q" in cli("images", check=True).stdout
        res = cli("rmi", "-f", "q:4", check=True)
        assert "Untagged: q:4" in res.stdout and "Deleted" not in res.stdout
        cli("prune", "-a", "-f", check=True)
        fsck = cli("fsck", "--repair")
        assert fsck.code == 0, fsck.output
        assert cli("exec", "user", "cat", "/four", check=True).stdout == "4\n"
    finally:
        cli("rm", "-f", "user")
    cli("prune", "-a", "-f", check=True)
    assert cli("fsck").code == 0
