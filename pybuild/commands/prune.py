"""`pybuild prune [-a] [-f]`: remove build cache records, then everything no image or remaining
record uses (like `docker builder prune`)."""

from __future__ import annotations

NAME = "prune"


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="remove build cache and unreferenced data",
                       description="Like docker builder prune: without -a, removes the cache records "
                                   "whose layer no tagged image uses; with -a, all of them. Then deletes "
                                   "blobs, snapshots and stale temp files nothing references. Waits for "
                                   "running builds to finish.")
    p.add_argument("-a", "--all", action="store_true", help="remove all build cache, not only unused")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")


def run(args, store_factory) -> int:
    import sys

    from pybuild.cache import gc
    from pybuild.errors import PybuildError

    from ._format import human_size

    if not args.force:
        what = "all build cache" if args.all else "build cache not used by any image"
        print(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ",
              end="", flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            return 0
    store = store_factory()

    def waiting() -> None:
        print("waiting for running builds to finish...", file=sys.stderr, flush=True)

    try:
        with gc.exclusive(store.root, wait=True, on_wait=waiting):
            removed = gc.prune_cache(store, all=args.all)
            result = gc.sweep(store, gc.mark(store, include_cache=True))
    except ValueError as exc:  # index.json unreadable: never sweep blind
        raise PybuildError(f"prune: {exc} (see `pybuild fsck`)") from None
    result.cache_records = removed
    if removed or result.blobs or result.snapshots:
        print("Deleted build cache objects:")
        for key in removed:
            print(key)
        for blob in result.blobs:
            print(blob.digest)
        for diff_id, _ in result.snapshots:
            print(f"snapshot {diff_id}")
        print()
    print(f"Total reclaimed space: {human_size(result.reclaimed, 4)}")
    return 0
