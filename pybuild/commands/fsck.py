"""`pybuild fsck [--repair]`: re-hash every blob, check every reference, report each problem on
one line (exit 1 if any); `--repair` drops what is broken and says what it did."""

from __future__ import annotations

from dataclasses import dataclass, field

NAME = "fsck"


def add_parser(sub) -> None:
    p = sub.add_parser("fsck", help="verify the store: blob digests and every reference",
                       description="Re-hashes every blob and checks index.json -> manifest -> config/layers, "
                                   "cache records -> blobs, snapshots -> diff_ids. One problem per line; "
                                   "exit status 1 if there is any. --repair deletes corrupt blobs, drops "
                                   "tags and cache records that point at missing or corrupt blobs and "
                                   "removes unreferenced snapshots (it waits for running builds).")
    p.add_argument("--repair", action="store_true", help="drop what is broken")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    corrupt: set[str] = field(default_factory=set)          # blob digests
    stray_blobs: list = field(default_factory=list)          # paths
    dangling: list[dict] = field(default_factory=list)       # index.json entries
    bad_records: list[str] = field(default_factory=list)     # cache keys
    refs: set[str] = field(default_factory=set)              # diff_ids of intact images/records
    unreferenced: list[str] = field(default_factory=list)    # snapshot diff_ids
    stray_snapshots: list = field(default_factory=list)      # paths
    # Garbage, not damage: the snapshot of an image removed by `rmi`/`image prune` whose sweep
    # found the store busy, or one committed just before Ctrl-C stopped the build from recording
    # it.  (An image a rebuild re-tags stays as a dangling <none> image, not garbage.)  Reported,
    # removed by --repair (and by prune), but fsck still exits 0.
    garbage: list[str] = field(default_factory=list)
    index_ok: bool = True


def check_blobs(store, rep: Report) -> None:
    for blob in store.content.walk():
        try:
            got = store.content.rehash(blob.digest)
        except FileNotFoundError:
            continue  # removed meanwhile
        except OSError as exc:
            rep.problems.append(f"blob {blob.digest}: unreadable: {exc.strerror}")
            rep.corrupt.add(blob.digest)
            continue
        if got != blob.digest:
            rep.problems.append(f"blob {blob.digest}: corrupt: content hashes to {got}")
            rep.corrupt.add(blob.digest)
    for path in store.content.stray_files():
        rep.problems.append(f"blobs: {path}: not a blob (name is not a sha256 hex digest)")
        rep.stray_blobs.append(path)


def _desc_problem(store, rep: Report, desc, what: str) -> str | None:
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        return f"{what}: malformed descriptor"
    digest = desc["digest"]
    try:
        if not store.content.exists(digest):
            return f"{what} {digest}: missing"
    except ValueError:
        return f"{what} {digest!r}: invalid digest"
    if digest in rep.corrupt:
        return f"{what} {digest}: corrupt"
    if "size" in desc and desc["size"] != store.content.size(digest):
        return f"{what} {digest}: size {store.content.size(digest)}, descriptor says {desc['size']}"
    return None


def _json(store, digest: str):
    import json

    with store.content.open(digest) as f:
        return json.load(f)


