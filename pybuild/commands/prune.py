"""`pybuild prune [-a] [-f] [-v] [--filter until=D] [--keep-storage SIZE]`: remove build cache
records, then everything no image or remaining record uses (like `docker builder prune`).

What it removes is decided by one plan (`cache.gc.plan_prune`) that `pybuild du` also uses: what
`du` with the same --filter/--keep-storage calls reclaimable is what `prune -a` frees. The index
database is VACUUMed after the rows go (under the GC's exclusive lock), so it shrinks. The report
is by du's kinds (how many of each, and their size as du counts it) and ends with the total;
-v also lists what went (cache record keys, blob digests, snapshots, cache mounts), by the same rows:
a blob or snapshot only the removed records held is a `cache record layer blob` or `cache record
snapshot` line and counted in the "Cache records" row's "of which" sub-rows (its size is in that
row's), any other a `blob` or `snapshot` line counted in "Layer blobs" or "Snapshots"."""

from __future__ import annotations

NAME = "prune"


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="remove build cache and unreferenced data",
                       description="Like docker builder prune: without -a, removes the cache records "
                                   "whose layer no tagged image uses; with -a, all of them and the RUN "
                                   "--mount=type=cache directories. Then deletes "
                                   "blobs, snapshots and stale temp files nothing references and VACUUMs the "
                                   "cache index; reports what went by `pybuild du`'s kinds. `pybuild du` "
                                   "with the same --filter/--keep-storage shows what `prune -a` frees. "
                                   "Waits for running builds to finish.")
    p.add_argument("-a", "--all", action="store_true", help="remove all build cache, not only unused")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also list every removed cache record, blob, snapshot and cache mount")
    p.add_argument("--filter", action="append", default=[], metavar="until=DURATION",
                   help="only cache not used within DURATION (Go syntax: 24h, 90m, 1h30m)")
    p.add_argument("--keep-storage", metavar="SIZE",
                   help="remove least recently used cache only until what the rest could free fits in SIZE "
                        "(layers images use do not count: prune never frees them; e.g. 10GB, 512MiB)")
    p.epilog = "Examples: pybuild prune -f --filter until=24h; pybuild prune -a -f --keep-storage 5GB"


_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration subset docker accepts: `24h`, `1h30m`, `90s`, `1.5h` -> seconds."""
    import re

    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r} (e.g. 24h, 90m, 1h30m)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def parse_size(text: str) -> int:
    """docker's RAMInBytes: `512MiB`, `10GB`, `1g`, `100000` (binary multiples) -> bytes."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not m:
        raise ValueError(f"invalid size {text!r} (e.g. 512MiB, 10GB)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def _options(args):
    """(older_than, keep_bytes) from the flags; UsageError naming the flag."""
    from datetime import datetime, timedelta, timezone

    from pybuild.errors import UsageError

    older_than = None
    for item in args.filter:
        key, sep, value = item.partition("=")
        if key != "until" or not sep:
            raise UsageError(f"--filter {item}: only until=DURATION is supported")
        try:
            older_than = datetime.now(timezone.utc) - timedelta(seconds=parse_duration(value))
        except ValueError as exc:
            raise UsageError(f"--filter {item}: {exc}") from None
    keep = None
    if args.keep_storage is not None:
        try:
            keep = parse_size(args.keep_storage)
        except ValueError as exc:
            raise UsageError(f"--keep-storage {args.keep_storage}: {exc}") from None
    return older_than, keep


def confirm(warning: str) -> bool:
    """docker's prompt before a prune: ``warning``, then "Are you sure you want to continue? [y/N]"
    on stdout, and one line read from stdin; only y or yes is yes.  End of input (stdin closed or
    /dev/null: no answer) is no, and says so on stderr.  A "no" exits 0, as docker's does.  Shared
    by `prune` and `volume prune`."""
    import sys

    print(f"{warning}\nAre you sure you want to continue? [y/N] ", end="", flush=True)
    line = sys.stdin.readline() if sys.stdin is not None else ""
    if not line:  # end of input: end the prompt's line, say nothing was done
        print(flush=True)
        print("no answer: nothing removed (use -f to prune without asking)", file=sys.stderr)
        return False
    return line.strip().lower() in ("y", "yes")


def run(args, store_factory) -> int:
    import sys

    from pybuild.builder.mounts import cache_mount_usage, remove_cache_mounts
    from pybuild.cache import gc
    from pybuild.errors import PybuildError

    from ._format import human_size, table
    from .du import KINDS, SUBROWS

    older_than, keep_bytes = _options(args)
    if not args.force:
        what = "all build cache" if args.all else "build cache not used by any image"
        if not confirm(f"WARNING! This will remove {what}."):
            return 0
    store = store_factory()

    def waiting() -> None:
        print("waiting for running builds to finish...", file=sys.stderr, flush=True)

    try:
        with gc.exclusive(store.root, wait=True, on_wait=waiting):
            plan = gc.plan_prune(store, all=args.all, older_than=older_than, keep_bytes=keep_bytes)
            result = gc.prune(store, plan)
            # RUN --mount=type=cache directories go with -a only, as with `docker builder prune -a`
            cache_mounts = []
            if plan.whole:
                sizes = {m.path: gc.dir_size(m.path) for m in cache_mount_usage(store.root)}
                cache_mounts = [(m, sizes.get(m.path, m.size)) for m in remove_cache_mounts(store.root)]
    except ValueError as exc:  # index.json unreadable: never sweep blind
        raise PybuildError(f"prune: {exc} (see `pybuild fsck`)") from None
    kinds = dict(result.kinds, mounts={"count": len(cache_mounts), "size": sum(n for _, n in cache_mounts)})
    swept = result.gc
    if args.verbose and (result.records or swept.blobs or swept.snapshots or cache_mounts):
        print("Deleted build cache objects:")
        # grouped as the table counts them: records, then the blobs and snapshots only they held
        # (the "Cache records" row), then the others ("Layer blobs" and "Snapshots" rows)
        held = result.held_by_records
        for key in result.records:
            print(f"cache record {key}")
        for blob in swept.blobs:
            if ("blob", blob.digest) in held:
                print(f"cache record layer blob {blob.digest}")
        for diff_id, _ in swept.snapshots:
            if ("snapshot", diff_id) in held:
                print(f"cache record snapshot {diff_id}")
        for blob in swept.blobs:
            if ("blob", blob.digest) not in held:
                print(f"blob {blob.digest}")
        for diff_id, _ in swept.snapshots:
            if ("snapshot", diff_id) not in held:
                print(f"snapshot {diff_id}")
        for mount, _ in cache_mounts:
            print(f"cache mount {mount.id}")
        print()
    if any(k["count"] or k["size"] for k in kinds.values()):
        rows = [("TYPE", "REMOVED", "RECLAIMED")]
        for key, label, _ in KINDS:
            if key in kinds:
                rows.append((label, str(kinds[key]["count"]), human_size(kinds[key]["size"])))
                for sub, sub_label in SUBROWS.get(key, ()):
                    k = kinds[key][sub]
                    rows.append((sub_label, str(k["count"]), human_size(k["size"])))
        print(table(rows))
    print(f"Total reclaimed space: {human_size(sum(k['size'] for k in kinds.values()), 4)}")
    return 0
