"""`pybuild tag SOURCE TARGET`: give an image another name, like `docker tag`."""

from __future__ import annotations

NAME = "tag"


def add_parser(sub) -> None:
    p = sub.add_parser("tag", help="create a tag TARGET that refers to SOURCE",
                       description="Like docker tag. Example: pybuild tag hello:1.0 hello:latest")
    p.add_argument("source", metavar="SOURCE_IMAGE", help="NAME[:TAG], image id (prefix) or digest")
    p.add_argument("target", metavar="TARGET_IMAGE", help="NAME[:TAG]")


def run(args, store_factory) -> int:
    from pybuild.cache.content import BlobInfo
    from pybuild.commands._format import not_found
    from pybuild.errors import PybuildError, UsageError
    from pybuild.oci.reference import InvalidReference, parse_reference
    from pybuild.oci.store import ANNOTATION_CREATED, ImageNotFound, ImageStoreError

    try:
        target = parse_reference(args.target)
    except InvalidReference as exc:
        raise UsageError(str(exc)) from None
    if target.digest is not None:
        raise PybuildError(f"refusing to create a tag with a digest reference: {args.target}")
    store = store_factory()
    try:
        digest = store.images.resolve(args.source)
    except ImageNotFound:
        raise PybuildError(not_found(args.source)) from None
    created = None
    for e in store.images.entries():  # keep the source's creation annotation
        if e.get("digest") == digest:
            created = (e.get("annotations") or {}).get(ANNOTATION_CREATED) or created
    try:
        store.images.tag(target, BlobInfo(digest, store.content.size(digest)), created=created)
    except (ImageStoreError, KeyError) as exc:
        raise PybuildError(f"tag {args.target}: {exc}") from None
    return 0

