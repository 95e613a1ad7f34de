"""`pybuild du [--verbose] [--format table|json] [--filter until=D] [--keep-storage SIZE]`: disk
usage of the store by kind, like `docker system df` and `docker buildx du`.

Every byte of `$PYBUILD_ROOT` is counted once, in the first kind that claims it (allocated blocks,
hard links once, directories included: what `du -sB1 $PYBUILD_ROOT` counts), so the rows add up
to the total. RECLAIMABLE is exactly what `pybuild prune -a` with the same `--filter` and
`--keep-storage` would free now: both use one plan (`cache.gc.plan_prune`), and `prune` reports
what it removed by the same kinds and in the same units.

"Cache records" holds the cache index (its database, shrunk by prune's VACUUM, and the
last-build records) and the layer blobs and snapshots that only cache records hold; an image's
or container's layers are "Layer blobs" and "Snapshots" even when a record names them too. Its
TOTAL counts records; its "of which layer blobs" and "of which snapshots" rows count (and size)
the blobs and snapshots it holds, so every blob file and snapshot directory is counted once:
Layer blobs + of which layer blobs (+ the images' manifests and configs) and Snapshots + of which
snapshots are what is on disk. `prune -v` lists what it removed by the same rows. With
--verbose, every record is listed with the bytes it accounts for in that row (a layer several
records share is counted with one of them: a record prune keeps, if any), so the listed sizes
add up to the row's SIZE and those of the records listed as reclaimable to its RECLAIMABLE.
"""

from __future__ import annotations

NAME = "du"

KINDS = (
    ("images", "Images", "manifests and configs of tagged images"),
    ("layers", "Layer blobs", "layer tarballs of images and containers (and any blob nothing uses)"),
    ("snapshots", "Snapshots", "unpacked layers of images and containers (and any nothing uses)"),
    ("records", "Cache records", "the cache index, last-build records, and the layers (blobs and "
                                 "snapshots) only cached steps hold"),
    ("mounts", "Cache mounts", "RUN --mount=type=cache directories"),
    ("logs", "Step logs", "whole output of every RUN"),
    ("tmp", "Temporary files", "work dirs and blob writes in progress (or left by killed builds)"),
    ("other", "Other", "index.json, oci-layout, locks, directories"),
)

# Rows that break a kind's SIZE down (their bytes are in it, not added to the total): the blobs and
# snapshots counted in "Cache records", so that the TOTAL counts of "Images"' blobs (manifests
# and configs, counted as tags), "Layer blobs" and these add up to the files in blobs/, those of
# "Snapshots" and these to the directories in snapshots/.
SUBROWS = {"records": (("layers", "  of which layer blobs"), ("snapshots", "  of which snapshots"))}


def add_parser(sub) -> None:
    p = sub.add_parser("du", help="show disk usage of images and build cache",
                       description="Disk usage of the store by kind, like `docker system df` and "
                                   "`docker buildx du`. RECLAIMABLE is what `pybuild prune -a` with the "
                                   "same --filter/--keep-storage would free. "
                                   "Example: pybuild du --verbose --filter until=24h")
    p.add_argument("-v", "--verbose", action="store_true", help="also list every cache record")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (default) or json with exact byte counts")
    p.add_argument("--filter", action="append", default=[], metavar="until=DURATION",
                   help="count as reclaimable only cache not used within DURATION, as prune --filter")
    p.add_argument("--keep-storage", metavar="SIZE",
                   help="count as reclaimable only what prune --keep-storage SIZE would remove")


def _image_blobs(store) -> tuple[set[str], set[str], set[str], int]:
    """(metadata blob digests, layer blob digests, diff_ids, tag count) of the tagged images."""
    import json

    from pybuild.cache import gc

    meta, layers, diff_ids = set(), set(), set()

    def read(digest):
        try:
            with store.content.open(digest) as f:
                return json.load(f)
        except Exception:  # missing or not JSON: nothing more is reachable from it (fsck reports it)
            return None

    def walk(digest, depth=0):
        if not isinstance(digest, str) or depth > 8:
            return
        meta.add(digest)
        obj = read(digest)
        if not isinstance(obj, dict):
            return
        for child in obj.get("manifests") or []:
            if isinstance(child, dict):
                walk(child.get("digest"), depth + 1)
        cfg = obj.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("digest"), str):
            meta.add(cfg["digest"])
            config = read(cfg["digest"])
            rootfs = config.get("rootfs") if isinstance(config, dict) else None
            if isinstance(rootfs, dict):
                diff_ids.update(d for d in rootfs.get("diff_ids") or [] if isinstance(d, str))
        for layer in obj.get("layers") or []:
            if isinstance(layer, dict) and isinstance(layer.get("digest"), str):
                layers.add(layer["digest"])

    entries = gc.index_entries(store.root)
    for e in entries:
        walk(e.get("digest"))
    return meta - layers, layers, diff_ids, len(entries)


