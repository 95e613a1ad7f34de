"""`pybuild du`: store usage by kind, matching what `du` counts, and honest about what prune frees."""

import contextlib
import json
import re
import sqlite3
import subprocess

from pybuild.commands._format import human_size


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
    cli("build", "-t", "app:1", str(ctx), check=True)
    # the first app:1 is dangling (<none>) now: drop its entry but not its data, so that its
    # manifest and config are unreferenced and its COPY and RUN layers cache-only
    dangling = cli("images", "-q", "-f", "dangling=true", check=True).stdout.split()
    assert len(dangling) == 1
    cli("rmi", "--no-prune", dangling[0], check=True)


def test_du_matches_du_and_prune(cli, tmp_path):
    _build_twice(cli, tmp_path)
    report = _report(cli)
    kinds = report["kinds"]
    assert report["total"]["size"] == sum(k["size"] for k in kinds.values()) == _du(cli.root)
    assert kinds["logs"]["size"] == _du(cli.root / "logs") 
    assert kinds["logs"]["count"] == len(list((cli.root / "logs").iterdir())) >= 1
    snapshots = [p for p in (cli.root / "snapshots").iterdir() if not p.name.startswith(".")]
    blobs = list((cli.root / "blobs" / "sha256").iterdir())
    index = [p for p in (cli.root / "cache").iterdir() if p.name.startswith("index.db")] + [cli.root / "cache" / "last"]
    # Every blob and snapshot is in exactly one of these rows, "Cache records" holding the index
    # and the layers (blob and snapshot) only cached steps hold.
    assert sum(kinds[k]["size"] for k in ("images", "layers", "snapshots", "records")) == \
        sum(_du(p) for p in blobs + snapshots + index)
    # The first build's COPY layer (and its RUN's, unless both builds ran within one second and
    # made the same layer) is only in the cache: counted with the records.
    private = {r["layer"] for r in report["records"] if r["layer"] and not r["shared"]}
    assert 1 <= len(private) <= 2
    assert kinds["snapshots"]["count"] == len(snapshots) - len(private)
    assert kinds["layers"]["count"] == len(blobs) - len(private) - 4  # nor the tagged images' manifests, configs
    # ... and are the "of which" sub-counts of "Cache records", so that the counts add up to what is on disk
    held = kinds["records"]["layers"], kinds["records"]["snapshots"]
    assert held[0]["count"] == held[1]["count"] == len(private)
    assert kinds["snapshots"]["count"] + held[1]["count"] == len(snapshots)
    assert kinds["layers"]["count"] + held[0]["count"] + 4 == len(blobs)
    private_blobs = [p for p in blobs if "sha256:" + p.name in private]
    assert held[0]["size"] == sum(_du(p) for p in private_blobs) > 0
    assert 0 < held[0]["size"] + held[1]["size"] <= kinds["records"]["size"]
    assert kinds["images"]["count"] == 2  # busybox:latest, app:1
    assert kinds["records"]["count"] == 7  # WORKDIR, COPY, RUN, RUN; then new COPY, RUN, RUN (WORKDIR hit)
    assert kinds["mounts"]["count"] == 1 and kinds["mounts"]["reclaimable"] == kinds["mounts"]["size"] > 0
    assert kinds["records"]["reclaimable"] > 0
    # the first build's manifest and config: no image uses them any more
    assert kinds["layers"]["reclaimable"] > 0 and kinds["snapshots"]["reclaimable"] == 0
    assert kinds["images"]["reclaimable"] == 0

    r = cli("prune", "-a", "-f", check=True)
    after = _report(cli)
    assert after["total"]["size"] == _du(cli.root)
    # What was reclaimable is what went: exactly, kind by kind (directories of the store itself may
    # grow or shrink a block as entries come and go, so the total is compared with du above).
    for kind in ("images", "layers", "snapshots", "records", "logs", "mounts"):
        assert after["kinds"][kind]["size"] == kinds[kind]["size"] - kinds[kind]["reclaimable"], kind
    assert after["total"]["reclaimable"] == 0 and after["kinds"]["records"]["count"] == 0
    assert "Total reclaimed space" in r.stdout


