"""`pybuild prune --filter until=DURATION` and `--keep-storage SIZE` (docker builder prune's)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from pybuild.commands.prune import parse_duration, parse_size


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("90m", 5400), ("1h30m", 5400), ("1.5h", 5400),
                                          ("10s", 10), ("500ms", 0.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "24", "1d", "h", "1h 30m", "-1h"])
def test_bad_duration(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text,size", [("100000", 100000), ("512MiB", 512 << 20), ("10GB", 10 << 30),
                                       ("1g", 1 << 30), ("2k", 2048), ("1.5m", 3 << 19)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def _records(root) -> dict[str, str]:
    with sqlite3.connect(root / "cache" / "index.db") as db:
        return dict(db.execute("SELECT key, description FROM records"))


def _age(root, description_part: str, when: str) -> None:
    with sqlite3.connect(root / "cache" / "index.db") as db:
        db.execute("UPDATE records SET last_used = ?, created = ? WHERE description LIKE ?",
                   (when, when, f"%{description_part}%"))


def _two_builds(cli, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for size, name in ((200000, "/old"), (100000, "/new")):
        (ctx / "Dockerfile").write_text(f"FROM busybox\nRUN head -c {size} /dev/urandom > {name}\n")
        image_id = cli("build", "-q", str(ctx), check=True).stdout.strip()
        cli("rmi", image_id, check=True)  # only the build cache is left holding the layer (no <none> image)


def test_filter_until_spares_recent_cache(cli, tmp_path):
    _two_builds(cli, tmp_path)
    _age(cli.root, "/old", "2020-01-01T00:00:00Z")
    res = cli("prune", "-a", "-f", "--filter", "until=24h", check=True)
    left = _records(cli.root)
    assert not any("/old" in d for d in left.values())
    assert any("/new" in d for d in left.values())
    assert "Total reclaimed space" in res.stdout


def test_keep_storage_removes_least_recently_used_first(cli, tmp_path):
    _two_builds(cli, tmp_path)
    _age(cli.root, "/old", "2020-01-01T00:00:00Z")
    # room for the newer ~100 kB layer (blob + snapshot), not for the older 200 kB one as well
    cli("prune", "-a", "-f", "--keep-storage", "450k", check=True)
    left = _records(cli.root).values()
    assert not any("/old" in d for d in left) and any("/new" in d for d in left)
    cli("prune", "-a", "-f", "--keep-storage", "0", check=True)
    assert _records(cli.root) == {}


def test_plain_prune_all_still_drops_everything(cli, tmp_path):
    _two_builds(cli, tmp_path)
    cli("prune", "-a", "-f", check=True)
    assert _records(cli.root) == {}


@pytest.mark.parametrize("flag,msg", [(["--filter", "until=1x"], "--filter until=1x: invalid duration"),
                                      (["--filter", "label=x"], "only until=DURATION"),
                                      (["--keep-storage", "lots"], "--keep-storage lots: invalid size")])
def test_bad_flags_exit_2(cli, flag, msg):
    res = cli("prune", "-f", *flag)
    assert res.code == 2 and msg in res.stderr


def test_keep_storage_counts_only_what_prune_can_free(cli, tmp_path):
    """A layer an image uses is never freed: it must not count against --keep-storage, or the
    budget is spent before any cache and even the newest record that fits is removed."""
    img = tmp_path / "img"
    img.mkdir()
    (img / "Dockerfile").write_text("FROM busybox\nRUN head -c 600000 /dev/urandom > /big\n")
    cli("build", "-t", "big:1", str(img), check=True)  # its ~1.2 MB layer (blob + snapshot): the image's
    _two_builds(cli, tmp_path)
    _age(cli.root, "/big", "2019-01-01T00:00:00Z")
    _age(cli.root, "/old", "2020-01-01T00:00:00Z")
    # freeable: /old's ~400 kB and /new's ~200 kB; room for /new only
    report = json.loads(cli("du", "--format", "json", "--keep-storage", "450k", check=True).stdout)
    reclaimable = {r["description"]: r["reclaimable"] for r in report["records"]}
    assert [v for d, v in reclaimable.items() if "/new" in d] == [False]
    assert [v for d, v in reclaimable.items() if "/old" in d] == [True]
    row = report["kinds"]["records"]
    assert 350_000 < row["reclaimable"] < 450_000  # /old's layer, not the image's
    cli("prune", "-a", "-f", "--keep-storage", "450k", check=True)
    left = _records(cli.root).values()
    assert not any("/old" in d for d in left) and any("/new" in d for d in left)
    assert cli("images", check=True).stdout.count("big") == 1