def usage(store, *, builds_running: bool, older_than=None, keep_bytes=None) -> dict:
    """Disk usage of ``store`` by kind, and of each cache record; reclaimable is what
    ``pybuild prune -a`` with ``older_than``/``keep_bytes`` would remove (see the module
    docstring).  Pure reading; files that vanish meanwhile (a build or GC running) are just not
    counted."""
    import os

    from pybuild.cache import gc
    from pybuild.cache.gc import dir_size
    from pybuild.cache.index import IndexEntry

    seen: set[tuple[int, int]] = set()
    kinds = {k: {"count": 0, "size": 0, "reclaimable": 0} for k, _, _ in KINDS}
    for kind, subs in SUBROWS.items():
        for sub, _ in subs:
            kinds[kind][sub] = {"count": 0, "size": 0, "reclaimable": 0}

    def add(kind: str, size: int, reclaimable: bool, count: int = 1, sub: str | None = None) -> None:
        for row, n in ((kinds[kind], count), (kinds[kind][sub] if sub else None, 1)):
            if row is not None:
                row["count"] += n
                row["size"] += size
                row["reclaimable"] += size if reclaimable else 0

    plan = gc.plan_prune(store, all=True, older_than=older_than, keep_bytes=keep_bytes)
    meta, _, _, tags = _image_blobs(store)
    kinds["images"]["count"] = tags
    blob_du: dict[str, int] = {}
    for blob in store.content.walk():
        size = blob_du[blob.digest] = dir_size(store.content.path(blob.digest), seen)
        if blob.digest in meta:
            add("images", size, False, count=0)
            continue
        kind = plan.blob_kind(blob.digest)
        add(kind, size, blob.digest not in plan.roots.blobs, count=int(kind == "layers"),
            sub="layers" if kind == "records" else None)
    snapshot_du: dict[str, int] = {}
    for diff_id in store.snapshots.walk():
        size = snapshot_du[diff_id] = dir_size(store.snapshots.path(diff_id), seen)
        kind = plan.snapshot_kind(diff_id)
        add(kind, size, diff_id not in plan.roots.diff_ids, count=int(kind == "snapshots"),
            sub="snapshots" if kind == "records" else None)

    entries = store.index.entries()
    gone = set(plan.records)
    shrunk = store.index.vacuumed_size(delete=plan.records, forget_files=plan.missing_files,
                                       clear_file_digests=plan.whole)
    context_files = store.index.file_digest_count()
    # The last connection to close checkpoints the write-ahead log into the database and removes
    # it, so measure the files as they are when no pybuild runs, which is also what `du` sees then.
    index_size = gc.index_disk_usage(store.index, seen)
    last_size = dir_size(store.root / "cache" / "last", seen)
    # If another process still has the index open, its shared-memory file stays after prune
    # (prune's checkpoint empties the write-ahead log, but cannot remove it either).
    shm = store.index.path.with_name(store.index.path.name + "-shm")
    index_reclaimable = max(0, index_size - shrunk - (dir_size(shm) if shm.exists() else 0))
    add("records", index_size + last_size, False, count=0)
    kinds["records"]["reclaimable"] += index_reclaimable
    kinds["records"]["count"] = len(entries)

    # A blob or snapshot several records hold is counted with one of them: the first one prune
    # keeps if there is one (then it is not reclaimable), else the first one.
    owner: dict[tuple[str, str], str] = {}
    for e in entries:
        if isinstance(e, IndexEntry) and e.record.layer is not None:
            key = e.record.key
            for ident in (("blob", e.record.layer.digest), ("snapshot", e.record.layer.diff_id)):
                if ident not in owner or (owner[ident] in gone and key not in gone):
                    owner[ident] = key
    records = []
    for e in entries:
        if not isinstance(e, IndexEntry):
            records.append({"key": e[0], "malformed": e[1], "size": 0, "reclaimable": e[0] in gone})
            continue
        rec, layer = e.record, e.record.layer
        size = layer_size = 0
        if layer is not None:
            blob, snap = blob_du.get(layer.digest, 0), snapshot_du.get(layer.diff_id, 0)
            layer_size = blob + snap
            # what this record accounts for in the "records" row: its layer's blob and snapshot
            # when only cache records hold them and it is the one they are counted with
            if plan.blob_kind(layer.digest) == "records" and owner[("blob", layer.digest)] == rec.key:
                size += blob
            if plan.snapshot_kind(layer.diff_id) == "records" and owner[("snapshot", layer.diff_id)] == rec.key:
                size += snap
        records.append({
            "key": rec.key, "description": rec.description, "created": rec.created, "last_used": e.last_used,
            "usage_count": e.use_count, "size": size, "layer_size": layer_size,
            "layer": layer.digest if layer else None,
            "shared": bool(layer and layer.digest in plan.base.blobs),
            "reclaimable": rec.key in gone,
        })
    index = {"files": [str(f) for f in [*store.index.files(), store.root / "cache" / "last"]],
             "size": index_size + last_size, "reclaimable": index_reclaimable,
             "records": len(entries), "context_files": context_files}

    from pybuild.builder.mounts import cache_mount_usage

    mounts = []
    for m in cache_mount_usage(store.root):  # prune -a removes each whole directory
        size = dir_size(m.path, seen)
        add("mounts", size, plan.whole)
        mounts.append({"id": m.id, "size": size, "instances": m.instances, "created": m.created,
                       "last_used": m.last_used, "reclaimable": plan.whole})

    logs = store.root / "logs"
    log_files = sum(len(files) for _, _, files in os.walk(logs)) if logs.is_dir() else 0
    add("logs", dir_size(logs, seen), plan.whole, count=log_files)
    for child in gc.temp_entries(store.root):  # their contents; the directories themselves stay ("other")
        add("tmp", dir_size(child, seen), not builds_running)
    add("other", dir_size(store.root, seen), False, count=0)  # whatever no kind above claimed
    total = {"size": sum(k["size"] for k in kinds.values()),
             "reclaimable": sum(k["reclaimable"] for k in kinds.values())}
    return {"root": str(store.root), "kinds": kinds, "total": total, "records": records,
            "index": index, "cache_mounts": mounts, "builds_running": builds_running}


