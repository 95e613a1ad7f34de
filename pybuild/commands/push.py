"""`pybuild push NAME[:TAG] [DESTINATION]`: upload a local image to a registry."""

from __future__ import annotations

NAME = "push"


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="push an image to a registry",
                       description="Like docker push. Example: pybuild push 127.0.0.1:5000/app:1.0, or "
                                   "pybuild push app:1.0 127.0.0.1:5000/app:1.0 (push under another name)")
    p.add_argument("image", help="local NAME[:TAG] (also the destination unless DESTINATION is given)")
    p.add_argument("destination", nargs="?", help="registry reference to push to, e.g. host:5000/app:1.0")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the pushed manifest digest")


def run(args, store_factory) -> int:
    from pybuild.errors import UsageError
    from pybuild.oci.reference import InvalidReference, normalize_reference
    from pybuild.registry.push import push

    try:
        normalize_reference(args.destination or args.image)
    except InvalidReference as exc:
        raise UsageError(str(exc)) from None
    store = store_factory()
    result = push(store, args.image, args.destination, progress=(lambda line: None) if args.quiet else _stderr)
    s = result.stats
    if args.quiet:
        print(result.digest)
    else:
        _stderr(f"blobs: {s.uploaded} uploaded ({s.bytes_uploaded} bytes), {s.skipped} already there, "
                f"{s.mounted} mounted")
        print(f"{result.reference}: digest: {result.digest} size: {result.size}")
    return 0


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)
