"""`pybuild du [--verbose] [--format table|json]`: disk usage of the store by kind, like
`docker system df` and `docker buildx du`.

Every byte of `$PYBUILD_ROOT` is counted once, in the first kind that claims it (allocated blocks,
hard links once, directories included: what `du -sB1 $PYBUILD_ROOT` counts), so the rows add up
to the total. RECLAIMABLE is what `pybuild prune -a` would free now: everything no tagged image
needs (layer blobs and snapshots only the build cache uses, step logs, stale temp files).
"""

from __future__ import annotations

NAME = "du"

KINDS = (
    ("images", "Images", "manifests and configs of tagged images"),
    ("layers", "Layer blobs", "layer tarballs of images and cached steps (and any blob no image uses)"),
    ("snapshots", "Snapshots", "unpacked layers used as overlay lowerdirs"),
    ("records", "Cache records", "the cache index database and last-build records"),
    ("mounts", "Cache mounts", "RUN --mount=type=cache directories"),
    ("logs", "Step logs", "whole output of every RUN"),
    ("tmp", "Temporary files", "work dirs and blob writes in progress (or left by killed builds)"),
    ("other", "Other", "index.json, oci-layout, locks, directories"),
)


def add_parser(sub) -> None:
    p = sub.add_parser("du", help="show disk usage of images and build cache",
                       description="Disk usage of the store by kind, like `docker system df` and "
                                   "`docker buildx du`. RECLAIMABLE is what `pybuild prune -a` would free. "
                                   "Example: pybuild du --verbose")
    p.add_argument("-v", "--verbose", action="store_true", help="also list every cache record")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (default) or json with exact byte counts")


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


def usage(store, *, builds_running: bool) -> dict:
    """Disk usage of ``store`` by kind, and of each cache record. Pure reading; files that vanish
    meanwhile (a build or GC running) are just not counted."""
    import os

    from pybuild.cache.gc import dir_size
    from pybuild.cache.index import IndexEntry

    seen: set[tuple[int, int]] = set()
    kinds = {k: {"count": 0, "size": 0, "reclaimable": 0} for k, _, _ in KINDS}

    def add(kind: str, size: int, reclaimable: bool, count: int = 1) -> None:
        kinds[kind]["count"] += count
        kinds[kind]["size"] += size
        kinds[kind]["reclaimable"] += size if reclaimable else 0

    meta, image_layers, image_diff_ids, tags = _image_blobs(store)
    kinds["images"]["count"] = tags
    blob_du: dict[str, int] = {}
    for blob in store.content.walk():
        size = blob_du[blob.digest] = dir_size(store.content.path(blob.digest), seen)
        if blob.digest in meta:
            add("images", size, False, count=0)
        else:
            add("layers", size, blob.digest not in image_layers)
    snapshot_du: dict[str, int] = {}
    for diff_id in store.snapshots.walk():
        size = snapshot_du[diff_id] = dir_size(store.snapshots.path(diff_id), seen)
        add("snapshots", size, diff_id not in image_diff_ids)

    entries = store.index.entries()
    # The last connection to close checkpoints the write-ahead log into the database and removes
    # it, so measure the files as they are when no pybuild runs, which is also what `du` sees then.
    store.index.close()
    for path in [*store.index.files(), store.root / "cache" / "last"]:
        add("records", dir_size(path, seen), False, count=0)
    kinds["records"]["count"] = len(entries)
    records = []
    counted_layer: set[str] = set()
    for e in entries:
        if not isinstance(e, IndexEntry):
            records.append({"key": e[0], "malformed": e[1]})
            continue
        rec, layer = e.record, e.record.layer
        size = 0
        if layer is not None and layer.digest not in counted_layer:  # shared layers counted once
            counted_layer.add(layer.digest)
            size = blob_du.get(layer.digest, 0) + snapshot_du.get(layer.diff_id, 0)
        records.append({
            "key": rec.key, "description": rec.description, "created": rec.created, "last_used": e.last_used,
            "usage_count": e.use_count, "size": size,
            "layer": layer.digest if layer else None,
            "shared": bool(layer and layer.digest in image_layers),
            "reclaimable": not (layer and layer.digest in image_layers),
        })

    from pybuild.builder.mounts import cache_mount_usage

    mounts = []
    for m in cache_mount_usage(store.root):  # prune -a removes each whole directory
        size = dir_size(m.path, seen)
        add("mounts", size, True)
        mounts.append({"id": m.id, "size": size, "instances": m.instances, "created": m.created,
                       "last_used": m.last_used})

    logs = store.root / "logs"
    log_files = sum(len(files) for _, _, files in os.walk(logs)) if logs.is_dir() else 0
    add("logs", dir_size(logs, seen), True, count=log_files)
    for name in ("tmp", "ingest"):  # their contents; the directories themselves stay ("other")
        path = store.root / name
        for child in (list(path.iterdir()) if path.is_dir() else []):
            add("tmp", dir_size(child, seen), not builds_running)
    add("other", dir_size(store.root, seen), False, count=0)  # whatever no kind above claimed
    total = {"size": sum(k["size"] for k in kinds.values()),
             "reclaimable": sum(k["reclaimable"] for k in kinds.values())}
    return {"root": str(store.root), "kinds": kinds, "total": total, "records": records,
            "cache_mounts": mounts, "builds_running": builds_running}


def run(args, store_factory) -> int:
    import json

    from pybuild.cache import gc
    from pybuild.errors import PybuildError

    from ._format import ago, human_size, table

    store = store_factory()
    try:  # a momentary probe: are builds holding leases (their temp files are in use)?
        with gc.exclusive(store.root, wait=False):
            pass
        running = False
    except gc.GCBusy:
        running = True
    try:
        report = usage(store, builds_running=running)
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
            print(f"ID:\t\t{r['key']}\n"
                  f"Created at:\t{r['created']}\n"
                  f"Reclaimable:\t{str(r['reclaimable']).lower()}\n"
                  f"Shared:\t\t{str(r['shared']).lower()}\n"
                  f"Size:\t\t{human_size(r['size'])}\n"
                  f"Description:\t{r['description']}\n"
                  f"Usage count:\t{r['usage_count']}\n"
                  f"Last used:\t{ago(r['last_used']) if r['last_used'] else 'never'}\n"
                  f"Layer:\t\t{r['layer'] or 'none (the step changed no file)'}\n")
        for m in report["cache_mounts"]:
            print(f"ID:\t\t{m['id']}\n"
                  f"Type:\t\tcache mount ({m['instances']} instance{'s' if m['instances'] != 1 else ''})\n"
                  f"Created at:\t{m['created'] or 'unknown'}\n"
                  f"Reclaimable:\ttrue\n"
                  f"Size:\t\t{human_size(m['size'])}\n"
                  f"Last used:\t{ago(m['last_used']) if m['last_used'] else 'never'}\n")
    rows = [("TYPE", "TOTAL", "SIZE", "RECLAIMABLE")]
    for key, label, _ in KINDS:
        k = report["kinds"][key]
        share = f" ({100 * k['reclaimable'] // k['size']}%)" if k["size"] and k["reclaimable"] else ""
        rows.append((label, str(k["count"]) if key != "other" else "-", human_size(k["size"]),
                     human_size(k["reclaimable"]) + share))
    t = report["total"]
    rows.append(("Total", "-", human_size(t["size"]), human_size(t["reclaimable"])))
    print(table(rows))
    if running:
        print("(builds are running: their temporary files are not counted as reclaimable)")
    return 0
