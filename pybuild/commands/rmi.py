"""`pybuild rmi [-f] IMAGE...`: untag, then sweep what no image or cache record uses, like
`docker rmi` (build cache is kept; `pybuild prune` clears it)."""

from __future__ import annotations

NAME = "rmi"


def add_parser(sub) -> None:
    p = sub.add_parser("rmi", help="remove one or more images",
                       description="Like docker rmi: NAME[:TAG] removes that tag; an image id (prefix) "
                                   "or digest removes the image with its name (-f needed when it has "
                                   "more than one tag, as docker 23+ does). Blobs and snapshots no image or "
                                   "build-cache record uses are then deleted.")
    p.add_argument("-f", "--force", action="store_true", help="remove an image id that has several tags")
    p.add_argument("--no-prune", action="store_true", help="untag only; leave unreferenced blobs")
    p.add_argument("images", nargs="+", metavar="IMAGE")


def _image_id(store, manifest_digest: str) -> str | None:
    from pybuild.oci.image import load_manifest

    try:
        return load_manifest(store.content, manifest_digest)["config"]["digest"]
    except Exception:
        return None


def _same_image(store, manifest_digest: str, image_id: str | None):
    """Predicate on index.json entries: does the entry name this image (manifest or image id)?"""
    cache: dict[str, str | None] = {}

    def pred(e: dict) -> bool:
        d = e.get("digest")
        if d == manifest_digest:
            return True
        if image_id is None or not isinstance(d, str):
            return False
        if d not in cache:
            cache[d] = _image_id(store, d)
        return cache[d] == image_id
    return pred


def _ref_name(e: dict) -> str | None:
    return (e.get("annotations") or {}).get("org.opencontainers.image.ref.name")


def _container_manifests(store) -> dict[str, str]:
    """Container id -> the manifest digest it was made from, for every container record
    (running or stopped); unreadable records are skipped.  Shared with `image prune`."""
    import json

    out = {}
    for cfg in sorted((store.root / "containers").glob("*/config.json")):
        try:
            used = json.loads(cfg.read_bytes()).get("ImageManifest")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(used, str) and used:
            out[cfg.parent.name] = used
    return out


def _containers_using(store, manifest_digest: str, image_id: str | None) -> list[str]:
    """Ids of container records (running or stopped) made from this image, as docker checks."""
    return [cid for cid, used in _container_manifests(store).items()
            if used == manifest_digest or (image_id is not None and _image_id(store, used) == image_id)]


def _check_not_in_use(store, name: str, manifest_digest: str, image_id: str | None, force: bool,
                      last_name: bool) -> bool:
    """docker's rule: the last name of an image a container uses goes only with -f (and then the
    image itself stays, untagged, until the container is removed).  Returns whether it stays."""
    from pybuild.errors import PybuildError

    users = _containers_using(store, manifest_digest, image_id) if last_name else []
    if users and not force:
        short = (image_id or manifest_digest).split(":", 1)[1][:12]
        raise PybuildError(f"conflict: unable to remove repository reference {name!r} (must force) - "
                           f"container {users[0][:12]} is using its referenced image {short}")
    return bool(users)


def _single_reference(names: list[str]) -> bool:
    """docker's isSingleReference: at most one tag, and digest references (``name@sha256:..``, a
    pull by digest) only in that tag's repository.  An image id removes all the names of such an
    image; any other needs -f ("image is referenced in multiple repositories", even for two tags
    of one repository, as docker 23+ says)."""
    def repo(n: str) -> str:
        return n.split("@", 1)[0] if "@" in n else n.rpartition(":")[0]

    tags = [n for n in names if "@" not in n]
    if len(tags) > 1:
        return False
    pinned = {repo(n) for n in names if "@" in n}
    return not pinned or pinned == {repo(tags[0] if tags else names[0])}


def _remove_one(store, text: str, force: bool, out: list[str]) -> None:
    from pybuild.errors import PybuildError
    from pybuild.oci.reference import InvalidReference, parse_reference
    from pybuild.oci.store import ImageNotFound

    from ._format import not_found

    try:
        ref = parse_reference(text)
    except InvalidReference:
        ref = None
    tagged = {_ref_name(e) for e in store.images.entries()}
    if ref is not None and ref.digest is None and ref.tagged in tagged:
        digest = store.images.resolve(ref.tagged)
        image_id = _image_id(store, digest)
        pred = _same_image(store, digest, image_id)
        others = [e for e in store.images.entries() if pred(e) and _ref_name(e) != ref.tagged]
        kept = _check_not_in_use(store, ref.tagged, digest, image_id, force, last_name=not others)
        store.images.untag(ref)  # by name: only this tag goes
        out.append(f"Untagged: {ref.tagged}")
        if not others and not kept:
            out.append(f"Deleted: {image_id or digest}")
        return
    try:
        digest = store.images.resolve(text)
    except ImageNotFound:
        raise PybuildError(not_found(text)) from None
    image_id = _image_id(store, digest)
    pred = _same_image(store, digest, image_id)
    names = sorted({n for e in store.images.entries() if pred(e) and (n := _ref_name(e))})
    if names and not force and not _single_reference(names):
        short = (image_id or digest).split(":", 1)[1][:12]
        raise PybuildError(f"conflict: unable to delete {short} (must be forced) - "
                           "image is referenced in multiple repositories")
    kept = _check_not_in_use(store, text, digest, image_id, force, last_name=True)
    store.images.remove_entries(pred)
    out.extend(f"Untagged: {n}" for n in names)
    if not kept:
        out.append(f"Deleted: {image_id or digest}")


def run(args, store_factory) -> int:
    import sys

    from pybuild.cache import gc
    from pybuild.errors import PybuildError
    from pybuild.oci.store import ImageStoreError

    store = store_factory()
    status = 0
    for text in args.images:
        out: list[str] = []
        try:
            _remove_one(store, text, args.force, out)
        except ImageStoreError as exc:
            raise PybuildError(f"{exc} (see `pybuild fsck`)") from None
        except PybuildError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            status = 1
        for line in out:
            print(line)
    if not args.no_prune:
        try:
            with gc.exclusive(store.root, wait=False):
                gc.sweep(store, gc.mark(store, include_cache=True))
        except ValueError as exc:  # index.json unreadable: never sweep blind
            raise PybuildError(f"not removing unreferenced data: {exc} (see `pybuild fsck`)") from None
        except gc.GCBusy:
            print("a build or another pybuild command is using the store: unreferenced blobs are left "
                  "for the next rmi or prune", file=sys.stderr)
    return status