def _check_manifest(store, rep: Report, desc, label: str, diff_ids: set[str], depth: int = 0) -> list[str]:
    from pybuild.oci.image import INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES

    p = _desc_problem(store, rep, desc, "manifest")
    if p:
        return [f"{label}: {p}"]
    digest = desc["digest"]
    try:
        m = _json(store, digest)
    except ValueError as exc:
        return [f"{label}: manifest {digest}: not JSON: {exc}"]
    if not isinstance(m, dict):
        return [f"{label}: manifest {digest}: not a JSON object"]
    out = []
    if isinstance(m.get("manifests"), list) or m.get("mediaType") in INDEX_MEDIA_TYPES:
        if depth > 4:
            return [f"{label}: index {digest}: nested too deeply"]
        for child in m.get("manifests") or []:
            out += _check_manifest(store, rep, child, label, diff_ids, depth + 1)
        return out
    if m.get("mediaType", desc.get("mediaType")) not in MANIFEST_MEDIA_TYPES and m.get("schemaVersion") != 2:
        return [f"{label}: manifest {digest}: not an image manifest"]
    cp = _desc_problem(store, rep, m.get("config"), "config")
    if cp:
        out.append(f"{label}: {cp}")
    layers = m.get("layers") if isinstance(m.get("layers"), list) else None
    if layers is None:
        out.append(f"{label}: manifest {digest}: no layers list")
        layers = []
    for i, layer in enumerate(layers):
        lp = _desc_problem(store, rep, layer, f"layer {i + 1}")
        if lp:
            out.append(f"{label}: {lp}")
    if not cp:
        try:
            cfg = _json(store, m["config"]["digest"])
            ids = cfg["rootfs"]["diff_ids"]
            if not isinstance(ids, list):
                raise TypeError("rootfs.diff_ids is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            out.append(f"{label}: config {m['config']['digest']}: unusable: {exc}")
        else:
            if len(ids) != len(layers):
                out.append(f"{label}: config lists {len(ids)} diff_ids but the manifest {len(layers)} layers")
            if not out:
                diff_ids.update(d for d in ids if isinstance(d, str))
    return out


def check_refs(store, rep: Report) -> None:
    from pybuild.cache import gc

    try:
        entries = gc.index_entries(store.root)
    except ValueError as exc:
        rep.problems.append(f"index.json: {exc} (not repaired: fix or remove it by hand)")
        rep.index_ok = False
        entries = []
    for e in entries:
        name = (e.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        label = f"image {name}" if name else f"untagged image {e.get('digest')}"
        diff_ids: set[str] = set()
        problems = _check_manifest(store, rep, e, label, diff_ids)
        if problems:
            rep.problems += problems
            rep.dangling.append(e)
        else:
            rep.refs |= diff_ids
    # a container's image (possibly untagged by `rmi -f`) is its lowerdirs until `pybuild rm`
    rep.refs |= gc.container_roots(store.root, store.content).diff_ids
    for problem in store.index.check():  # SQLite's own consistency check of cache/index.db
        rep.problems.append(f"cache index {store.index.path}: {problem} (not repaired: removing the "
                            "file resets the build cache)")
        rep.index_ok = False
    for key in store.index.keys():
        try:
            rec = store.index.read(key)
        except ValueError as exc:
            rep.problems.append(f"cache record {key}: unreadable: {exc}")
            rep.bad_records.append(key)
            continue
        if rec is None or rec.layer is None:
            continue
        p = _desc_problem(store, rep, {"digest": rec.layer.digest, "size": rec.layer.size}, "layer")
        if p:
            rep.problems.append(f"cache record {key}: {p}")
            rep.bad_records.append(key)
        else:
            rep.refs.add(rec.layer.diff_id)


def check_snapshots(store, rep: Report) -> None:
    for diff_id in store.snapshots.walk():
        if diff_id not in rep.refs:
            rep.garbage.append(f"snapshot {diff_id}: not used by any image, container or cache record "
                               "(garbage: left by an image removed (rmi, image prune) while the store "
                               "was busy, or by an interrupted build; prune removes it)")
            rep.unreferenced.append(diff_id)
    for path in store.snapshots.stray_entries():
        rep.problems.append(f"snapshots: {path}: not a snapshot")
        rep.stray_snapshots.append(path)


def repair(store, rep: Report) -> list[str]:
    """Apply the fixes for ``rep``; the caller holds the exclusive GC lock.  Returns what was done."""
    import shutil

    done = []
    for digest in sorted(rep.corrupt):
        store.content.delete(digest)
        done.append(f"deleted corrupt blob {digest}")
    for path in rep.stray_blobs:
        path.unlink(missing_ok=True)
        done.append(f"deleted {path}")
    if rep.dangling:
        doomed = [(e.get("digest"), (e.get("annotations") or {}).get("org.opencontainers.image.ref.name"))
                  for e in rep.dangling]

        def pred(e: dict) -> bool:
            return (e.get("digest"), (e.get("annotations") or {}).get("org.opencontainers.image.ref.name")) in doomed
        for e in store.images.remove_entries(pred):
            name = (e.get("annotations") or {}).get("org.opencontainers.image.ref.name")
            done.append(f"untagged {name}" if name else f"dropped untagged index entry {e.get('digest')}")
    for key in rep.bad_records:
        store.index.delete(key)
        done.append(f"deleted cache record {key}")
    for diff_id in rep.unreferenced:
        if store.snapshots.remove(diff_id):
            done.append(f"deleted snapshot {diff_id}")
    for path in rep.stray_snapshots:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        done.append(f"deleted {path}")
    return done


def run(args, store_factory) -> int:
    import sys

    from pybuild.cache import gc

    store = store_factory()
    rep = Report()
    if args.repair:
        def waiting() -> None:
            print("waiting for running builds to finish...", file=sys.stderr, flush=True)

        with gc.exclusive(store.root, wait=True, on_wait=waiting):
            check_blobs(store, rep)
            check_refs(store, rep)
            check_snapshots(store, rep)
            for line in rep.problems + rep.garbage:
                print(line)
            done = repair(store, rep)
        for line in done:
            print(f"repaired: {line}")
        print(f"fsck: {len(rep.problems)} problem(s) found, {len(done)} repair(s) done", file=sys.stderr)
        return 0 if rep.index_ok else 1
    with gc.build_lease(store.root):  # blobs stay put while we hash them; builds may go on
        check_blobs(store, rep)
        check_refs(store, rep)
    try:
        # Snapshots are committed before the record that names them, so only judge them when no
        # build runs; re-read the references under the lock.
        with gc.exclusive(store.root, wait=False):
            fresh = Report(corrupt=rep.corrupt)
            check_refs(store, fresh)
            rep.refs = fresh.refs
            check_snapshots(store, rep)
    except gc.GCBusy:
        print("fsck: a build is running: snapshots not checked", file=sys.stderr)
    for line in rep.problems + rep.garbage:
        print(line)
    if rep.problems:
        print(f"fsck: {len(rep.problems)} problem(s); `pybuild fsck --repair` drops what is broken",
              file=sys.stderr)
    return 1 if rep.problems else 0
