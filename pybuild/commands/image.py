"""`pybuild image prune [-a] [-f]`: remove images nothing needs, like `docker image prune`.

Without -a only dangling images go: the `<none>` images an untagged build keeps
(`ImageStore.keep_untagged`) whose image has no name left.  With -a every image no container
(running or stopped) was made from goes, names and all.  Then, as `rmi` does, the blobs and
snapshots no image or build-cache record uses are swept; the build cache itself stays
(`pybuild prune` clears it).  Entries are dropped under the index lock and re-checked there, so
a tag a concurrent build adds meanwhile is never removed by a dangling-only prune.
"""

from __future__ import annotations

NAME = "image"


def add_parser(sub) -> None:
    p = sub.add_parser("image", help="manage images (prune)",
                       description="Like docker image. Example: pybuild image prune -f")
    cmds = p.add_subparsers(dest="image_command", required=True, parser_class=type(p))
    pr = cmds.add_parser("prune", help="remove dangling images (-a: all images no container uses)",
                         description="Like docker image prune: removes the dangling (<none>, untagged) "
                                     "images; with -a, every image no container was made from. Then "
                                     "deletes the blobs and snapshots no image or build-cache record uses "
                                     "(the build cache stays: see pybuild prune). Asks first unless -f.")
    pr.add_argument("-a", "--all", action="store_true", help="remove all images no container uses, not only dangling")
    pr.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")


def _image_ids(store, digests) -> dict[str, str]:
    """manifest digest -> image id (config digest; the manifest digest itself when unreadable)."""
    from .rmi import _image_id

    return {d: _image_id(store, d) or d for d in digests}


def _images_in_use(store, ids: dict[str, str]) -> set[str]:
    """Image ids containers were made from (their ``ImageManifest``), whatever their state."""
    from .rmi import _container_manifests

    manifests = set(_container_manifests(store).values())
    return {ids.get(m) or _image_ids(store, [m])[m] for m in manifests}


def prune_images(store, all_images: bool) -> list[str]:
    """Drop the index entries of the images to prune; return docker's report lines
    (``untagged: NAME`` per name, ``deleted: IMAGE-ID`` per image)."""
    from .rmi import _ref_name

    entries = store.images.entries()
    ids = _image_ids(store, {e["digest"] for e in entries if isinstance(e.get("digest"), str)})
    names: dict[str, list[str]] = {}
    for e in entries:
        if isinstance(e.get("digest"), str):
            names.setdefault(ids[e["digest"]], [])
            if (n := _ref_name(e)):
                names[ids[e["digest"]]].append(n)
    in_use = _images_in_use(store, ids)
    doomed = {i for i, ns in names.items() if i not in in_use and (all_images or not ns)}

    def pred(e: dict) -> bool:
        # re-checked under the index lock: a name that appeared since the listing keeps its entry
        if not isinstance(e.get("digest"), str) or ids.get(e["digest"]) not in doomed:
            return False
        return all_images or not _ref_name(e)

    removed = store.images.remove_entries(pred)
    left = {ids.get(e.get("digest")) for e in store.images.entries()}
    by_image: dict[str, list[str]] = {}  # in index order, as docker reports image by image
    for e in removed:
        by_image.setdefault(ids[e["digest"]], []).extend([n] if (n := _ref_name(e)) else [])
    out: list[str] = []
    for image_id, tags in by_image.items():
        out += [f"untagged: {n}" for n in tags]
        if image_id not in left:
            out.append(f"deleted: {image_id}")
    return out


def run(args, store_factory) -> int:
    import sys

    from pybuild.cache import gc
    from pybuild.errors import PybuildError
    from pybuild.oci.store import ImageStoreError

    from ._format import human_size
    from .prune import confirm

    if not args.force:
        what = "all images without at least one container associated to them" if args.all \
            else "all dangling images"
        if not confirm(f"WARNING! This will remove {what}."):
            return 0
    store = store_factory()
    try:
        lines = prune_images(store, args.all)
    except ImageStoreError as exc:
        raise PybuildError(f"{exc} (see `pybuild fsck`)") from None
    reclaimed = 0
    try:
        with gc.exclusive(store.root, wait=False):
            reclaimed = gc.sweep(store, gc.mark(store, include_cache=True)).reclaimed
    except ValueError as exc:  # index.json unreadable: never sweep blind
        raise PybuildError(f"not removing unreferenced data: {exc} (see `pybuild fsck`)") from None
    except gc.GCBusy:
        print("a build or another pybuild command is using the store: unreferenced blobs are left "
              "for the next rmi or prune", file=sys.stderr)
    if lines:
        print("Deleted Images:")
        print("\n".join(lines))
        print()
    print(f"Total reclaimed space: {human_size(reclaimed)}")
    return 0