def run(args, store_factory) -> int:
    import json

    from pybuild.cache import gc
    from pybuild.errors import PybuildError

    from ._format import ago, human_size, table
    from .prune import _options

    older_than, keep_bytes = _options(args)
    store = store_factory()
    try:  # a momentary probe: are builds holding leases (their temp files are in use)?
        with gc.exclusive(store.root, wait=False):
            pass
        running = False
    except gc.GCBusy:
        running = True
    try:
        report = usage(store, builds_running=running, older_than=older_than, keep_bytes=keep_bytes)
    except ValueError as exc:  # index.json unreadable
        raise PybuildError(f"du: {exc} (see `pybuild fsck`)") from None
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    if args.verbose:
        for r in sorted(report["records"], key=lambda r: r.get("last_used") or r.get("created") or ""):
            if "malformed" in r:
                print(f"ID:\t\t{r['key']}\nError:\t\t{r['malformed']}\n")
                continue
            note = ""
            if r["size"] != r["layer_size"]:
                where = ("an image or container uses it" if r["shared"]
                         else "another record holds it too and counts it")
                note = f" (its layer: {human_size(r['layer_size'])}, counted elsewhere: {where})"
            print(f"ID:\t\t{r['key']}\n"
                  f"Created at:\t{r['created']}\n"
                  f"Reclaimable:\t{str(r['reclaimable']).lower()}\n"
                  f"Shared:\t\t{str(r['shared']).lower()}\n"
                  f"Size:\t\t{human_size(r['size'])}{note}\n"
                  f"Description:\t{r['description']}\n"
                  f"Usage count:\t{r['usage_count']}\n"
                  f"Last used:\t{ago(r['last_used']) if r['last_used'] else 'never'}\n"
                  f"Layer:\t\t{r['layer'] or 'none (the step changed no file)'}\n")
        ix = report["index"]
        print(f"ID:\t\tcache index\n"
              f"Type:\t\tcache/index.db ({ix['records']} record{'s' if ix['records'] != 1 else ''}, "
              f"{ix['context_files']} context file digest{'s' if ix['context_files'] != 1 else ''}) "
              f"and cache/last/\n"
              f"Reclaimable:\t{human_size(ix['reclaimable'])} (the rows prune deletes, given back by VACUUM)\n"
              f"Size:\t\t{human_size(ix['size'])}\n")
        for m in report["cache_mounts"]:
            print(f"ID:\t\t{m['id']}\n"
                  f"Type:\t\tcache mount ({m['instances']} instance{'s' if m['instances'] != 1 else ''})\n"
                  f"Created at:\t{m['created'] or 'unknown'}\n"
                  f"Reclaimable:\t{str(m['reclaimable']).lower()}\n"
                  f"Size:\t\t{human_size(m['size'])}\n"
                  f"Last used:\t{ago(m['last_used']) if m['last_used'] else 'never'}\n")
    rows = [("TYPE", "TOTAL", "SIZE", "RECLAIMABLE")]
    for key, label, _ in KINDS:
        k = report["kinds"][key]
        for row, row_label in ((k, label), *((k[sub], sub_label) for sub, sub_label in SUBROWS.get(key, ()))):
            share = f" ({100 * row['reclaimable'] // row['size']}%)" if row["size"] and row["reclaimable"] else ""
            rows.append((row_label, str(row["count"]) if key != "other" else "-", human_size(row["size"]),
                         human_size(row["reclaimable"]) + share))
    t = report["total"]
    rows.append(("Total", "-", human_size(t["size"]), human_size(t["reclaimable"])))
    print(table(rows))
    if running:
        print("(builds are running: their temporary files are not counted as reclaimable)")
    return 0
