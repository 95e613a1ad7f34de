"""buildx flags CI scripts pass: --add-host (build and run), --load, --provenance/--sbom=false,
--check / --call=check. None is silently ignored: what pybuild cannot honour is an error."""

from __future__ import annotations

import json


def test_build_add_host_reaches_run_steps_and_their_keys(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nRUN grep -w db /etc/hosts > /found\n")
    cli("build", "-q", "--add-host", "db:10.1.2.3", "-t", "h:1", str(tmp_path), check=True)
    out = cli("run", "--rm", "--network", "none", "h:1", "cat", "/found", check=True).stdout
    assert out.split() == ["10.1.2.3", "db"]
    # the address can end up in the result: another one is another step (BuildKit keys it too)
    res = cli("build", "--progress=plain", "--add-host", "db=10.9.9.9", "-t", "h:2", str(tmp_path), check=True)
    assert "#2 CACHED" not in res.stderr
    assert cli("run", "--rm", "--network", "none", "h:2", "cat", "/found", check=True).stdout.split()[0] == "10.9.9.9"
    res = cli("build", "--progress=plain", "--add-host", "db:10.9.9.9", "-t", "h:2", str(tmp_path), check=True)
    assert "#2 CACHED" in res.stderr
    for bad, message in ((["--add-host", "nocolon"], "HOST:IP or HOST=IP"),
                         (["--add-host", "db:notanip"], "'notanip' is not an IP address"),
                         (["--add-host", "db:host-gateway"], "no bridge network")):
        res = cli("build", *bad, str(tmp_path))
        assert res.code == 2 and message in res.stderr, res.stderr


def test_run_add_host(cli):
    res = cli("run", "--rm", "--network", "none", "--add-host", "a:1.2.3.4", "--add-host", "b=::1",
              "busybox:latest", "cat", "/etc/hosts", check=True)
    assert "1.2.3.4\ta\n" in res.stdout and "::1\tb\n" in res.stdout
    res = cli("run", "--rm", "--network", "host", "--add-host", "gw:host-gateway", "busybox:latest",
              "grep", "-w", "gw", "/etc/hosts", check=True)
    assert res.stdout == "127.0.0.1\tgw\n"
    res = cli("run", "--rm", "--network", "none", "--add-host", "gw:host-gateway", "busybox:latest", "true")
    assert res.code == 125 and "--network none has no way to the host" in res.stderr
    cli("run", "--name", "hosts", "--network", "none", "--add-host", "a:1.2.3.4", "busybox:latest", "true", check=True)
    inspected = json.loads(cli("inspect", "hosts", check=True).stdout)[0]
    assert inspected["HostConfig"]["ExtraHosts"] == ["a:1.2.3.4"]
    cli("rm", "hosts", check=True)


def test_load_provenance_sbom(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nRUN echo x > /x\n")
    cli("build", "-q", "--load", "--provenance=false", "--sbom=false", "-t", "l:1", str(tmp_path), check=True)
    assert "l " in cli("images", check=True).stdout
    for bad, message in ((["--provenance=true"], "pybuild makes no attestations"),
                         (["--sbom", "1"], "pybuild makes no attestations"),
                         (["--provenance", "mode=max"], "pybuild makes no attestations"),
                         (["--load", "-o", f"type=tar,dest={tmp_path / 'x.tar'}"], "--load: conflicts with --output type=tar"),
                         (["--load", "-o", str(tmp_path / "dir")], "--load: conflicts with --output type=local")):
        res = cli("build", *bad, str(tmp_path))
        assert res.code == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "dir").exists()


def test_check_and_call_check_lint_only(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest AS Base\nRUN false\nCMD echo hi\n")
    for flags in (["--check"], ["--call=check"], ["--call", "check"]):
        res = cli("build", *flags, str(tmp_path))
        assert res.code == 0, res.output  # warnings only, and RUN false never ran
        assert "StageNameCasing" in res.stdout and "JSONArgsRecommended" in res.stdout
    assert cli("check", str(tmp_path)).stdout == res.stdout  # exactly `pybuild check`
    assert "<none>" not in cli("images", check=True).stdout
    res = cli("build", "--call", "outline", str(tmp_path))
    assert res.code == 2 and "invalid choice: 'outline'" in res.stderr


def test_archive_output_names_the_archive_not_the_local_store(cli, tmp_path):
    """buildx: an --output of another type replaces the local store, so -t only names the image
    in the archive (was: also tagged here, and overwrote a local busybox:latest)."""
    import tarfile

    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nRUN echo a > /a\n")
    before = cli("images", "-q", "--no-trunc", "busybox:latest", check=True).stdout
    res = cli("build", "--progress=plain", "-t", "busybox:latest", "-o", f"type=oci,dest={tmp_path / 'a.tar'}",
              str(tmp_path), check=True)
    assert "naming to" not in res.stderr
    assert cli("images", "-q", "--no-trunc", "busybox:latest", check=True).stdout == before
    assert "<none>" not in cli("images", check=True).stdout
    with tarfile.open(tmp_path / "a.tar") as tf:
        index = json.load(tf.extractfile("index.json"))
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "busybox:latest"


def test_bare_provenance_asks_for_one(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\n")
    res = cli("build", str(tmp_path), "--provenance")
    assert res.code == 2 and "--provenance=true: pybuild makes no attestations" in res.stderr