def test_du_table_and_verbose(cli, tmp_path):
    _build_twice(cli, tmp_path)
    out = cli("du", check=True).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "TOTAL", "SIZE", "RECLAIMABLE"]
    assert [re.split(r"(?<=\S)\s{2,}", line)[0] for line in lines[1:12]] == [
        "Images", "Layer blobs", "Snapshots", "Cache records", "  of which layer blobs", "  of which snapshots",
        "Cache mounts", "Step logs", "Temporary files", "Other", "Total"]
    verbose = cli("du", "--verbose", check=True).stdout
    ids = [line.split("\t")[-1] for line in verbose.splitlines() if line.startswith("ID:")]
    report = _report(cli)
    assert sorted(ids) == sorted([r["key"] for r in report["records"]] + ["cache index", "/var/cache/x"])
    assert "Description:\t[3/5] COPY app.txt ./" in verbose
    assert "Last used:\tnever" in verbose  # nothing was reused yet
    assert "Type:\t\tcache mount (1 instance)" in verbose
    assert verbose.rstrip().endswith(lines[-1].rstrip())  # the summary table follows the records
    assert cli("du", "--format", "yaml").code == 2


# -- du and prune agree ---------------------------------------------------------------------------

def _prune_table(stdout: str) -> dict[str, tuple[str, str]]:
    """prune's report: {row label: (count, size)} and the total line."""
    rows = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 3 and cells[0] != "TYPE":
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def _report_with(cli, *flags) -> dict:
    return json.loads(cli("du", "--format", "json", *flags, check=True).stdout)


def _index_rows(root) -> int:
    with contextlib.closing(sqlite3.connect(root / "cache" / "index.db")) as db:
        return db.execute("SELECT count(*) FROM records").fetchone()[0]


def test_du_summary_row_is_the_sum_of_the_verbose_listing(cli, tmp_path):
    _build_twice(cli, tmp_path)
    report = _report(cli)
    row, records, index = report["kinds"]["records"], report["records"], report["index"]
    assert row["count"] == len(records) == 7
    assert row["size"] == sum(r["size"] for r in records) + index["size"]
    assert row["reclaimable"] == sum(r["size"] for r in records if r["reclaimable"]) + index["reclaimable"]
    # the first build's COPY (and RUN, see above): private to the cache, listed with their size
    private = [r for r in records if not r["shared"] and r["layer"]]
    assert 1 <= len(private) <= 2 and all(r["size"] > 0 and r["reclaimable"] for r in private)
    assert row["reclaimable"] >= sum(r["size"] for r in private) > 0
    # and the text says the same: the summary's row is the one `du -v` ends with
    summary = cli("du", check=True).stdout
    line = next(ln for ln in summary.splitlines() if ln.startswith("Cache records"))
    assert line.split()[2:5] == ["7", human_size(row["size"]), human_size(row["reclaimable"])]
    assert line in cli("du", "-v", check=True).stdout


def test_prune_reclaims_what_du_calls_reclaimable(cli, tmp_path):
    _build_twice(cli, tmp_path)
    before = _report(cli)
    r = cli("prune", "-a", "-f", check=True)
    # counts and sizes by du's kinds, not a list of digests (that is -v's)
    assert "sha256:" not in r.stdout
    table = _prune_table(r.stdout)
    labels = {"layers": "Layer blobs", "snapshots": "Snapshots", "records": "Cache records",
              "mounts": "Cache mounts", "logs": "Step logs", "tmp": "Temporary files"}
    for kind, label in labels.items():
        assert table[label][1] == human_size(before["kinds"][kind]["reclaimable"]), kind
    assert table["Cache records"][0] == "7" and table["Step logs"][0] == str(before["kinds"]["logs"]["count"])
    assert r.stdout.strip().splitlines()[-1] == \
        f"Total reclaimed space: {human_size(before['total']['reclaimable'], 4)}"
    after = _report(cli)
    assert after["total"]["reclaimable"] == 0
    assert after["kinds"]["records"]["count"] == 0 == _index_rows(cli.root) and after["records"] == []


