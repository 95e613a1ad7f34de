"""`pybuild du`: store usage by kind, matching what `du` counts, and honest about what prune frees."""

import json
import subprocess


def _du(path) -> int:
    """Bytes `du` counts (allocated blocks, hard links once, directories included)."""
    return int(subprocess.run(["du", "-sB1", str(path)], capture_output=True, text=True, check=True)
               .stdout.split()[0])


def _report(cli) -> dict:
    return json.loads(cli("du", "--format", "json", check=True).stdout)


def _build_twice(cli, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nWORKDIR /app\nCOPY app.txt ./\n"
                                    "RUN echo built > /app/out.txt && cat /app/app.txt\n"
                                    "RUN --mount=type=cache,target=/var/cache/x sh -c 'cat /app/app.txt >> /var/cache/x/f'\n")
    (ctx / "app.txt").write_text("one\n")
    cli("build", "-t", "app:1", str(ctx), check=True)
    (ctx / "app.txt").write_text("two\n")
    cli("build", "-t", "app:1", str(ctx), check=True)  # the first build's COPY and RUN layers: cache only


def test_du_matches_du_and_prune(cli, tmp_path):
    _build_twice(cli, tmp_path)
    report = _report(cli)
    kinds = report["kinds"]
    assert report["total"]["size"] == sum(k["size"] for k in kinds.values()) == _du(cli.root)
    assert kinds["logs"]["size"] == _du(cli.root / "logs") 
    assert kinds["logs"]["count"] == len(list((cli.root / "logs").iterdir())) >= 1
    snapshots = [p for p in (cli.root / "snapshots").iterdir() if not p.name.startswith(".")]
    assert kinds["snapshots"]["count"] == len(snapshots)
    assert kinds["snapshots"]["size"] == sum(_du(p) for p in snapshots if p.is_dir())
    blobs = list((cli.root / "blobs" / "sha256").iterdir())
    assert kinds["images"]["size"] + kinds["layers"]["size"] == sum(_du(p) for p in blobs)
    assert kinds["images"]["count"] == 2  # busybox:latest, app:1
    assert kinds["records"]["count"] == 7  # WORKDIR, COPY, RUN, RUN; then new COPY, RUN, RUN (WORKDIR hit)
    assert kinds["mounts"]["count"] == 1 and kinds["mounts"]["reclaimable"] == kinds["mounts"]["size"] > 0
    # The first build's COPY and RUN layers (blob and snapshot) are only in the cache: reclaimable.
    assert kinds["layers"]["reclaimable"] > 0 and kinds["snapshots"]["reclaimable"] > 0
    assert kinds["images"]["reclaimable"] == 0

    r = cli("prune", "-a", "-f", check=True)
    after = _report(cli)
    assert after["total"]["size"] == _du(cli.root)
    # What was reclaimable is what went: exactly, kind by kind (directories of the store itself may
    # grow or shrink a block as entries come and go, so the total is compared with du above).
    for kind in ("images", "layers", "snapshots", "logs", "mounts"):
        assert after["kinds"][kind]["size"] == kinds[kind]["size"] - kinds[kind]["reclaimable"], kind
    assert after["total"]["reclaimable"] == 0 and after["kinds"]["records"]["count"] == 0
    assert "Total reclaimed space" in r.stdout


def test_du_table_and_verbose(cli, tmp_path):
    _build_twice(cli, tmp_path)
    out = cli("du", check=True).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "TOTAL", "SIZE", "RECLAIMABLE"]
    assert [line.split("  ")[0] for line in lines[1:10]] == [
        "Images", "Layer blobs", "Snapshots", "Cache records", "Cache mounts", "Step logs", "Temporary files",
        "Other", "Total"]
    verbose = cli("du", "--verbose", check=True).stdout
    ids = [line.split("\t")[-1] for line in verbose.splitlines() if line.startswith("ID:")]
    report = _report(cli)
    assert sorted(ids) == sorted([r["key"] for r in report["records"]] + ["/var/cache/x"])
    assert "Description:\t[3/5] COPY app.txt ./" in verbose
    assert "Last used:\tnever" in verbose  # nothing was reused yet
    assert "Type:\t\tcache mount (1 instance)" in verbose
    assert verbose.rstrip().endswith(lines[-1].rstrip())  # the summary table follows the records
    assert cli("du", "--format", "yaml").code == 2