def test_prune_with_a_filter_frees_what_du_with_it_calls_reclaimable(cli, tmp_path):
    _build_twice(cli, tmp_path)
    old = "2020-01-01T00:00:00Z"
    # the records of the first build's layers no image uses (its COPY, maybe its RUN) are old
    aged = {r["key"] for r in _report(cli)["records"] if r["layer"] and not r["shared"]}
    assert 1 <= len(aged) <= 2
    with contextlib.closing(sqlite3.connect(cli.root / "cache" / "index.db")) as db, db:
        db.executemany("UPDATE records SET created = ?, last_used = NULL WHERE key = ?", [(old, k) for k in aged])
    before = _report_with(cli, "--filter", "until=24h")
    assert {r["key"] for r in before["records"] if r["reclaimable"]} == aged
    assert before["kinds"]["logs"]["reclaimable"] == before["kinds"]["mounts"]["reclaimable"] == 0  # -a only
    r = cli("prune", "-a", "-f", "--filter", "until=24h", check=True)
    assert r.stdout.strip().splitlines()[-1] == \
        f"Total reclaimed space: {human_size(before['total']['reclaimable'], 4)}"
    assert _prune_table(r.stdout)["Cache records"][0] == str(len(aged))
    after = _report_with(cli, "--filter", "until=24h")
    assert after["kinds"]["records"]["count"] == before["kinds"]["records"]["count"] - len(aged) == _index_rows(cli.root)
    assert not aged & {r["key"] for r in after["records"]}
    assert after["total"]["reclaimable"] == 0
    # -v names what went
    assert cli("prune", "-a", "-f", "-v", check=True).stdout.startswith("Deleted build cache objects:\ncache record ")


def test_prune_vacuums_the_index_and_counts_its_shrink(cli):
    from pybuild.cache.index import CacheIndex, CacheRecord

    idx = CacheIndex(cli.root)
    idx.put_many(CacheRecord(f"k{i:05d}", None, "2024-01-01T00:00:00Z", 1.0, "RUN " + "x" * 300)
                 for i in range(4000))
    idx.close()
    db = cli.root / "cache" / "index.db"
    size = db.stat().st_size
    before = _report(cli)
    assert before["kinds"]["records"]["count"] == 4000
    assert before["index"]["reclaimable"] > size // 2 and before["kinds"]["records"]["reclaimable"] == \
        before["index"]["reclaimable"]  # records without layers: only their rows take space
    r = cli("prune", "-a", "-f", check=True)
    assert db.stat().st_size < size // 10 and not db.with_name("index.db-wal").exists()
    assert b"k00001" not in db.read_bytes()
    assert _prune_table(r.stdout)["Cache records"] == ("4000", human_size(before["kinds"]["records"]["reclaimable"]))
    assert r.stdout.strip().splitlines()[-1] == \
        f"Total reclaimed space: {human_size(before['total']['reclaimable'], 4)}"
    after = _report(cli)
    assert after["kinds"]["records"]["count"] == 0 and after["total"]["reclaimable"] == 0


def test_prune_verbose_lists_by_the_rows_of_its_table(cli, tmp_path):
    """-v's lines per kind are the table's counts per row: a blob or snapshot only cache records
    held is listed (and counted) with "Cache records", not as a "Layer blobs"/"Snapshots" one."""
    _build_twice(cli, tmp_path)
    before = _report(cli)
    private = {r["layer"] for r in before["records"] if r["layer"] and not r["shared"]}
    r = cli("prune", "-a", "-f", "-v", check=True)
    listed: dict[str, int] = {}
    for line in r.stdout.split("\n\n")[0].splitlines()[1:]:
        kind = line.rsplit(" ", 1)[0]
        listed[kind] = listed.get(kind, 0) + 1
    table = _prune_table(r.stdout)
    assert listed.get("blob", 0) == int(table["Layer blobs"][0]) > 0  # the first app:1's manifest, config
    assert listed.get("snapshot", 0) == int(table["Snapshots"][0])
    assert listed.get("cache record layer blob", 0) == int(table["of which layer blobs"][0]) == len(private)
    assert listed.get("cache record snapshot", 0) == int(table["of which snapshots"][0]) == len(private)
    assert listed["cache record"] == int(table["Cache records"][0]) == 7
    # and by du's rows: what du called the records' layers and snapshots is what went as theirs
    held = before["kinds"]["records"]
    assert table["of which layer blobs"] == (str(held["layers"]["count"]), human_size(held["layers"]["reclaimable"]))
    assert table["of which snapshots"] == (str(held["snapshots"]["count"]),
                                           human_size(held["snapshots"]["reclaimable"]))
    assert table["Snapshots"][1] == human_size(before["kinds"]["snapshots"]["reclaimable"])
